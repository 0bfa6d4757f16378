"""A small CNN image classifier trained in-project (e.g. on the CIFAR-10 train split) to judge generated images:
the accuracy of generated images against their prompt's class, and the Fréchet distance in its feature space
(:mod:`canvas_jax.eval.frechet`).

Training is a task on the shared loop: ``train_classifier(images, labels, cfg)`` (numpy arrays) or
``train_classifier_on(train_source, cfg)`` (any random-access source of ``{"image", "label"}`` records, e.g.
``core_jax.data.open_split(path, "train")``). Images are NHWC, uint8 in [0, 255] or float in [-1, 1].
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from safetensors.numpy import load_file, save_file

from canvas_jax.errors import InputError
from canvas_jax.models.layers import conv, group_norm
from core_jax.nn import dense
from core_jax import data as data_lib
from core_jax.loop import Hook, TrainConfig, Trainer
from core_jax.mesh import MeshConfig
from core_jax.optim import OptimConfig
from core_jax.task import DataContext


@dataclasses.dataclass
class ClassifierModelConfig:
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128)  # one stage per entry; every stage after the first halves H and W
    feature_dim: int = 128  # the embedding the Fréchet distance uses
    groups: int = 8  # GroupNorm groups (must divide every width)


@dataclasses.dataclass
class ClassifierConfig:
    """A classifier training run on core_jax.loop.Trainer (same sections as every run config)."""

    model: ClassifierModelConfig = dataclasses.field(default_factory=ClassifierModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(steps=2000, batch_size=128,
                                                                              run_dir="runs/classifier"))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(learning_rate=2e-3,
                                                                              schedule="cosine", warmup_steps=100))
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    flip: bool = True  # random horizontal flips while training


class SmallCNN(nnx.Module):
    """``[conv3x3 -> GroupNorm -> SiLU] x 2`` per stage (the first conv of later stages has stride 2), global
    average pooling, ``embed`` (-> ``feature_dim``, SiLU) and ``head`` (-> logits)."""

    def __init__(self, cfg: ClassifierModelConfig, *, rngs: nnx.Rngs):
        if not cfg.widths:
            raise InputError("ClassifierModelConfig.widths must name at least one stage width")
        bad = [w for w in cfg.widths if w % cfg.groups]
        if bad:
            raise InputError(f"ClassifierModelConfig: widths {bad} are not divisible by groups={cfg.groups}")
        self.config = cfg
        convs, norms, c = [], [], 3
        for i, w in enumerate(cfg.widths):
            convs += [conv(c, w, 3, stride=1 if i == 0 else 2, rngs=rngs), conv(w, w, 3, rngs=rngs)]
            norms += [group_norm(w, cfg.groups, 1e-5, rngs=rngs), group_norm(w, cfg.groups, 1e-5, rngs=rngs)]
            c = w
        self.convs, self.norms = nnx.List(convs), nnx.List(norms)
        self.embed = dense(c, cfg.feature_dim, ("embed", "mlp"), rngs=rngs)
        self.head = dense(cfg.feature_dim, cfg.num_classes, ("mlp", None), rngs=rngs)

    def features(self, images: jax.Array) -> jax.Array:
        """images [B, H, W, 3] float in [-1, 1] -> features [B, feature_dim]."""
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"SmallCNN expects NHWC RGB images [B, H, W, 3], got shape {images.shape}")
        x = images
        for c, n in zip(self.convs, self.norms):
            x = jax.nn.silu(n(c(x)))
        return jax.nn.silu(self.embed(x.mean(axis=(1, 2))))

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.head(self.features(images))


def to_model_range(images) -> np.ndarray:
    """uint8 [0, 255] -> float32 [-1, 1]; float images are taken as already in [-1, 1]."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 127.5 - 1.0
    return images.astype(np.float32)


class ArraySource:
    """A random-access source of ``{"image", "label"}`` records over in-memory arrays (for Grain)."""

    def __init__(self, images, labels):
        if len(images) != len(labels):
            raise ValueError(f"ArraySource: {len(images)} images but {len(labels)} labels")
        self.images, self.labels = images, np.asarray(labels)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i], "label": self.labels[i]}


def _prepare(example: dict) -> dict:
    return {"image": to_model_range(example["image"]), "label": np.int32(example["label"])}


def _flip(example: dict, rng: np.random.Generator) -> dict:
    if rng.random() < 0.5:
        example = {**example, "image": example["image"][:, ::-1]}
    return example


