"""Long-term encoder speed and memory at 4,096-event histories: one JSON line per encoder.

For each encoder (pooled, chunk_hstu), side by side in one process: sequences/s of the forward pass (the
batch recomputation of the long-term table) and of a training step (dense all-action loss, 10 targets per
user, 128 negatives), at ``--batch`` users x ``--length`` events, after compilation; XLA's memory estimate
of the compiled step (arguments + temporaries); and the stored table's size for ``--users`` x D.

    python benchmarks/longshort_speed.py --batch 64 --length 4096 --steps 10
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recsys_jax.models.long_term import LongTermConfig, LongTermEncoder
from recsys_jax.train.longshort import _long_step, _optimizer, StageConfig
from recsys_jax.train.losses import SampledSoftmaxConfig


def _memory_mb(compiled) -> float | None:
    m = compiled.memory_analysis()
    if m is None:
        return None
    return round((m.argument_size_in_bytes + m.temp_size_in_bytes + m.output_size_in_bytes) / 2**20, 1)


def measure(encoder: str, batch: int, length: int, steps: int, num_items: int, dim: int) -> dict:
    rng = np.random.default_rng(0)
    model = LongTermEncoder(LongTermConfig(encoder=encoder, embed_dim=dim, max_len=length), num_items,
                            rngs=nnx.Rngs(0))
    b = {"items": jnp.asarray(rng.integers(1, num_items + 1, (batch, length)), jnp.int32),
         "timestamps": jnp.asarray(np.sort(rng.integers(0, 10**8, (batch, length)), axis=1), jnp.int32),
         "as_of": jnp.full((batch,), 10**8, jnp.int32),
         "targets": jnp.asarray(rng.integers(1, num_items + 1, (batch, 10)), jnp.int32)}
    graphdef, state = nnx.split(model)
    fwd = jax.jit(lambda s, i, t, a: nnx.merge(graphdef, s)(i, t, a, deterministic=True))
    fwd_c = fwd.lower(state, b["items"], b["timestamps"], b["as_of"]).compile()
    fwd_c(state, b["items"], b["timestamps"], b["as_of"]).block_until_ready()
    t = time.perf_counter()
    for _ in range(steps):
        out = fwd_c(state, b["items"], b["timestamps"], b["as_of"])
    out.block_until_ready()
    fwd_rate = batch * steps / (time.perf_counter() - t)

    opt = _optimizer(model, StageConfig())
    loss_cfg = SampledSoftmaxConfig(num_negatives=128, temperature=0.05)
    step = nnx.jit(_long_step, static_argnames=("loss_cfg",))
    key = jax.random.key(0)
    step(model, opt, b, key, loss_cfg).block_until_ready()
    t = time.perf_counter()
    for _ in range(steps):
        loss = step(model, opt, b, key, loss_cfg)
    loss.block_until_ready()
    train_rate = batch * steps / (time.perf_counter() - t)
    g, s_all = nnx.split((model, opt))
    train_c = jax.jit(lambda s, bb, k: _long_step(*nnx.merge(g, s), bb, k, loss_cfg)).lower(s_all, b, key).compile()
    return {"encoder": encoder, "batch": batch, "length": length, "embed_dim": dim, "num_items": num_items,
            "forward_sequences_per_s": round(fwd_rate, 1), "train_sequences_per_s": round(train_rate, 1),
            "forward_memory_mb": _memory_mb(fwd_c), "train_step_memory_mb": _memory_mb(train_c),
            "params": int(sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=4096)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--num-items", type=int, default=3706)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--users", type=float, default=1e8, help="table size estimate for this many users")
    p.add_argument("--encoders", default="pooled,chunk_hstu")
    args = p.parse_args()
    for enc in args.encoders.split(","):
        print(json.dumps(measure(enc, args.batch, args.length, args.steps, args.num_items, args.dim)), flush=True)
    u, d = int(args.users), args.dim
    print(json.dumps({"table_users": u, "embed_dim": d, "float32_gb": round(u * d * 4 / 1e9, 1),
                      "bfloat16_gb": round(u * d * 2 / 1e9, 1), "int8_gb": round(u * d / 1e9, 1),
                      "as_of_int64_gb": round(u * 8 / 1e9, 1)}))


if __name__ == "__main__":
    main()
