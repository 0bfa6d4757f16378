"""task=ip_adapter: an IP-Adapter trained on the frozen tiny t2i run, conditioned on the tiny clip run's image
embeddings (the shared session fixtures)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import fakes
from conftest import tiny_config
from test_resume import DRIVER, ROOT, _logged, kill_after_checkpoint

from canvas_jax.models.ip_adapter import set_ip_adapter_scale

NOT_ADAPTER = nnx.Not(nnx.PathContains("ip_adapter"))


def ip_config(run_dir, t2i_run, clip_run_dir, **over):
    return tiny_config(run_dir, task="ip_adapter", init_from=t2i_run,
                       **{"ip_adapter.image_encoder": clip_run_dir, "ip_adapter.image_dropout": 0.2,
                          "train.steps": 12, "train.ema_decay": 0.0, "optim.learning_rate": 3e-3,
                          "sampling.prompts": [], **over})


@pytest.fixture(scope="session")
def ip_run(tmp_path_factory, t2i_run, clip_run):
    """A finished tiny ip_adapter run: (run folder, task, initial state, final state, eval before, eval after)."""
    from canvas_jax.train.hooks import make_hooks
    from canvas_jax.train.tasks import make_task
    from core_jax.loop import Trainer

    run_dir = tmp_path_factory.mktemp("ip_run")
    cfg = ip_config(run_dir, t2i_run, clip_run[0])
    task = make_task(cfg, data_fn=fakes.data_fn(condition=True))
    trainer = Trainer(task, cfg, hooks=make_hooks(task, cfg))
    init = trainer.init_state()
    before = trainer.evaluate(init)
    state, _ = trainer.fit()
    return str(run_dir), task, trainer, init, state, before, trainer.evaluate(state)


def _params(module, filt):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in
            jax.tree_util.tree_leaves_with_path(nnx.state(module, nnx.All(nnx.Param, filt)))}


def test_scale_zero_is_the_base_model_exactly(ip_run):
    _, task, trainer, _, state, _, _ = ip_run
    unet = trainer.model(state).unet
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, unet.config["in_channels"]))
    t = jnp.array([10, 500])
    ctx = jax.random.normal(jax.random.key(1), (2, 5, 384))
    tokens = unet.ip_adapter(jax.random.normal(jax.random.key(2), (2, 1, task.image_embed_dim)))
    set_ip_adapter_scale(unet, 0.0)
    np.testing.assert_array_equal(np.asarray(unet(x, t, ctx, ip_tokens=tokens)), np.asarray(task.base_unet(x, t, ctx)))
    set_ip_adapter_scale(unet, 1.0)
    assert np.abs(np.asarray(unet(x, t, ctx, ip_tokens=tokens)) - np.asarray(task.base_unet(x, t, ctx))).max() > 1e-4


def test_only_adapter_params_train(ip_run):
    _, task, trainer, init, state, _, _ = ip_run
    before, after = trainer.model(init).unet, trainer.model(state).unet
    base = _params(task.base_unet, nnx.Everything())
    frozen = _params(after, NOT_ADAPTER)
    assert frozen.keys() == base.keys()
    for k in base:
        np.testing.assert_array_equal(frozen[k], base[k], err_msg=k)
    a0, a1 = _params(before, nnx.PathContains("ip_adapter")), _params(after, nnx.PathContains("ip_adapter"))
    assert a0 and all(a1[k].shape == a0[k].shape for k in a0)
    assert sum(not np.array_equal(a0[k], a1[k]) for k in a0) == len(a0)  # every adapter weight moved
    # the optimizer state holds the adapter alone
    n_opt = sum(x.size for x in jax.tree_util.tree_leaves(state["params"]))
    assert n_opt == sum(v.size for v in a0.values())


def test_training_lowers_the_loss(ip_run):
    *_, before, after = ip_run
    assert after["loss"] < before["loss"], (before, after)


def test_export_loads_into_the_pipeline(ip_run, clip_run, t2i_run):
    from canvas_jax import Pipeline
    from canvas_jax.image_text import load_image_text_model

    run_dir = ip_run[0]
    folder = os.path.join(run_dir, "ip_adapter")
    info = json.load(open(os.path.join(folder, "image_encoder.json")))
    assert info["image_encoder"] == os.path.abspath(clip_run[0])
    ref = fakes.examples(1, 16, 5)[0]["image"]
    emb = load_image_text_model(info["image_encoder"]).embed_images(ref)
    pipe = Pipeline.from_pretrained(t2i_run)
    kw = dict(num_steps=2, guidance_scale=3.0, output_type="np", seed=0)
    base = pipe("a red square at the top left", **kw).images
    pipe.load_ip_adapter(folder, image_encoder_folder=None)
    got = pipe("a red square at the top left", ip_adapter_image_embeds=emb, **kw).images
    assert np.abs(got - base).max() > 0
    pipe.set_ip_adapter_scale(0.0)
    np.testing.assert_allclose(pipe("a red square at the top left", ip_adapter_image_embeds=emb, **kw).images,
                               base, atol=1e-6)


def test_kill9_resume_continues_exactly(tmp_path, tiny_vae_dir, t2i_run, clip_run):
    run_dir, steps = str(tmp_path / "run"), 12
    metrics, ckpts = os.path.join(run_dir, "metrics.jsonl"), os.path.join(run_dir, "checkpoints")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, "IP_ADAPTER": f"{t2i_run}:{clip_run[0]}",
           "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=1"}

    def start(sleep):
        return subprocess.Popen([sys.executable, DRIVER, run_dir, tiny_vae_dir, str(steps)], cwd=ROOT,
                                env={**env, "STEP_SLEEP": str(sleep)}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    resumed_from, first = kill_after_checkpoint(start(0.4), ckpts, lambda: _logged(metrics))
    overlap = [s for s in first if s > resumed_from]
    assert len(overlap) >= 2 and resumed_from < steps

    proc = start(0)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    resumed = dict(_logged(metrics)[len(first):])
    assert sorted(resumed) == list(range(resumed_from + 1, steps + 1))
    for s in overlap:
        assert resumed[s] == first[s], f"step {s}: resumed {resumed[s]!r} != before the kill {first[s]!r}"
    assert os.path.isfile(os.path.join(run_dir, "ip_adapter", "ip-adapter.safetensors"))


def test_ip_adapter_shapes_config_trains_on_jittered_shapes(tmp_path, t2i_run, clip_run):
    """The shipped config, shrunk, on its own data: Shapes scenes + a jittered rendering as the condition (and,
    with composition_prob=1, only composition examples: one shape, the caption its cell)."""
    from pathlib import Path

    from canvas_jax.config import CanvasTrainConfig
    from canvas_jax.train.tasks import make_task
    from core_jax import config as config_lib
    from core_jax.loop import Trainer
    from core_jax.task import DataContext

    cfg = config_lib.load(CanvasTrainConfig, Path(ROOT) / "configs/canvas/ip_adapter_shapes.yaml", [
        f"init_from={t2i_run}", f"ip_adapter.image_encoder={clip_run[0]}", f"train.run_dir={tmp_path / 'ip'}",
        "data.image_size=16", "data.num_examples=8", "train.steps=2", "train.batch_size=4", "train.eval_every=0",
        "train.checkpoint.every=0", "train.log_every=1", "train.progress=false", "train.tensorboard=false"])
    task = make_task(cfg)
    batch = next(task.train_data(DataContext(seed=0, batch_size=4, process_index=0, process_count=1)))
    assert batch["cond_image"].shape == (4, 16, 16, 3) and "image_emb" not in batch  # the tower trains: not cached
    _, last = Trainer(task, cfg).fit()
    assert np.isfinite(last["loss"])

    from canvas_jax.data.checker import detect
    from canvas_jax.train.ip_adapter_task import shapes_condition_data

    cfg = config_lib.load(CanvasTrainConfig, Path(ROOT) / "configs/canvas/ip_adapter_shapes.yaml",
                          ["data.num_examples=8", "ip_adapter.composition_prob=1.0"])
    captions = []

    def tokenizer(texts):
        captions.extend(texts)
        return {"input_ids": np.zeros((1, 4), np.int32), "attention_mask": np.ones((1, 4), np.int32)}

    ctx = DataContext(seed=0, batch_size=4, process_index=0, process_count=1)
    batch = next(shapes_condition_data(cfg, tokenizer, ctx, "train", False))
    images = np.round((np.asarray(batch["image"]) + 1) * 127.5).astype(np.uint8)
    found = [detect(im) for im in images]
    assert [len(f) for f in found] == [1] * 4  # one shape each, at the cell its caption names
    assert sorted(captions[:4]) == sorted(f"at the {f[0].spec.position}" for f in found)


def test_eval_of_the_run_folder(ip_run):
    from canvas_jax.eval.ip_adapter_eval import evaluate_ip_adapter_run
    from canvas_jax.eval.sampling import SamplingOptions

    report = evaluate_ip_adapter_run(ip_run[0], num_references=1, opts=SamplingOptions(num_steps=1))
    assert report["image_variation"]["n_seen"] == 1 and report["composition"]["n"] == 1
    assert 0.0 <= report["composition"]["composition"] <= 1.0 and report["image_size"] == 16


@pytest.fixture(scope="module")
def plus_run(tmp_path_factory, t2i_run, clip_run):
    """A tiny ip_adapter run reading the clip tower's feature map (an IP-Adapter Plus): (run folder, task, trainer,
    final state)."""
    from canvas_jax.train.hooks import make_hooks
    from canvas_jax.train.tasks import make_task
    from core_jax.loop import Trainer

    run_dir = tmp_path_factory.mktemp("ip_plus")
    cfg = ip_config(run_dir, t2i_run, clip_run[0], **{"ip_adapter.image_tokens": "feature_map", "train.steps": 4,
                                                      "ip_adapter.num_tokens": 3, "ip_adapter.resampler_depth": 1})
    task = make_task(cfg, data_fn=fakes.data_fn(condition=True))
    trainer = Trainer(task, cfg, hooks=make_hooks(task, cfg))
    state, _ = trainer.fit()
    return str(run_dir), task, trainer, state


def test_feature_map_adapter_reads_the_towers_tokens(plus_run):
    from canvas_jax.models.ip_adapter import IPAdapterPlusImageProjection

    _, task, trainer, state = plus_run
    unet = trainer.model(state).unet
    proj = unet.ip_adapter.image_proj
    assert isinstance(proj, IPAdapterPlusImageProjection) and proj.num_tokens == 3 and len(proj.layers) == 1
    ref = fakes.examples(2, 16, 5)
    ref = np.stack([e["image"] for e in ref])
    tokens = task.embedder.image_tokens(ref)
    assert tokens.shape[0] == 2 and tokens.shape[2] == task.image_embed_dim == proj.proj_in.in_features
    # the dropped branch is the tokens of a zero input, not zeros
    task._image_dropout = 1.0
    try:
        got = task.unet_kwargs(trainer.model(state), {"image_emb": tokens}, jax.random.key(0))["ip_tokens"]
    finally:
        task._image_dropout = task.cfg.ip_adapter.image_dropout
    neg = np.repeat(task.embedder.negative_image_tokens(), 2, 0)
    np.testing.assert_allclose(np.asarray(got), np.asarray(unet.ip_adapter(jnp.asarray(neg)[:, None])), atol=1e-6)
    assert np.abs(neg - tokens).max() > 1e-3


def test_feature_map_adapter_exports_as_ip_adapter_plus(plus_run, t2i_run):
    from canvas_jax import Pipeline
    from canvas_jax.eval.ip_adapter_eval import evaluate_ip_adapter_run
    from canvas_jax.eval.sampling import SamplingOptions
    from canvas_jax.image_text import load_image_text_model

    folder = os.path.join(plus_run[0], "ip_adapter")
    info = json.load(open(os.path.join(folder, "image_encoder.json")))
    assert info["image_tokens"] == "feature_map"
    clip = load_image_text_model(info["image_encoder"])
    ref = fakes.examples(1, 16, 5)[0]["image"]
    kw = dict(num_steps=2, guidance_scale=3.0, output_type="np", seed=0, ip_adapter_image_embeds=clip.image_tokens(ref),
              negative_ip_adapter_image_embeds=clip.negative_image_tokens())
    pipe = Pipeline.from_pretrained(t2i_run)
    base = pipe("a red square", **{k: v for k, v in kw.items() if "ip_adapter" not in k}).images
    pipe.load_ip_adapter(folder, image_encoder_folder=None)
    assert pipe.unet.ip_adapter.plus
    assert np.abs(pipe("a red square", **kw).images - base).max() > 0
    pipe.set_ip_adapter_scale(0.0)
    np.testing.assert_allclose(pipe("a red square", **kw).images, base, atol=1e-6)
    report = evaluate_ip_adapter_run(plus_run[0], num_references=1, opts=SamplingOptions(num_steps=1))
    assert report["image_variation"]["n_seen"] == 1 and report["composition"]["n"] == 1


def test_composition_examples_take_the_cell_from_the_text_and_the_shape_from_the_image():
    from canvas_jax.data import shapes
    from canvas_jax.data.checker import detect
    from canvas_jax.train.ip_adapter_task import composition_example

    rng = np.random.default_rng(0)
    source = shapes.ShapesSource(shapes.ShapesConfig(resolution=32), num_examples=20)
    for i in range(20):
        scene = source.scene(i)
        target, caption, cond, full = composition_example(scene, rng, 32)
        (t,), (c,) = detect(target), detect(cond)
        assert caption == f"at the {t.spec.position}" and t.spec in scene.shapes
        assert shapes.parse_caption(full) == (t.spec,)
        assert (c.spec.color, c.spec.shape, c.spec.size) == (t.spec.color, t.spec.shape, t.spec.size)
        assert c.spec.position != t.spec.position


def test_distillation_targets_the_base_model_given_the_full_caption(tmp_path, t2i_run, clip_run):
    """ip_adapter.distill=1: the target is the frozen base UNet's prediction given the full caption where the image
    is kept, the example's own (here dropped) caption where not; every adapter weight trains on it.
    kv_from_text: every to_k_ip / to_v_ip starts as its layer's to_k / to_v."""
    from canvas_jax import text_conditioning
    from canvas_jax.models.ip_adapter import cross_attention_layers
    from canvas_jax.train.tasks import make_task
    from core_jax.loop import Trainer
    from core_jax.task import DataContext

    cfg = ip_config(tmp_path, t2i_run, clip_run[0], **{"ip_adapter.distill": 1.0, "ip_adapter.kv_from_text": True,
                                                       "ip_adapter.image_dropout": 0.5, "data.caption_dropout": 1.0})
    task = make_task(cfg, data_fn=fakes.data_fn(condition=True))
    trainer = Trainer(task, cfg)
    init = trainer.init_state()
    model = trainer.model(init)
    for name, attn in cross_attention_layers(model.unet):
        np.testing.assert_array_equal(attn.ip_adapter.to_k_ip.kernel[...], attn.to_k.kernel[...], err_msg=name)
        np.testing.assert_array_equal(attn.ip_adapter.to_v_ip.kernel[...], attn.to_v.kernel[...], err_msg=name)

    batch = next(task.train_data(DataContext(seed=0, batch_size=4, process_index=0, process_count=1)))
    captions = sorted({ex["caption"] for ex in fakes.examples(64, 16, 0)})
    tok = task.tokenizer(captions + [""])
    states = np.asarray(text_conditioning.encode(task.text_encoder, jnp.asarray(tok["input_ids"]),
                                                 jnp.asarray(tok["attention_mask"])))
    for row in batch["text_emb"]:  # every caption dropped: the student reads ""
        np.testing.assert_allclose(row, states[-1], atol=1e-4)
    for row in batch["teacher_emb"]:  # the teacher reads the example's caption
        assert min(np.abs(row - s).max() for s in states[:-1]) < 1e-4

    x = jax.random.normal(jax.random.key(0), (4, 8, 8, model.unet.config["in_channels"]))
    t, ctx = jnp.array([10, 300, 600, 900]), jnp.asarray(batch["text_emb"])
    target = jnp.zeros(x.shape[:3] + (model.unet.config["out_channels"],))
    rng = jax.random.key(3)
    keep = np.asarray(task._keep_image(rng, 4))
    assert keep.any() and not keep.all()
    got = np.asarray(task.teacher_target(model, batch, x, t, ctx, target, rng))
    want = np.where(keep[:, None, None, None], np.asarray(task.base_unet(x, t, jnp.asarray(batch["teacher_emb"]))),
                    np.asarray(task.base_unet(x, t, ctx)))
    np.testing.assert_allclose(got, want, atol=1e-5)

    ip = nnx.PathContains("ip_adapter")
    start = _params(model.unet, ip)
    state, last = trainer.fit()
    assert np.isfinite(last["loss"]) and last["nan_skips"] == 0, last
    end = _params(trainer.model(state).unet, ip)
    moved = [k for k in start if not np.array_equal(start[k], end[k])]
    assert len(moved) == len(start), sorted(set(start) - set(moved))


