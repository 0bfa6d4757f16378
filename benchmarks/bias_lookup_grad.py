"""The HSTU time-bias lookup's forward + backward: ``jnp.take`` (JAX's derived scatter-add gradient) against
``core_jax.nn.take_rows`` (one ``segment_sum``), on the same arrays in one process. Prints one JSON line.

    python benchmarks/bias_lookup_grad.py [--batch 128 --length 200 --buckets 129 --repeats 10]
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
import numpy as np  # noqa: E402

from core_jax.nn import take_rows  # noqa: E402
from recsys_jax.models.hstu import time_buckets  # noqa: E402


def _ms(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return round((time.perf_counter() - t0) / repeats * 1000, 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--length", type=int, default=200)
    p.add_argument("--buckets", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    ts = jnp.asarray(np.sort(rng.integers(900_000_000, 1_000_000_000, (a.batch, a.length)), axis=1).astype(np.int32))
    buckets = time_buckets(ts[:, :, None] - ts[:, None, :], a.buckets)
    table = jnp.asarray(rng.normal(size=a.buckets + 1).astype(np.float32))
    ct = jnp.asarray(rng.normal(size=buckets.shape).astype(np.float32))
    take = jax.jit(jax.grad(lambda t, b, c: jnp.sum(jnp.take(t, b, axis=0) * c)))
    rows = jax.jit(jax.grad(lambda t, b, c: jnp.sum(take_rows(t, b) * c)))
    np.testing.assert_allclose(rows(table, buckets, ct), take(table, buckets, ct), rtol=1e-4, atol=1e-3)
    out = {"batch": a.batch, "length": a.length, "buckets": a.buckets,
           "take_fwd_bwd_ms": _ms(take, (table, buckets, ct), a.repeats),
           "take_rows_fwd_bwd_ms": _ms(rows, (table, buckets, ct), a.repeats),
           "load_avg": round(os.getloadavg()[0], 2)}
    out["speedup"] = round(out["take_fwd_bwd_ms"] / out["take_rows_fwd_bwd_ms"], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
