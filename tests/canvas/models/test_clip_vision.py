"""CLIP vision tower parity with transformers' CLIPVisionModelWithProjection (tiny random configs) and round trips."""

import numpy as np
import pytest
from flax import nnx

from canvas_jax.convert.clip_vision import load_clip_vision, save_clip_vision
from core_jax.state_dict import StateDictMismatch, to_state_dict
from canvas_jax.models.clip_vision import CLIPVisionConfig, CLIPVisionModel, CLIPVisionModelWithProjection

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4


def _config(hidden_act):
    return dict(hidden_size=32, intermediate_size=37, projection_dim=12, num_hidden_layers=3, num_attention_heads=4,
                image_size=30, patch_size=6, hidden_act=hidden_act, layer_norm_eps=1e-5)


def _reference(config, seed=0):
    torch.manual_seed(seed)
    ref = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**config)).eval()
    with torch.no_grad():  # move the zero-initialised biases and unit norms off their defaults
        for p in ref.parameters():
            p.add_(0.05 * torch.randn(p.shape))
    return ref


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_matches_transformers(tmp_path, hidden_act):
    config = _config(hidden_act)
    ref = _reference(config)
    ref.save_pretrained(tmp_path)
    model = load_clip_vision(tmp_path)
    assert isinstance(model, CLIPVisionModelWithProjection)
    assert model.config == CLIPVisionConfig.from_dict(config)
    pixels = np.random.default_rng(0).standard_normal((3, 3, 30, 30)).astype(np.float32)  # NCHW as transformers
    out = nnx.jit(lambda m, x: m(x))(model, pixels.transpose(0, 2, 3, 1))
    with torch.no_grad():
        expected = ref(pixel_values=torch.from_numpy(pixels), output_hidden_states=True)
    assert len(out.hidden_states) == len(expected.hidden_states) == 4
    print(f"clip vision {hidden_act}: max abs diff image_embeds "
          f"{np.abs(np.asarray(out.image_embeds) - expected.image_embeds.numpy()).max():.1e}, penultimate states "
          f"{np.abs(np.asarray(out.hidden_states[-2]) - expected.hidden_states[-2].numpy()).max():.1e}")
    np.testing.assert_allclose(out.image_embeds, expected.image_embeds.numpy(), atol=TOL)
    np.testing.assert_allclose(out.last_hidden_state, expected.last_hidden_state.numpy(), atol=TOL)
    np.testing.assert_allclose(out.hidden_states[-2], expected.hidden_states[-2].numpy(), atol=TOL)
    assert np.abs(np.asarray(out.image_embeds[0] - out.image_embeds[1])).max() > 1e-2  # depends on the image


def test_round_trip_and_errors(tmp_path):
    model = CLIPVisionModelWithProjection(_config("quick_gelu"), rngs=nnx.Rngs(1))
    folder = save_clip_vision(model, tmp_path / "enc")
    ref = transformers.CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    pixels = np.random.default_rng(1).standard_normal((2, 30, 30, 3)).astype(np.float32)
    with torch.no_grad():
        expected = ref(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2))).image_embeds.numpy()
    np.testing.assert_allclose(model(pixels).image_embeds, expected, atol=TOL)
    back = load_clip_vision(folder)
    a, b = to_state_dict(model), to_state_dict(back)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert type(load_clip_vision(folder, with_projection=False)) is CLIPVisionModel

    with pytest.raises(ValueError, match=r"expected an NHWC array \[batch, 30, 30, 3\]"):
        model(pixels.transpose(0, 3, 1, 2))
    wrong = CLIPVisionModelWithProjection({**_config("gelu"), "projection_dim": 8}, rngs=nnx.Rngs(0))
    save_clip_vision(wrong, tmp_path / "wrong")
    (tmp_path / "wrong" / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(StateDictMismatch, match="visual_projection.weight expected"):
        load_clip_vision(tmp_path / "wrong")
    with pytest.raises(ValueError, match="image_size=30 is not a multiple of patch_size=7"):
        CLIPVisionConfig(image_size=30, patch_size=7)
