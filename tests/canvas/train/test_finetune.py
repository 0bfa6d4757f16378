"""task=finetune: LoRA adapters alone (base frozen, PEFT-named safetensors that load at any scale) or every
UNet weight, from a run folder (lora_shapes.yaml) or a diffusers folder (sd15_finetune.yaml)."""

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from safetensors import safe_open

import fakes
from conftest import tiny_config

from canvas_jax.convert.lora import METADATA_KEY, load_lora
from canvas_jax.config import CanvasTrainConfig
from canvas_jax.models.frozen import copy_module
from canvas_jax.models.lora import LoRAParam, LoRAScale, lora_layers
from canvas_jax.train.finetune_task import lora_file
from canvas_jax.train.hooks import make_hooks
from canvas_jax.train.run import train
from canvas_jax.train.tasks import make_task
from core_jax import config as config_lib
from core_jax.loop import Trainer
from core_jax.metrics import read_jsonl

CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "canvas"
QUIET = ["train.progress=false", "train.tensorboard=false", "train.checkpoint.async_save=false", "train.log_every=1"]


def _flat(module, lora=True):
    """Flat path -> array of a module's variables (without the LoRA factors and scales when ``lora`` is False)."""
    return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(module))
            if lora or not isinstance(v, (LoRAParam, LoRAScale))}


def _unet_out(unet, ctx_dim):
    k = jax.random.split(jax.random.key(0), 2)
    x = jax.random.normal(k[0], (2, 8, 8, 4))
    ctx = jax.random.normal(k[1], (2, 5, ctx_dim))
    return np.asarray(unet(x, jnp.array([10, 700]), ctx))


def _train_only(data_fn):
    """``data_fn`` without a test split (no evaluation: one compile less)."""
    return lambda cfg, tokenizer, ctx, split, with_masks: (
        data_fn(cfg, tokenizer, ctx, split, with_masks) if split == "train" else None)


def test_lora_shapes_config_trains_only_the_adapters(tmp_path, t2i_run):
    run = tmp_path / "lora"
    cfg = config_lib.load(CanvasTrainConfig, CONFIGS / "lora_shapes.yaml", [
        f"init_from={t2i_run}", f"train.run_dir={run}", "data.image_size=16", "lora.rank=2", "lora.alpha=4",
        r"lora.targets=[attention, 'down_blocks\.0\.resnets\.0\.conv1']", "train.steps=3", "train.batch_size=4",
        "train.checkpoint.every=2", *QUIET])
    task = make_task(cfg, data_fn=_train_only(fakes.data_fn()))
    assert task.trainable is LoRAParam
    trainer = Trainer(task, cfg, hooks=make_hooks(task, cfg))
    state, last = trainer.fit()
    losses = [r["loss"] for r in read_jsonl(run / "metrics.jsonl", "train")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses) and last["nan_skips"] == 0
    # the optimizer (and EMA) hold the adapters alone
    names = {k[-1] for k, _ in nnx.to_flat_state(state["params"])}
    assert names == {"lora_A", "lora_B"}
    n_lora = sum(x.size for x in jax.tree.leaves(state["params"]))
    assert sum(x.size for x in jax.tree.leaves(state["ema"])) == n_lora
    assert max(x.size for x in jax.tree.leaves(state["opt"])) <= max(x.size for x in jax.tree.leaves(state["params"]))
    # the base UNet is bit-identical, only the adapters moved
    model = trainer.model(state, ema=True)
    layers = lora_layers(model.unet)
    assert "down_blocks.0.resnets.0.conv1" in layers and any(p.endswith(".attn2.to_k") for p in layers)
    tuned, base = _flat(model.unet, lora=False), _flat(task.base_unet)
    assert tuned.keys() == base.keys()
    for k in base:
        np.testing.assert_array_equal(tuned[k], base[k])
    assert min(float(jnp.abs(layer.lora_B[...]).max()) for layer in layers.values()) > 0
    # the EMA adapters alone, with PEFT / diffusers key names
    f = lora_file(run)
    with safe_open(f, framework="numpy") as sf:
        keys, meta = set(sf.keys()), json.loads(sf.metadata()[METADATA_KEY])
    assert keys == {f"unet.{p}.{w}.weight" for p in layers for w in ("lora_A", "lora_B")}
    assert meta["unet.r"] == 2 and meta["unet.lora_alpha"] == 4.0
    # loaded onto the base UNet: the EMA factors; at scale 0 the base model's output
    fresh = copy_module(task.base_unet)
    load_lora(fresh, f, scale=0.0)
    for path, layer in lora_layers(fresh).items():
        for w in ("lora_A", "lora_B"):
            np.testing.assert_array_equal(np.asarray(getattr(layer, w)[...]), np.asarray(getattr(layers[path], w)[...]))
    np.testing.assert_allclose(_unet_out(fresh, 384), _unet_out(task.base_unet, 384), atol=1e-6)


