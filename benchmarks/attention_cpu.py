"""Attention on CPU: ``core_jax.nn.cpu_attention`` against ``jax.nn.dot_product_attention``'s XLA path, side by side
in one process (JSON lines: shape, forward or forward + backward, ms each, speedup, max relative difference).

    python benchmarks/attention_cpu.py [--repeats 5]

Cases: SD-1.5's self-attention at 256 px (1,024 tokens, 8 heads of 40) and at 512 px (4,096 tokens), its
cross-attention (77 text tokens), the shapes_tiny VAE mid-block (256 tokens, one head of 64, batch 32) and UNet
(64 tokens, 4 heads of 16, batch 32) attention.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from core_jax import nn  # noqa: E402  (also applies core_jax's XLA:CPU flags)

CASES = [  # (name, [B, T, H, D] queries, key length, with backward)
    ("sd15 self 256px", (2, 1024, 8, 40), 1024, False),
    ("sd15 self 256px", (2, 1024, 8, 40), 1024, True),
    ("sd15 self 512px", (2, 4096, 8, 40), 4096, False),
    ("sd15 cross 256px", (2, 1024, 8, 40), 77, False),
    ("shapes_tiny vae mid", (32, 256, 1, 64), 256, True),
    ("shapes_tiny unet 8x8", (32, 64, 4, 16), 64, True),
]


def _timed(fn, args, repeats: int):
    out = fn(*args)
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats * 1e3, out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    impls = {"xla": lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="xla"),
             "ours": nn.cpu_attention}
    for name, shape, keys, backward in CASES:
        q, k, v = (jax.random.normal(key, (shape[0], n, *shape[2:]))
                   for key, n in zip(jax.random.split(jax.random.key(0), 3), (shape[1], keys, keys)))
        row, outs = {"case": name, "queries": list(shape), "keys": keys,
                     "pass": "forward + backward" if backward else "forward"}, {}
        for impl, f in impls.items():
            fn = jax.jit(jax.grad(lambda *a, f=f: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2)) if backward else f)
            row[f"{impl}_ms"], outs[impl] = _timed(fn, (q, k, v), args.repeats)
            row[f"{impl}_ms"] = round(row[f"{impl}_ms"], 1)
        row["speedup"] = round(row["xla_ms"] / row["ours_ms"], 2)
        row["max_rel_diff"] = float(max(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)) for a, b in
                                        zip(jax.tree.leaves(outs["ours"]), jax.tree.leaves(outs["xla"]))))
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
