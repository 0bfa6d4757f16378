"""core_jax.op_profile: per-op times of a compiled program from the profiler, joined to its HLO."""

import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from core_jax.op_profile import hlo_ops, op_profile


def test_op_profile_names_the_programs_ops_with_shapes_and_sources():
    f = jax.jit(lambda a, b: jnp.tanh(a @ b).sum(axis=0))
    a, b = jnp.ones((256, 128)), jnp.ones((128, 64))
    compiled = f.lower(a, b).compile()
    text = compiled.as_text()
    rows = op_profile(lambda: jax.block_until_ready(compiled(a, b)), steps=2, hlo_text=text)
    ops = hlo_ops(text)
    assert rows and all(r["op"] in ops for r in rows)  # only the program's own instructions
    assert [r["ms_per_step"] for r in rows] == sorted((r["ms_per_step"] for r in rows), reverse=True)
    assert all(r["ms_per_step"] >= 0 and r["calls_per_step"] == 1.0 for r in rows)
    assert any(r["shape"].startswith("f32[64]") for r in rows)  # the reduction's output
    assert all(r["source"].startswith("jit(") for r in rows)  # the JAX operation it came from
    with pytest.raises(ValueError, match="steps"):
        op_profile(lambda: None, steps=0)


def test_op_profile_benchmark_dry_run(capsys):
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "op_profile.py"
    spec = importlib.util.spec_from_file_location("_bench_op_profile", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--program", "hstu", "--dry-run", "--steps", "1", "--warmup", "1", "--top", "5"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]  # not TFDS's log
    assert len(lines) == 6 and lines[-1]["program"] == "hstu" and lines[-1]["ops"] >= 5
    assert all(r["shape"] for r in lines[:5])
