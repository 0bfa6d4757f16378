"""``make demo`` (runtime part): the runtime end to end on the toy task.

Trains on 2 simulated CPU devices (mesh data=2), checkpoints, stops half way, resumes from the
checkpoint in a second process, and prints the metrics of both halves. A finished run is reused
(``--fresh`` starts over); ``DEMO_SMOKE=1`` trains a few steps only (``core_jax.demo_runs``).

    python -m core_jax.demo [--fresh]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys

from core_jax import demo_runs


def _train(run: str, steps: int, checkpoint_every: int) -> dict:
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip()
    env = {**os.environ, "XLA_FLAGS": flags, "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "core_jax.toy", "--config", "configs/toy.yaml", f"train.steps={steps}",
           f"train.run_dir={run}", f"data.dir={os.path.dirname(run)}/toy_data", "mesh.data=2",
           f"train.checkpoint.every={checkpoint_every}"]
    print("$", " ".join(cmd[1:]), flush=True)
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    print(out, end="")
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core_jax.demo", description=__doc__.splitlines()[0])
    p.add_argument("--fresh", action="store_true", help="start over instead of reusing a finished run")
    args = p.parse_args(argv)
    run = os.path.join(demo_runs.out_dir("demo"), "toy")
    half, every = (4, 2) if demo_runs.smoke() else (40, 20)
    part = demo_runs.Part("runtime", [run], {"steps": [half, 2 * half]}, fresh=args.fresh)
    summary = part.reused()
    if summary is None:
        shutil.rmtree(run, ignore_errors=True)  # the demo shows a stop and a resume: always from step 0
        first = _train(run, half, every)
        print(f"\n--- stopped at step {first['step']}; resuming from {run}/checkpoints ---\n", flush=True)
        part.lap("first half")
        second = _train(run, 2 * half, every)
        part.lap("resumed half")
        summary = {"first_half": {k: first[k] for k in ("step", "loss", "eval_mse")},
                   "after_resume": {k: second[k] for k in ("step", "loss", "eval_mse")},
                   "checkpoints": sorted(os.listdir(os.path.join(run, "checkpoints")))}
        part.finish(summary)
    print("\ndemo summary:", json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