def test_trained_image_tower_learns_with_the_adapter_and_is_exported(tmp_path, t2i_run, clip_run):
    """ip_adapter.train_image_encoder: a copy of the clip tower trains (the clip run and the base stay as they
    were); the tuned tower is written beside the adapter and load_adapter_image_encoder serves its tokens."""
    from canvas_jax.image_text import load_adapter_image_encoder, load_image_text_model
    from canvas_jax.train.hooks import make_hooks
    from canvas_jax.train.tasks import make_task
    from core_jax.loop import Trainer

    cfg = ip_config(tmp_path, t2i_run, clip_run[0], **{"ip_adapter.image_tokens": "feature_map", "train.steps": 3,
                                                       "ip_adapter.num_tokens": 2, "ip_adapter.resampler_depth": 1,
                                                       "ip_adapter.train_image_encoder": True})
    task = make_task(cfg, data_fn=fakes.data_fn(condition=True))
    trainer = Trainer(task, cfg, hooks=make_hooks(task, cfg))
    init = trainer.init_state()
    state, _ = trainer.fit()
    before, after = trainer.model(init).unet, trainer.model(state).unet
    clip = load_image_text_model(clip_run[0])
    tower = _params(clip.model.image_tower, nnx.Param)
    assert _params(before.ip_adapter.image_encoder, nnx.Param).keys() == tower.keys()
    for k, v in _params(before.ip_adapter.image_encoder, nnx.Param).items():
        np.testing.assert_array_equal(v, tower[k])  # starts as the clip run's tower
    moved = _params(after.ip_adapter.image_encoder, nnx.Param)
    assert any(np.abs(moved[k] - tower[k]).max() > 0 for k in tower)
    base = _params(before, NOT_ADAPTER)
    for k, v in _params(after, NOT_ADAPTER).items():
        np.testing.assert_array_equal(v, base[k])

    # the step reads the tower in training on the raw condition images (nothing cached)
    ref = np.stack([e["image"] for e in fakes.examples(2, 16, 5)])
    x = jnp.asarray(ref, jnp.float32) / 127.5 - 1.0
    emb, neg = task._condition(trainer.model(state), {"cond_image": x})
    np.testing.assert_allclose(emb, after.ip_adapter.image_encoder.feature_tokens(x), atol=1e-6)

    folder = tmp_path / "ip_adapter"
    info = json.load(open(folder / "image_encoder.json"))
    assert info["tower_weights"] == "image_encoder.safetensors"
    tuned = load_adapter_image_encoder(folder)
    np.testing.assert_allclose(tuned.image_tokens(ref), emb, atol=1e-5)
    np.testing.assert_allclose(tuned.negative_image_tokens()[0], neg, atol=1e-5)
    assert np.abs(clip.image_tokens(ref) - emb).max() > 1e-4  # not the clip run's own tower


def test_trained_plain_tower_feeds_the_normalised_embedding(tmp_path, t2i_run, clip_run):
    from canvas_jax.train.tasks import make_task
    from core_jax.config import ConfigError
    from core_jax.loop import Trainer

    cfg = ip_config(tmp_path, t2i_run, clip_run[0], **{"ip_adapter.train_image_encoder": True})
    task = make_task(cfg, data_fn=fakes.data_fn(condition=True))
    trainer = Trainer(task, cfg)
    model = trainer.model(trainer.init_state())
    ref = np.stack([e["image"] for e in fakes.examples(3, 16, 5)])
    emb, neg = task._condition(model, {"cond_image": jnp.asarray(ref, jnp.float32) / 127.5 - 1.0})
    np.testing.assert_allclose(emb, task.embedder.embed_images(ref), atol=1e-5)  # the untrained copy
    assert neg == 0.0
    with pytest.raises(ConfigError, match="data.image_size.*reads 16x16 images"):
        make_task(ip_config(tmp_path, t2i_run, clip_run[0], **{"data.image_size": 32}),
                  data_fn=fakes.data_fn(condition=True))