def test_lora_shapes_data_has_black_backgrounds(tmp_path):
    from canvas_jax.train.data import dataset_folder
    from core_jax.data import open_split

    cfg = config_lib.load(CanvasTrainConfig, CONFIGS / "lora_shapes.yaml", [
        f"data.dir={tmp_path}", "data.image_size=16", "data.num_examples=4"])
    assert cfg.data.options == {"backgrounds": ["black"]}
    src = open_split(dataset_folder(cfg), "train")
    corners = np.stack([src[i]["image"][[0, 0, -1, -1], [0, -1, 0, -1]] for i in range(len(src))])
    assert np.median(corners) < 40, corners  # black (15), not the base model's white (245)


def test_full_finetune_changes_the_base_and_exports(tmp_path, t2i_run):
    from canvas_jax.convert.diffusers_models import load_unet
    from canvas_jax.train.export import export_pipeline

    run = tmp_path / "full"
    cfg = tiny_config(run, task="finetune", init_from=t2i_run, **{
        "lora.rank": 0, "train.steps": 2, "sampling.prompts": [], "optim.name": "sgd"})
    task = make_task(cfg, data_fn=_train_only(fakes.data_fn()))
    trainer = Trainer(task, cfg, hooks=make_hooks(task, cfg))
    state, _ = trainer.fit()
    model = trainer.model(state, ema=True)
    tuned, base = _flat(model.unet), _flat(task.base_unet)
    assert tuned.keys() == base.keys()
    assert sum(x.size for x in jax.tree.leaves(state["params"])) == sum(v.size for v in base.values())
    assert any(not np.array_equal(tuned[k], base[k]) for k in base)
    assert not lora_file(run).exists()
    exported = _flat(load_unet(export_pipeline(run, tmp_path / "pipe")))
    for k in tuned:
        np.testing.assert_array_equal(exported[k], tuned[k])


def _captioned_images(folder: Path, n: int = 6) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    captions = ["a photo of the cat", "a red dog", "an astronaut riding a horse on mars"]
    rows = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (24, 24, 3), np.uint8)).save(folder / f"{i}.png")
        rows.append(json.dumps({"file": f"{i}.png", "caption": captions[i % len(captions)]}))
    (folder / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def test_sd15_config_on_a_tiny_diffusers_folder(tmp_path, tiny_sd, tiny_latents):
    from canvas_jax import Pipeline
    from canvas_jax.data.ingest import build_captioned_folder

    data, _ = build_captioned_folder(_captioned_images(tmp_path / "images"), tmp_path / "data", size=16,
                                     verbose=False)
    run = tmp_path / "sd15"
    cfg = config_lib.load(CanvasTrainConfig, CONFIGS / "sd15_finetune.yaml", [
        f"init_from={tiny_sd}", f"data.dataset={data}", "data.image_size=16", "data.worker_count=0",
        "text_encoder.max_length=16", f"train.run_dir={run}", "train.steps=2", "train.batch_size=2", "lora.rank=2",
        "sampling.prompts=[]", "optim.warmup_steps=0", "optim.learning_rate=1.0e-2", *QUIET])
    # the config's adapters (attention and convolutions) compute in its bf16
    layers = lora_layers(make_task(cfg).build_unet(nnx.Rngs(0)))
    assert any(p.endswith(".attn1.to_q") for p in layers) and any(p.endswith(".resnets.0.conv2") for p in layers)
    assert {layer.dtype for layer in layers.values()} == {jnp.bfloat16}
    # trained with fewer adapters in float32: the same step, a third of the CPU compile time
    cfg.lora.targets, cfg.train.compute_dtype = ["attention"], "float32"
    _, last = train(cfg)
    assert math.isfinite(last["loss"])
    pipe = Pipeline.from_pretrained(tiny_sd)
    kw = dict(num_steps=2, guidance_scale=3.0, sampler="ddim", latents=tiny_latents[:1], output_type="np")
    base = pipe("a photo of the cat", **kw).images
    names = pipe.load_lora_weights(lora_file(run), scale=0.0)
    assert any(n.endswith(".attn2.to_k") for n in names) and any(n.endswith(".proj_in") for n in names)
    np.testing.assert_allclose(pipe("a photo of the cat", **kw).images, base, atol=1e-5)
    pipe.set_lora_scale(1.0)
    assert np.abs(pipe("a photo of the cat", **kw).images - base).max() > 1e-4


def test_config_errors(tmp_path, capsys):
    from canvas_jax.train.run import main

    with pytest.raises(config_lib.ConfigError, match=r"'lora\.rank': -1; expected 0 \(full fine-tuning\)"):
        config_lib.load(CanvasTrainConfig, None, ["lora.rank=-1"])
    with pytest.raises(SystemExit) as exit_info:
        main(["task=finetune", f"train.run_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    # the preflight (before anything is built) names the missing base model
    assert err.startswith("config error: task=finetune cannot run: init_from is empty; expected a text_to_image run")
