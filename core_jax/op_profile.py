"""Where a compiled step spends its time: per-op wall times from the JAX profiler, joined to the HLO.

``op_profile(run_step, steps, hlo_text)`` runs ``run_step()`` (one step, blocking until done) ``steps`` times
under ``jax.profiler.trace`` (its perfetto trace), and returns one row per executed op (an XLA fusion, dot,
scatter, ... as the runtime names it), slowest first::

    {"op": "ynn_fusion.8", "ms_per_step": 33.8, "calls_per_step": 1.0,
     "shape": "f32[200,200]", "source": "jit(_train_step)/transpose(jvp())/reduce_sum"}

``shape`` (the op's output) and ``source`` (its ``op_name`` metadata: which JAX operation, forward or
``transpose(...)`` for the backward pass) come from ``hlo_text`` (``compiled.as_text()``) when given. Ops can
run concurrently (XLA:CPU runs independent ops on its thread pool), so their times may add up to more than the
step's wall time. Used by ``benchmarks/op_profile.py``; BENCHMARKS.md has what it found (the canvas convolution
gradients, the HSTU bias reduction).

Blind spot: XLA:CPU runs its own (Eigen) convolutions asynchronously on its thread pool, and the profiler's span
for one covers only its dispatch (0.1 ms for a 3x3 convolution that takes 30 ms, 2026-12-03), so convolution time
is in none of the rows. Compare the rows' sum with the step's wall time (``benchmarks/op_profile.py`` prints both).
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile
from typing import Callable

import jax

_SKIP = ("$", "Thunk", "PjRt")  # Python frames and the executor's own spans


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
    """``{instruction name: (output shape, op_name metadata)}`` of an HLO module's text."""
    out = {}
    for m in re.finditer(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\([^)]*\)|\S+) [^\n]*$", hlo_text, re.M):
        src = re.search(r'op_name="([^"]*)"', m.group(0))
        out[m.group(1)] = (m.group(2), src.group(1) if src else "")
    return out


def op_profile(run_step: Callable[[], object], steps: int = 2, hlo_text: str | None = None) -> list[dict]:
    """Per-op times of ``steps`` calls of ``run_step`` (module docstring), slowest first."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    with tempfile.TemporaryDirectory(prefix="op_profile_") as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            for _ in range(steps):
                run_step()
        files = glob.glob(os.path.join(tmp, "**", "*perfetto_trace.json.gz"), recursive=True)
        if not files:
            raise RuntimeError(f"jax.profiler.trace wrote no perfetto trace under {tmp}")
        with gzip.open(files[0]) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    ops = hlo_ops(hlo_text) if hlo_text else {}  # with the HLO: its instructions only
    total, calls = collections.Counter(), collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") == "X" and "dur" in e and (name in ops if ops else not name.startswith(_SKIP)):
            total[name] += e["dur"]
            calls[name] += 1
    rows = []
    for name, us in total.most_common():
        shape, source = ops.get(name, ("", ""))
        rows.append({"op": name, "ms_per_step": round(us / 1e3 / steps, 3), "calls_per_step": calls[name] / steps,
                     "shape": shape, "source": source})
    return rows
