"""CLIP text encoder parity with transformers (random weights, tiny configs, f32) and save/load round trips."""

import numpy as np
import pytest
from flax import nnx

import canvas_jax  # noqa: F401
from core_jax.state_dict import StateDictMismatch, to_state_dict
from canvas_jax.convert.text_encoders import load_clip_text, save_clip_text
from canvas_jax.models.clip import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB, LENGTH, TOL = 99, 16, 1e-4


def _config(hidden_act, eos_token_id):
    return dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=37, projection_dim=12, num_hidden_layers=3,
                num_attention_heads=4, max_position_embeddings=LENGTH, hidden_act=hidden_act, layer_norm_eps=1e-5,
                bos_token_id=1, eos_token_id=eos_token_id, pad_token_id=0)


def _input_ids(eos_token_id, rng):
    """Rows of varying length: BOS, text, EOS, then padding (EOS repeated, as SD1's tokenizer pads).

    With a modern eos_token_id the largest id is NOT the EOS, so the two pooling rules disagree."""
    ids = rng.integers(eos_token_id + 1 if eos_token_id != 2 else 3, VOCAB - 1, size=(4, LENGTH))
    ids[:, 0] = 1
    eos = eos_token_id if eos_token_id != 2 else VOCAB - 1  # legacy: EOS is the highest id in the row
    for row, end in enumerate([3, 7, LENGTH - 1, 5]):
        ids[row, end:] = eos
    return ids


def _reference(config, with_projection, seed=0):
    torch.manual_seed(seed)
    cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    return cls(transformers.CLIPTextConfig(**config)).eval()


@pytest.mark.parametrize("hidden_act, eos_token_id, with_projection, use_mask", [
    ("quick_gelu", 2, False, False),  # SD1-style legacy config: pool at the highest id
    ("gelu", 5, True, True),          # SDXL text_encoder_2-style: projection, first-EOS pooling, padding mask
])
def test_matches_transformers(tmp_path, hidden_act, eos_token_id, with_projection, use_mask):
    config = _config(hidden_act, eos_token_id)
    ref = _reference(config, with_projection)
    ref.save_pretrained(tmp_path)
    model = load_clip_text(tmp_path, with_projection=with_projection)
    assert isinstance(model, CLIPTextModelWithProjection if with_projection else CLIPTextModel)
    assert model.config == CLIPTextConfig.from_dict(config)

    ids = _input_ids(eos_token_id, np.random.default_rng(0))
    mask = (np.arange(LENGTH)[None] <= np.array([3, 7, LENGTH - 1, 5])[:, None]).astype(np.int32)
    mask_arg = mask if use_mask else None
    out = nnx.jit(lambda m, x, a: m(x, a))(model, ids.astype(np.int32), mask_arg)
    with torch.no_grad():
        expected = ref(input_ids=torch.tensor(ids), attention_mask=None if mask_arg is None else torch.tensor(mask),
                       output_hidden_states=True)

    np.testing.assert_allclose(out.last_hidden_state, expected.last_hidden_state.numpy(), atol=TOL, rtol=0)
    assert len(out.hidden_states) == len(expected.hidden_states) == config["num_hidden_layers"] + 1
    np.testing.assert_allclose(out.hidden_states[-2], expected.hidden_states[-2].numpy(), atol=TOL, rtol=0)
    for ours, theirs in zip(out.hidden_states, expected.hidden_states):
        np.testing.assert_allclose(ours, theirs.numpy(), atol=TOL, rtol=0)
    if with_projection:
        np.testing.assert_allclose(out.text_embeds, expected.text_embeds.numpy(), atol=TOL, rtol=0)
        pooled = expected.last_hidden_state[torch.arange(4), torch.tensor([3, 7, LENGTH - 1, 5])]
    else:
        assert out.text_embeds is None
        pooled = expected.pooler_output
    np.testing.assert_allclose(out.pooler_output, pooled.numpy(), atol=TOL, rtol=0)


@pytest.mark.parametrize("with_projection", [False, True])
def test_save_loads_in_transformers_with_identical_tensors(tmp_path, with_projection):
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    model = cls(_config("quick_gelu", 5), rngs=nnx.Rngs(3))
    save_clip_text(model, tmp_path)
    ref_cls = transformers.CLIPTextModelWithProjection if with_projection else transformers.CLIPTextModel
    ref, info = ref_cls.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ours = to_state_dict(model)
    theirs = {k if k.startswith(("text_model.", "text_projection.")) else f"text_model.{k}": v.numpy()
              for k, v in ref.state_dict().items() if not k.endswith("position_ids")}
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        np.testing.assert_array_equal(theirs[key], value, err_msg=key)
    again = load_clip_text(tmp_path, with_projection=with_projection)
    assert again.config == model.config
    for key, value in to_state_dict(again).items():
        np.testing.assert_array_equal(value, ours[key], err_msg=key)


def test_parameters_carry_logical_axes():
    model = CLIPTextModelWithProjection(_config("quick_gelu", 5), rngs=nnx.Rngs(0))
    attn = model.text_model.encoder.layers[0].self_attn
    assert attn.q_proj.kernel.get_metadata()["out_sharding"] == ("embed", "heads")
    assert attn.out_proj.kernel.get_metadata()["out_sharding"] == ("heads", "embed")
    assert model.text_model.embeddings.token_embedding.embedding.get_metadata()["out_sharding"] == ("vocab", "embed")
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        assert len(var.get_metadata()["out_sharding"]) == var[...].ndim, path


def test_bad_inputs_are_explained(tmp_path):
    with pytest.raises(ValueError, match="num_attention_heads"):
        CLIPTextConfig.from_dict({**_config("gelu", 5), "num_attention_heads": 5})
    with pytest.raises(ValueError, match="hidden_act"):
        CLIPTextConfig.from_dict({**_config("gelu", 5), "hidden_act": "gleu"})
    with pytest.raises(TypeError, match="hidden_size"):
        CLIPTextConfig.from_dict({**_config("gelu", 5), "hidden_size": "32"})
    model = CLIPTextModel(_config("gelu", 5), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(np.zeros((1, LENGTH + 1), np.int32))
    with pytest.raises(ValueError, match="integer array"):
        model(np.zeros((2, 3), np.float32))
    save_clip_text(model, tmp_path)
    with pytest.raises(StateDictMismatch, match="text_projection.weight"):
        load_clip_text(tmp_path, with_projection=True)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_clip_text(tmp_path / "missing")