class ClassifierTask:
    """Softmax cross-entropy on labelled images (a core_jax Task)."""

    def __init__(self, cfg: ClassifierConfig, train_source, eval_source=None):
        self.cfg, self.train_source, self.eval_source = cfg, train_source, eval_source

    def create_model(self, rngs: nnx.Rngs) -> SmallCNN:
        return SmallCNN(self.cfg.model, rngs=rngs)

    def loss(self, model, batch, rng):
        logits = model(batch["image"]).astype(jnp.float32)
        labels = batch["label"].astype(jnp.int32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}

    def eval_step(self, model, batch):
        logits = model(batch["image"]).astype(jnp.float32)
        labels = batch["label"].astype(jnp.int32)
        return {"accuracy": jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32),
                "loss": optax.softmax_cross_entropy_with_integer_labels(logits, labels).sum(),
                "count": jnp.float32(labels.shape[0])}

    def train_data(self, ctx: DataContext):
        return data_lib.make_iterator(self.train_source, batch_size=ctx.batch_size, seed=ctx.seed,
                                      transforms=[_prepare], random_transforms=[_flip] if self.cfg.flip else [],
                                      shard_index=ctx.process_index, shard_count=ctx.process_count)

    def eval_data(self, ctx: DataContext):
        if self.eval_source is None:
            return None
        return data_lib.make_iterator(self.eval_source, batch_size=ctx.batch_size, shuffle=False, num_epochs=1,
                                      transforms=[_prepare], drop_remainder=False, shard_index=ctx.process_index,
                                      shard_count=ctx.process_count)


def train_classifier_on(train_source, cfg: ClassifierConfig | None = None, *, eval_source=None,
                        hooks: Sequence[Hook] = ()) -> tuple[SmallCNN, dict]:
    """Train on a random-access source of ``{"image", "label"}`` records; returns (model, last metrics)."""
    cfg = cfg or ClassifierConfig()
    trainer = Trainer(ClassifierTask(cfg, train_source, eval_source), cfg, hooks=hooks)
    state, metrics = trainer.fit()
    return trainer.model(state, ema=True), metrics


def train_classifier(images, labels, cfg: ClassifierConfig | None = None, *, eval_images=None, eval_labels=None,
                     hooks: Sequence[Hook] = ()) -> tuple[SmallCNN, dict]:
    """Train on in-memory arrays (images NHWC uint8 or float in [-1, 1], integer labels)."""
    cfg = cfg or ClassifierConfig()
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= cfg.model.num_classes):
        raise ValueError(f"train_classifier: labels must be in [0, {cfg.model.num_classes}) "
                         f"(model.num_classes), got range [{labels.min()}, {labels.max()}]")
    eval_source = None if eval_images is None else ArraySource(eval_images, eval_labels)
    return train_classifier_on(ArraySource(images, labels), cfg, eval_source=eval_source, hooks=hooks)


@nnx.jit
def _logits_and_features(model: SmallCNN, images: jax.Array):
    f = model.features(images)
    return model.head(f), f


def _batched(model: SmallCNN, images, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images [N, H, W, 3], got shape {images.shape}")
    logits, feats = [], []
    for start in range(0, len(images), batch_size):
        chunk = to_model_range(images[start:start + batch_size])
        n = len(chunk)
        if n < batch_size and len(images) > batch_size:  # pad: one compiled shape for every batch
            chunk = np.concatenate([chunk, np.zeros((batch_size - n, *chunk.shape[1:]), chunk.dtype)])
        lg, ft = _logits_and_features(model, jnp.asarray(chunk))
        logits.append(np.asarray(lg)[:n])
        feats.append(np.asarray(ft)[:n])
    if not logits:
        raise ValueError("expected at least one image, got none")
    return np.concatenate(logits), np.concatenate(feats)


def predict_logits(model: SmallCNN, images, *, batch_size: int = 256) -> np.ndarray:
    """Class logits [N, num_classes] for images [N, H, W, 3] (uint8 or float in [-1, 1])."""
    return _batched(model, images, batch_size)[0]


def extract_features(model: SmallCNN, images, *, batch_size: int = 256) -> np.ndarray:
    """Penultimate features [N, feature_dim] (float64) for images [N, H, W, 3]."""
    return _batched(model, images, batch_size)[1].astype(np.float64)


def save_classifier(model: SmallCNN, path: str | os.PathLike) -> Path:
    """Write the classifier's weights and config to one safetensors file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {".".join(str(p) for p in k): np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    save_file(tensors, path, metadata={"config": json.dumps(dataclasses.asdict(model.config))})
    return path


def load_classifier(path: str | os.PathLike) -> SmallCNN:
    """The classifier written by :func:`save_classifier`."""
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
    if "config" not in meta:
        raise InputError(f"{path} is not a classifier saved by save_classifier (no 'config' metadata)")
    raw = json.loads(meta["config"])
    cfg = ClassifierModelConfig(**{**raw, "widths": tuple(raw["widths"])})
    model = nnx.eval_shape(lambda: SmallCNN(cfg, rngs=nnx.Rngs(0)))
    tensors = load_file(path)
    for k, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        key = ".".join(str(p) for p in k)
        if key not in tensors or tensors[key].shape != tuple(var.shape):
            raise InputError(f"{path}: weight {key!r} missing or of the wrong shape (expected {tuple(var.shape)})")
        var.set_value(jnp.asarray(tensors[key]))
    return model
