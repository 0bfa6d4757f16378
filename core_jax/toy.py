"""A toy regression task: the runtime's own end-to-end check (``make demo`` and the core tests).

A small MLP learns ``y = sin(x @ W)`` from an ArrayRecord dataset written by a TFDS builder, on the
shared loop. Run: ``python -m core_jax.toy --config configs/toy.yaml train.steps=50``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from flax import nnx

from core_jax import config as config_lib
from core_jax import data as data_lib
from core_jax import distributed
from core_jax.loop import TrainConfig, Trainer
from core_jax.mesh import MeshConfig
from core_jax.optim import OptimConfig
from core_jax.task import DataContext


@dataclasses.dataclass
class ToyModelConfig:
    in_dim: int = 16
    hidden: int = 64
    out_dim: int = 8


@dataclasses.dataclass
class ToyDataConfig:
    dir: str = "out/toy_data"
    train_examples: int = 2048
    eval_examples: int = 256


@dataclasses.dataclass
class ToyConfig:
    model: ToyModelConfig = dataclasses.field(default_factory=ToyModelConfig)
    data: ToyDataConfig = dataclasses.field(default_factory=ToyDataConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)


class MLP(nnx.Module):
    def __init__(self, cfg: ToyModelConfig, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        self.fc1 = nnx.Linear(cfg.in_dim, cfg.hidden, kernel_init=nnx.with_partitioning(init, ("embed", "mlp")),
                              bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("mlp",)), rngs=rngs)
        self.fc2 = nnx.Linear(cfg.hidden, cfg.out_dim, kernel_init=nnx.with_partitioning(init, ("mlp", "embed")),
                              rngs=rngs)

    def __call__(self, x):
        return self.fc2(nnx.gelu(self.fc1(x)))


def build_toy_data(cfg: ToyModelConfig, data: ToyDataConfig) -> str:
    """Write the toy dataset (deterministic) once; later calls reuse it."""
    w = np.random.default_rng(0).normal(size=(cfg.in_dim, cfg.out_dim)).astype(np.float32) / np.sqrt(cfg.in_dim)

    def split(n, seed):
        def gen():
            rng = np.random.default_rng(seed)
            for i in range(n):
                x = rng.normal(size=cfg.in_dim).astype(np.float32)
                yield i, {"x": x, "y": np.sin(x @ w).astype(np.float32)}
        return gen

    features = {"x": tfds.features.Tensor(shape=(cfg.in_dim,), dtype=np.float32),
                "y": tfds.features.Tensor(shape=(cfg.out_dim,), dtype=np.float32)}
    name = f"toy_regression_{cfg.in_dim}x{cfg.out_dim}_{data.train_examples}"
    path = os.path.join(data.dir, name, "1.0.0")
    if os.path.exists(os.path.join(path, "dataset_info.json")):
        return path
    if jax.process_index() == 0:
        path = data_lib.build_dataset(name, data.dir, features, {"train": split(data.train_examples, 1),
                                                                  "test": split(data.eval_examples, 2)})
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("toy data written")
    return path


class ToyTask:
    def __init__(self, cfg: ToyConfig):
        self.cfg = cfg
        self.path = build_toy_data(cfg.model, cfg.data)

    def create_model(self, rngs):
        return MLP(self.cfg.model, rngs)

    def loss(self, model, batch, rng):
        err = model(batch["x"]) - batch["y"]
        loss = jnp.mean(jnp.square(err.astype(jnp.float32)))
        return loss, {"mae": jnp.mean(jnp.abs(err))}

    def eval_step(self, model, batch):
        return {"mse": jnp.mean(jnp.square(model(batch["x"]) - batch["y"]))}

    def train_data(self, ctx: DataContext):
        return data_lib.make_iterator(data_lib.open_split(self.path, "train"), batch_size=ctx.batch_size,
                                      seed=ctx.seed, shard_index=ctx.process_index, shard_count=ctx.process_count)

    def eval_data(self, ctx: DataContext):
        return data_lib.make_iterator(data_lib.open_split(self.path, "test"), batch_size=ctx.batch_size,
                                      shuffle=False, num_epochs=1, shard_index=ctx.process_index,
                                      shard_count=ctx.process_count)


@config_lib.exit_on_error
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m core_jax.toy", description=__doc__.splitlines()[0])
    p.add_argument("--config", default=None, help="YAML config (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", help="key.sub=value")
    distributed.add_flags(p)
    args = p.parse_args(argv)
    cfg = config_lib.load(ToyConfig, args.config, args.overrides)
    distributed.initialize_from_args(args)
    trainer = Trainer(ToyTask(cfg), cfg)
    state, metrics = trainer.fit()
    if jax.process_index() == 0:
        print(json.dumps({"step": int(jax.device_get(state["step"])), **metrics}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
