"""LoRA on the UNet: identity at scale 0, merge / unmerge, safetensors round trip with PEFT key names,
the math against a hand-merged diffusers UNet, and LoRA-only training on the shared loop."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

import canvas_jax  # noqa: F401
from canvas_jax.convert.lora import load_lora, read_lora, save_lora
from core_jax.state_dict import empty_module, to_state_dict
from canvas_jax.models import lora as L
from canvas_jax.models.unet import DownBlock2D, UNet2DConditionModel
from core_jax import data as data_lib
from core_jax.loop import TrainConfig, Trainer
from core_jax.mesh import MeshConfig
from core_jax.optim import OptimConfig

TINY = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=24,
            attention_head_dim=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
_run = nnx.jit(lambda model, *args: model(*args))


def _inputs(seed=1, size=8, ctx_dim=24):
    g = np.random.default_rng(seed)
    x = jnp.asarray(g.standard_normal((2, size, size, 4)), jnp.float32)
    ctx = jnp.asarray(g.standard_normal((2, 5, ctx_dim)), jnp.float32)
    return x, jnp.array([3.0, 741.0]), ctx


def _randomize(model, seed=7, std=0.1):
    """Give every adapter non-zero factors (a fresh lora_B is zero, which would make every test trivial)."""
    g = np.random.default_rng(seed)
    for layer in L.lora_layers(model).values():
        layer.lora_A[...] = jnp.asarray(std * g.standard_normal(layer.lora_A.shape), jnp.float32)
        layer.lora_B[...] = jnp.asarray(std * g.standard_normal(layer.lora_B.shape), jnp.float32)


def _unet(seed=0, config=TINY):
    """A UNet with random weights drawn on the host (eager per-shape initialisers are slow on a busy CPU)."""
    model = empty_module(lambda: UNet2DConditionModel(config, rngs=nnx.Rngs(0)))
    g = np.random.default_rng(seed)
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        shape = tuple(var.shape)
        if path[-1] == "kernel":
            value = g.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
        else:
            value = (path[-1] == "scale") + 0.05 * g.standard_normal(shape)
        var.set_value(jnp.asarray(value, jnp.float32))
    return model


@pytest.fixture(scope="module")
def base_and_lora():
    """(base output, model with random LoRA on attention + conv layers, inputs)."""
    model = _unet()
    args = _inputs()
    y0 = _run(model, *args)
    paths = L.apply_lora(model, L.LoRAConfig(rank=4, alpha=8.0), rngs=nnx.Rngs(1))
    assert any(p.endswith("attn2.to_k") for p in paths) and any(p.endswith("resnets.0.conv1") for p in paths)
    assert any(p.endswith("downsamplers.0.conv") for p in paths) and any(p.endswith("proj_in") for p in paths)
    assert np.abs(np.asarray(_run(model, *args) - y0)).max() < 1e-5  # lora_B starts at zero
    _randomize(model)
    return y0, model, args


def test_scale_zero_is_the_base_model_and_lora_changes_it(base_and_lora):
    y0, model, args = base_and_lora
    y1 = _run(model, *args)
    assert float(jnp.abs(y1 - y0).max()) > 1e-2
    L.set_lora_scale(model, 0.0)
    try:
        np.testing.assert_allclose(np.asarray(_run(model, *args)), np.asarray(y0), atol=1e-5, rtol=0)
    finally:
        L.set_lora_scale(model, 1.0)


def test_merge_equals_unmerged_and_unmerge_restores(base_and_lora):
    _, model, args = base_and_lora
    layers = L.lora_layers(model)
    kernels = {p: np.asarray(layer.kernel[...]) for p, layer in layers.items()}
    y1 = _run(model, *args)
    L.merge_lora(model)
    assert all(layer.merged for layer in layers.values())
    assert not np.allclose(np.asarray(layers[next(iter(layers))].kernel[...]), kernels[next(iter(layers))])
    np.testing.assert_allclose(np.asarray(_run(model, *args)), np.asarray(y1), atol=1e-5, rtol=0)
    L.set_lora_scale(model, 0.5)  # re-merges at the new scale
    half = _run(model, *args)
    L.unmerge_lora(model)
    np.testing.assert_allclose(np.asarray(_run(model, *args)), np.asarray(half), atol=1e-5, rtol=0)
    L.set_lora_scale(model, 1.0)
    for p, layer in layers.items():
        np.testing.assert_allclose(np.asarray(layer.kernel[...]), kernels[p], atol=1e-6, rtol=0, err_msg=p)


def test_remove_lora_gives_a_plain_unet_with_the_adapters_folded_in(base_and_lora):
    _, model, args = base_and_lora
    plain = nnx.clone(model)
    L.remove_lora(plain)
    assert not L.lora_layers(plain) and not nnx.state(plain, L.Frozen)
    assert sorted(to_state_dict(plain)) == sorted(to_state_dict(_unet()))  # saveable with save_unet
    np.testing.assert_allclose(np.asarray(_run(plain, *args)), np.asarray(_run(model, *args)), atol=1e-5, rtol=0)


def test_save_load_round_trip_with_peft_names(base_and_lora, tmp_path):
    _, model, args = base_and_lora
    file = save_lora(model, tmp_path)
    assert file.name == "pytorch_lora_weights.safetensors"
    with safe_open(file, framework="numpy") as f:
        keys = set(f.keys())
        meta = json.loads(f.metadata()["lora_adapter_metadata"])
    q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    assert {f"{q}.lora_A.weight", f"{q}.lora_B.weight"} <= keys
    assert len(keys) == 2 * len(L.lora_layers(model))
    assert meta["unet.r"] == 4 and meta["unet.lora_alpha"] == 8.0
    with safe_open(file, framework="numpy") as f:
        assert f.get_tensor(f"{q}.lora_A.weight").shape == (4, 32)  # torch layout (rank, in)
        assert f.get_tensor("unet.down_blocks.0.resnets.0.conv1.lora_A.weight").shape == (4, 32, 3, 3)
        assert f.get_tensor("unet.down_blocks.0.resnets.0.conv1.lora_B.weight").shape == (32, 4, 1, 1)

    fresh = _unet()  # same base weights, no adapters yet
    loaded = load_lora(fresh, file, scale=0.5)
    assert len(loaded) == len(L.lora_layers(model))
    L.set_lora_scale(model, 0.5)
    try:
        np.testing.assert_allclose(np.asarray(_run(fresh, *args)), np.asarray(_run(model, *args)), atol=1e-5, rtol=0)
    finally:
        L.set_lora_scale(model, 1.0)
    # only the adapters remain trainable after loading
    params = nnx.state(fresh, nnx.Param)
    assert all(isinstance(v, L.LoRAParam) for _, v in nnx.to_flat_state(params))


def test_load_rejects_weights_that_do_not_fit(base_and_lora, tmp_path):
    _, model, _ = base_and_lora
    file = save_lora(model, tmp_path / "x.safetensors")
    other = _unet(config={**TINY, "block_out_channels": (16, 32)})
    with pytest.raises(ValueError, match="expected lora_A"):
        load_lora(other, file)
    assert not L.lora_layers(other)  # left unchanged
    with pytest.raises(ValueError, match="match no nnx.Linear"):
        L.apply_lora(_unet(), targets=("nothing_like_this",))


def test_matches_a_hand_merged_diffusers_unet(tmp_path):
    """Our LoRA file loaded into diffusers' UNet by the PEFT rule W += alpha/r * scale * B @ A (computed here by
    hand in torch, since peft is not installed) gives the output of our model with the adapters."""
    torch = pytest.importorskip("torch")
    diffusers = pytest.importorskip("diffusers")
    from canvas_jax.convert.diffusers_models import load_unet

    torch.manual_seed(0)
    ref = diffusers.UNet2DConditionModel(**TINY).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ref.save_pretrained(tmp_path / "unet")
    ours = load_unet(tmp_path / "unet")
    L.apply_lora(ours, rank=2, alpha=6.0, targets=("attention", "conv", "ff"), rngs=nnx.Rngs(3))
    _randomize(ours, seed=11)
    scale = 0.7
    L.set_lora_scale(ours, scale)
    file = save_lora(ours, tmp_path / "lora")
    modules, config = read_lora(file)
    assert config["r"] == 2 and config["lora_alpha"] == 6.0
    factor = scale * config["lora_alpha"] / config["r"]
    with torch.no_grad():
        for name, entry in modules.items():
            target = ref.get_submodule(name)
            a, b = torch.from_numpy(entry["lora_A"]), torch.from_numpy(entry["lora_B"])
            if isinstance(target, torch.nn.Conv2d):
                assert b.shape[2:] == (1, 1) and a.shape[2:] == target.weight.shape[2:]
                delta = (b[:, :, 0, 0] @ a.reshape(a.shape[0], -1)).reshape(target.weight.shape)
            else:
                assert isinstance(target, torch.nn.Linear), name
                delta = b @ a
            target.weight.add_(factor * delta)
    x, t, ctx = _inputs(seed=5)
    with torch.no_grad():
        want = ref(torch.tensor(np.asarray(x).transpose(0, 3, 1, 2)), torch.tensor(np.asarray(t)),
                   torch.tensor(np.asarray(ctx))).sample.numpy()
    got = np.asarray(_run(ours, x, t, ctx)).transpose(0, 3, 1, 2)
    err = np.abs(got - want).max()
    print(f"LoRA vs hand-merged diffusers: max abs diff {err:.2e} (max |out| {np.abs(want).max():.2f})")
    assert np.abs(want).max() > 0.1
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------
# LoRA-only training on core_jax.loop.Trainer.

class _Block(nnx.Module):
    """One cross-attention down block of the UNet (resnet, spatial transformer, downsampler): small to compile."""

    def __init__(self, rngs):
        self.down = DownBlock2D(4, 8, num_layers=1, temb_channels=16, groups=4, eps=1e-5, act_fn="silu",
                                add_downsample=True, downsample_padding=1, heads=2, context_dim=8, rngs=rngs)

    def __call__(self, x, temb, ctx):
        return self.down(x, temb, ctx)[0]


@dataclasses.dataclass
class _RunConfig:
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)


class _LoRATask:
    """Regression through one UNet block with LoRA adapters (the base frozen by apply_lora)."""

    def create_model(self, rngs):
        model = _Block(rngs)
        paths = L.apply_lora(model, rank=2, alpha=2.0, rngs=rngs)
        assert "down.attentions.0.transformer_blocks.0.attn1.to_q" in paths and "down.resnets.0.conv1" in paths
        return model

    def loss(self, model, batch, rng):
        out = model(batch["x"], batch["temb"], batch["ctx"])
        return jnp.mean(jnp.square(out - batch["y"])), {}

    def eval_step(self, model, batch):
        return {}

    def train_data(self, ctx):
        g = np.random.default_rng(0)
        examples = [{"x": g.standard_normal((8, 8, 4)).astype(np.float32),
                     "temb": g.standard_normal(16).astype(np.float32),
                     "ctx": g.standard_normal((3, 8)).astype(np.float32),
                     "y": g.standard_normal((4, 4, 8)).astype(np.float32)} for i in range(8)]
        return data_lib.make_iterator(examples, batch_size=ctx.batch_size, seed=ctx.seed)

    def eval_data(self, ctx):
        return None


def test_only_lora_params_train_on_the_shared_loop(tmp_path):
    cfg = _RunConfig(train=TrainConfig(steps=2, batch_size=2, log_every=1, run_dir=str(tmp_path), progress=False,
                                       tensorboard=False),
                     optim=OptimConfig(learning_rate=1e-2), mesh=MeshConfig(data=1))
    trainer = Trainer(_LoRATask(), cfg)
    before = trainer.init_state()
    before = jax.tree.map(np.asarray, {"params": before["params"], "rest": before["rest"]})
    state, metrics = trainer.fit()
    params = nnx.to_flat_state(state["params"])
    assert params and all(isinstance(v, L.LoRAParam) for _, v in params)
    params_before = dict(nnx.to_flat_state(before["params"]))
    b_changed = [p for p, v in params if p[-1] == "lora_B"
                 and np.abs(np.asarray(v[...]) - np.asarray(params_before[p][...])).max() > 0]
    assert b_changed  # the adapters moved (lora_B starts at zero, so its gradient is not)
    frozen = [(p, v) for p, v in nnx.to_flat_state(state["rest"]) if isinstance(v, L.Frozen)]
    assert any(p[-1] == "kernel" for p, _ in frozen) and any(p[-1] == "scale" for p, _ in frozen)  # norms too
    rest_before = dict(nnx.to_flat_state(before["rest"]))
    for p, v in frozen:
        np.testing.assert_array_equal(np.asarray(v[...]), np.asarray(rest_before[p][...]), err_msg=str(p))
    assert np.isfinite(metrics["loss"])
