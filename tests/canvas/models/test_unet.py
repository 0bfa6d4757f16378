"""Our UNet2DConditionModel against diffusers' with the same random weights (tiny configs, float32)."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

import canvas_jax  # noqa: F401
from canvas_jax.convert.diffusers_models import load_unet, save_unet
from core_jax.state_dict import StateDictMismatch
from canvas_jax.models.unet import UNet2DConditionModel

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SD1 = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=24,
           attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
SD2 = dict(block_out_channels=(32, 64), layers_per_block=2, norm_num_groups=8, cross_attention_dim=32,
           attention_head_dim=[2, 4], use_linear_projection=True, upcast_attention=True,
           down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
           up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"))
SDXL = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
            attention_head_dim=[2, 4], use_linear_projection=True, transformer_layers_per_block=[1, 2],
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=16 + 6 * 8,  # pooled text (16) + 6 time ids x 8
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
INPAINT = dict(SD1, in_channels=9, flip_sin_to_cos=False, freq_shift=1)


def _reference(cfg, seed=0):
    """A diffusers UNet with every parameter perturbed away from its (partly zero) initialisation."""
    torch.manual_seed(seed)
    ref = diffusers.UNet2DConditionModel(**cfg).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ref


def _inputs(cfg, size=(8, 8), seed=1):
    g = np.random.default_rng(seed)
    b, d = 2, cfg["cross_attention_dim"]
    x = g.standard_normal((b, cfg.get("in_channels", 4), *size)).astype(np.float32)
    ctx = g.standard_normal((b, 7, d)).astype(np.float32)
    t = np.array([3.0, 741.0], np.float32)
    added = None
    if cfg.get("addition_embed_type") == "text_time":
        added = {"text_embeds": g.standard_normal((b, 16)).astype(np.float32),
                 "time_ids": np.tile(np.array([64, 48, 0, 8, 64, 64], np.float32), (b, 1)) + np.arange(b)[:, None]}
    return x, t, ctx, added


_run = nnx.jit(lambda model, *args: model(*args))


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """name -> (diffusers reference, its save_pretrained folder, our model loaded from it); built once per name."""
    cache = {}

    def get(name, cfg):
        if name not in cache:
            ref = _reference(cfg)
            folder = tmp_path_factory.mktemp(name)
            ref.save_pretrained(folder)
            cache[name] = (ref, folder, load_unet(folder))
        return cache[name]

    return get


def _compare(ref, ours, cfg, size):
    x, t, ctx, added = _inputs(cfg, size)
    with torch.no_grad():
        kw = {} if added is None else {"added_cond_kwargs": {k: torch.from_numpy(v) for k, v in added.items()}}
        want = ref(torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ctx), **kw).sample.numpy()
    got = _run(ours, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t), jnp.asarray(ctx), added)
    return np.asarray(got).transpose(0, 3, 1, 2), want


@pytest.mark.parametrize("name,cfg,size", [
    ("sd1_odd_size", SD1, (9, 9)),
    ("sd2_linear_proj", SD2, (8, 8)),
    ("sdxl_text_time", SDXL, (8, 8)),
    ("inpaint_9ch", INPAINT, (8, 8)),
])
def test_matches_diffusers(name, cfg, size, pairs):
    ref, _, ours = pairs(name, cfg)
    got, want = _compare(ref, ours, cfg, size)
    assert got.shape == want.shape
    assert np.abs(want).max() > 0.1  # the comparison is not trivially between near-zero outputs
    print(f"{name}: max abs diff {np.abs(got - want).max():.2e} (max |out| {np.abs(want).max():.2f})")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_round_trip_to_diffusers(pairs, tmp_path):
    ref, _, ours = pairs("sdxl_text_time", SDXL)
    save_unet(ours, tmp_path)
    back = diffusers.UNet2DConditionModel.from_pretrained(tmp_path).state_dict()
    orig = ref.state_dict()
    assert sorted(back) == sorted(orig)
    for k, v in orig.items():
        np.testing.assert_array_equal(back[k].numpy(), v.numpy(), err_msg=k)
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == "UNet2DConditionModel"


def test_weight_mismatch_lists_keys(pairs, tmp_path):
    _, folder, _ = pairs("sd1_odd_size", SD1)
    sd = load_file(folder / "diffusion_pytorch_model.safetensors")
    del sd["conv_in.bias"]
    sd["mid_block.extra.weight"] = np.zeros(3, np.float32)
    sd["conv_out.weight"] = np.zeros((4, 32, 1, 1), np.float32)
    save_file(sd, tmp_path / "diffusion_pytorch_model.safetensors")
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(StateDictMismatch) as err:
        load_unet(tmp_path)
    assert err.value.missing == ["conv_in.bias"]
    assert err.value.unexpected == ["mid_block.extra.weight"]
    assert [s[0] for s in err.value.shapes] == ["conv_out.weight"]
    assert "conv_in.bias" in str(err.value)


@pytest.mark.parametrize("change,match", [
    ({"class_embed_type": "timestep"}, "class_embed_type"),
    ({"time_cond_proj_dim": 16}, "time_cond_proj_dim"),
    ({"down_block_types": ("AttnDownBlock2D", "DownBlock2D")}, "down_block_types"),
    ({"attention_head_dim": [4, 4, 4]}, "attention_head_dim"),
    ({"block_out_channel": (32, 64)}, "did you mean 'block_out_channels'"),
])
def test_unsupported_config_names_the_key(change, match):
    with pytest.raises(ValueError, match=match):
        UNet2DConditionModel({**SD1, **change}, rngs=nnx.Rngs(0))


def test_bad_inputs_are_explained(pairs):
    _, _, model = pairs("sdxl_text_time", SDXL)
    x, t, ctx, added = _inputs(SDXL)
    with pytest.raises(ValueError, match="NHWC with 4 channels"):
        model(jnp.asarray(x), t, ctx, added)  # NCHW by mistake
    with pytest.raises(ValueError, match="time_ids"):
        model(jnp.asarray(x.transpose(0, 2, 3, 1)), t, ctx)
    with pytest.raises(ValueError, match="timesteps"):
        model(jnp.asarray(x.transpose(0, 2, 3, 1)), np.zeros(3), ctx, added)


def test_params_carry_logical_axes_and_bf16_runs(pairs):
    ref, folder, full = pairs("sd1_odd_size", SD1)
    low = load_unet(folder, dtype=jnp.bfloat16)
    for path, var in nnx.to_flat_state(nnx.state(low, nnx.Param)):
        axes = var.get_metadata().get("out_sharding")
        assert axes is not None and len(axes) == var[...].ndim, path
        assert var[...].dtype == jnp.float32, path
    x, t, ctx, _ = _inputs(SD1, (9, 9))  # the size of the parity test: its compiled f32 program is reused
    args = (jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(t), jnp.asarray(ctx), None)
    out, want = _run(low, *args), _run(full, *args)
    assert out.dtype == jnp.bfloat16
    err = float(jnp.max(jnp.abs(out.astype(jnp.float32) - want)))
    assert err < 0.05 * float(jnp.max(jnp.abs(want))), err
