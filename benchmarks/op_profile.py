"""Per-op profile of a training step (JSON lines): where the step's time goes, op by op.

    python benchmarks/op_profile.py --program hstu [--data RATINGS] [--steps 3] [--top 25] [key=value ...]
    python benchmarks/op_profile.py --program unet|vae [--config configs/canvas/shapes_tiny.yaml] [key=value ...]
    python benchmarks/op_profile.py --program hstu --dry-run      # tiny config (the test suite runs this)

``hstu``: the step ``recsys-jax train`` compiles for ``configs/recsys/hstu_ml1m.yaml`` on real batches (the
side-by-side harness's, ``benchmarks/reference/hstu_train_step.py``); ``unet`` / ``vae``: the shapes_tiny canvas
steps on constant batches (``benchmarks/train_compile.py``). After warm-up, ``--steps`` steps run under the JAX
profiler (:func:`core_jax.op_profile.op_profile`). Prints one line per op of the ``--top`` slowest ({op,
ms_per_step, calls_per_step, shape, source}: ``source`` is the JAX operation, ``transpose(...)`` in it meaning
the backward pass) and a summary {program, step_ms (timed without the profiler), op_ms_per_step (all ops; ops run
concurrently, so it can exceed step_ms), ops}. XLA:CPU's Eigen convolutions run outside their profiled spans
(``core_jax.op_profile``): where step_ms exceeds op_ms_per_step, their time is in the difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks"), os.path.join(ROOT, "benchmarks", "reference")]

import jax  # noqa: E402

from core_jax.op_profile import op_profile  # noqa: E402


def hstu_step(args, work: str):
    """``(one-step callable, compiled program)`` of the HSTU train step on the harness's batches."""
    import hstu_train_step as harness

    hargs = argparse.Namespace(dry_run=args.dry_run, data=args.data, work_dir=work, cache_dir=args.cache_dir,
                               override=args.overrides, config=os.path.join(ROOT, "configs", "recsys", "hstu_ml1m.yaml"))
    cfg, _ = harness.load_run_config(hargs)
    dataset = harness.load_dataset(harness.resolve_dataset(cfg.data, verbose=False))
    trainer = harness.Trainer(harness.RecsysTask(cfg, dataset), cfg)
    batches = harness.make_batches(dataset, cfg, 8)
    # one program: the batches of the first one's shape (length grouping and packing vary it)
    batches = [harness.mesh_lib.global_batch(b, trainer.mesh) for b in batches
               if b["item_ids"].shape == batches[0]["item_ids"].shape]
    box = {"state": trainer.init_state(), "i": 0}
    compiled, _ = trainer._compile(box["state"], batches[0])

    def step():
        box["state"], metrics = compiled(box["state"], batches[box["i"] % len(batches)])
        box["i"] += 1
        jax.block_until_ready(metrics)
    return step, compiled


def canvas_step(args):
    from train_compile import loop_step

    _, _, state, batch, fn = loop_step(args.config, "vae" if args.program == "vae" else "text_to_image", args.overrides)
    compiled = fn.lower(state, batch).compile()
    box = {"state": state}

    def step():
        box["state"], metrics = compiled(box["state"], batch)
        jax.block_until_ready(metrics)
    return step, compiled


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--program", choices=["hstu", "unet", "vae"], default="hstu")
    p.add_argument("--data", default=os.path.join(os.path.dirname(ROOT), "shared", "data", "recsys", "ml-1m-half",
                                                  "ratings_users1-2999.dat.gz"), help="hstu: the ratings file")
    p.add_argument("--cache-dir", default=None, help="hstu: built datasets (default: a temporary folder)")
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "canvas", "shapes_tiny.yaml"), help="unet / vae")
    p.add_argument("--dry-run", action="store_true", help="hstu: the harness's tiny synthetic config")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=3, help="profiled steps (and timed steps, without the profiler)")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="op_profile_") as work:
        step, compiled = hstu_step(args, work) if args.program == "hstu" else canvas_step(args)
        for _ in range(args.warmup):
            step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        step_ms = (time.perf_counter() - t0) / args.steps * 1e3
        rows = op_profile(step, args.steps, compiled.as_text())
    for row in rows[:args.top]:
        print(json.dumps(row))
    print(json.dumps({"program": args.program, "step_ms": round(step_ms, 1),
                      "op_ms_per_step": round(sum(r["ms_per_step"] for r in rows), 1), "ops": len(rows),
                      "steps": args.steps, "jax": jax.__version__, "device": jax.devices()[0].device_kind}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
