"""Our AutoencoderKL against diffusers' with the same random weights (tiny config, float32), plus loading variants."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

import canvas_jax  # noqa: F401
from canvas_jax.convert.diffusers_models import load_unet, load_vae, save_vae
from core_jax.state_dict import StateDictMismatch
from canvas_jax.models.vae import AutoencoderKL, DiagonalGaussian

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

VAE = dict(block_out_channels=(16, 32), layers_per_block=1, latent_channels=4, norm_num_groups=8,
           down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, sample_size=16,
           scaling_factor=0.13025, shift_factor=0.0625)
WEIGHTS = "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A diffusers VAE with every parameter perturbed away from its init, its folder, and our model loaded from it."""
    torch.manual_seed(0)
    ref = diffusers.AutoencoderKL(**VAE).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("vae")
    ref.save_pretrained(folder)
    return ref, folder, load_vae(folder)


def _images(seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)


def _nhwc(x):
    return jnp.asarray(x.transpose(0, 2, 3, 1))


def _nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


_encode = nnx.jit(lambda m, x: m.encode(x))
_decode = nnx.jit(lambda m, z: m.decode(z))


def _assert_close(name, got, want):
    assert got.shape == want.shape
    assert np.abs(want).max() > 0.1
    print(f"{name}: max abs diff {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_encode_matches_diffusers(pair):
    ref, _, ours = pair
    x = _images()
    with torch.no_grad():
        dist = ref.encode(torch.from_numpy(x)).latent_dist
    posterior = _encode(ours, _nhwc(x))
    assert isinstance(posterior, DiagonalGaussian)
    _assert_close("mean", _nchw(posterior.mean), dist.mean.numpy())
    _assert_close("logvar", _nchw(posterior.logvar), dist.logvar.numpy())
    np.testing.assert_allclose(np.asarray(posterior.kl()), dist.kl().numpy(), rtol=1e-4)
    rng = jax.random.key(3)
    eps = jax.random.normal(rng, posterior.mean.shape)
    np.testing.assert_allclose(posterior.sample(rng), posterior.mean + posterior.std * eps, rtol=1e-6)
    assert np.array_equal(posterior.mode(), posterior.mean)


def test_decode_matches_diffusers(pair):
    ref, _, ours = pair
    z = np.random.default_rng(1).standard_normal((2, 4, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = ref.decode(torch.from_numpy(z)).sample.numpy()
    _assert_close("decode", _nchw(_decode(ours, _nhwc(z))), want)
    assert ours.scaling_factor == pytest.approx(0.13025) and ours.shift_factor == pytest.approx(0.0625)
    assert ours.downsample_factor == 2


def test_round_trip_to_diffusers(pair, tmp_path):
    ref, _, ours = pair
    save_vae(ours, tmp_path)
    back = diffusers.AutoencoderKL.from_pretrained(tmp_path)
    orig = ref.state_dict()
    assert sorted(back.state_dict()) == sorted(orig)
    for k, v in back.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), orig[k].numpy(), err_msg=k)
    assert back.config.scaling_factor == pytest.approx(0.13025)
    assert json.loads((tmp_path / "config.json").read_text())["_class_name"] == "AutoencoderKL"


def _copy_config(src, dst):
    (dst / "config.json").write_text((src / "config.json").read_text())


def test_legacy_sharded_and_fp16_files_load(pair, tmp_path):
    ref, folder, ours = pair
    sd = load_file(folder / WEIGHTS)
    want = nnx.state(ours, nnx.Param)
    # 1. Old attention names (query/key/value/proj_attn as 1x1 convs), in a pipeline folder layout.
    legacy = {}
    for k, v in sd.items():
        for new, old in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if f".attentions.0.{new}." in k:
                k, v = k.replace(new, old), (v[:, :, None, None] if v.ndim == 2 else v)
        legacy[k] = v
    assert any(".query." in k for k in legacy)
    (tmp_path / "legacy" / "vae").mkdir(parents=True)
    _copy_config(folder, tmp_path / "legacy" / "vae")
    save_file(legacy, tmp_path / "legacy" / "vae" / WEIGHTS)
    got = nnx.state(load_vae(tmp_path / "legacy"), nnx.Param)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), got, want))
    # 2. Sharded checkpoint with an index, as save_pretrained(max_shard_size=...) writes it.
    ref.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / f"{WEIGHTS}.index.json").is_file()
    got = nnx.state(load_vae(tmp_path / "sharded"), nnx.Param)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), got, want))
    # 3. Only the fp16 variant present.
    (tmp_path / "fp16").mkdir()
    _copy_config(folder, tmp_path / "fp16")
    half = {k: v.astype(np.float16) for k, v in sd.items()}
    save_file(half, tmp_path / "fp16" / "diffusion_pytorch_model.fp16.safetensors")
    got = nnx.state(load_vae(tmp_path / "fp16"), nnx.Param)
    close = jax.tree.map(lambda a, b: bool(jnp.allclose(a, b, atol=2e-3)), got, want)
    assert jax.tree.all(close)


def test_weight_mismatch_and_bad_config(pair, tmp_path):
    _, folder, ours = pair
    sd = load_file(folder / WEIGHTS)
    del sd["decoder.conv_out.bias"]
    sd["encoder.conv_in.weight"] = sd["encoder.conv_in.weight"][:8]
    save_file(sd, tmp_path / WEIGHTS)
    _copy_config(folder, tmp_path)
    with pytest.raises(StateDictMismatch, match="decoder.conv_out.bias") as err:
        load_vae(tmp_path)
    assert err.value.missing == ["decoder.conv_out.bias"]
    assert err.value.shapes == [("encoder.conv_in.weight", (16, 3, 3, 3), (8, 3, 3, 3))]
    with pytest.raises(ValueError, match="'AttnDownEncoderBlock2D'"):
        AutoencoderKL({**VAE, "down_block_types": ("DownEncoderBlock2D", "AttnDownEncoderBlock2D")}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="did you mean 'latent_channels'"):
        AutoencoderKL({**VAE, "latent_channel": 4}, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="describes a 'AutoencoderKL'"):
        load_unet(folder)
    with pytest.raises(ValueError, match="latents with 4 channels"):
        ours.decode(jnp.zeros((1, 8, 8, 3)))
