"""Run the toy task in a subprocess for the core tests.

usage: python tests/core/toy_driver.py MODE [overrides...]
  MODE train:     train (optionally slowed by TOY_STEP_SLEEP seconds per step, through a user hook)
  MODE meshes:    train the same config on 1 device and on the meshes in TOY_MESHES ("d,f,t;d,f,t"),
                  print the per-step losses of each as JSON
  MODE restore:   restore the run's latest checkpoint into the mesh in the overrides and print the
                  eval metrics and a parameter fingerprint as JSON
  MODE two_checkpointers RUN_DIR: a run's periodic and best Checkpointer save the same steps at once
  MODE fail RUN_DIR: (a console entry, under exit_on_error) process 0 raises while process 1 waits for it
"""

import json
import os
import sys
import time

import jax
import numpy as np

from core_jax import config as config_lib
from core_jax import distributed
from core_jax.checkpoint import CheckpointConfig, Checkpointer
from core_jax.loop import Hook, Trainer
from core_jax.mesh import make_mesh
from core_jax.metrics import read_jsonl
from core_jax.toy import ToyConfig, ToyTask


def fingerprint(state):
    leaves = jax.tree.leaves(jax.device_get(state["params"]))
    return [float(np.asarray(x, np.float64).sum()) for x in leaves] + [float(np.abs(np.asarray(x)).max()) for x in leaves]


def two_checkpointers(run_dir):
    periodic = Checkpointer(os.path.join(run_dir, "checkpoints"), CheckpointConfig(keep=2))
    best = Checkpointer(os.path.join(run_dir, "best"), CheckpointConfig(keep=1))
    for step in range(1, 7):
        state = {"w": np.full((128, 128), step, np.float32), "step": np.int32(step)}
        best.save(step, state, force=True)
        periodic.save(step, state, force=True)
    periodic.wait()
    best.wait()
    print("RESULT " + json.dumps({"periodic": periodic.latest_step(), "best": best.latest_step()}))


@config_lib.exit_on_error
def fail(run_dir):
    checkpointer = Checkpointer(os.path.join(run_dir, "checkpoints"))
    if jax.process_index() == 0:  # the coordinator: its service stays up while it waits in JAX's shutdown
        raise RuntimeError("process 0 fails alone")
    # process 1 saves asynchronously: the save's thread waits in a barrier for process 0 (20 min timeout)
    checkpointer.save(1, {"w": np.zeros(4, np.float32)})
    checkpointer.wait()


def main():
    mode, overrides = sys.argv[1], sys.argv[2:]
    distributed.initialize()
    if mode == "two_checkpointers":
        return two_checkpointers(overrides[0])
    if mode == "fail":
        return fail(overrides[0])
    cfg = config_lib.load(ToyConfig, "configs/toy.yaml", ["train.progress=false", "train.tensorboard=false", *overrides])
    if mode == "train":
        delay = float(os.environ.get("TOY_STEP_SLEEP", "0"))
        hooks = [Hook(1, lambda *_: time.sleep(delay), at_end=False)] if delay else []
        Trainer(ToyTask(cfg), cfg, hooks=hooks).fit()
    elif mode == "meshes":
        out = {}
        for spec in ["1,1,1"] + os.environ["TOY_MESHES"].split(";"):
            d, f, t = (int(v) for v in spec.split(","))
            run_dir = os.path.join(cfg.train.run_dir, spec.replace(",", "_"))
            c = config_lib.load(ToyConfig, "configs/toy.yaml",
                                ["train.progress=false", "train.tensorboard=false", *overrides,
                                 f"train.run_dir={run_dir}", f"mesh.data={d}", f"mesh.fsdp={f}", f"mesh.tensor={t}"])
            mesh = make_mesh(c.mesh, jax.devices()[: d * f * t])
            Trainer(ToyTask(c), c, mesh=mesh).fit()
            out[spec] = [r["loss"] for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"), "train")]
        print("RESULT " + json.dumps(out))
    elif mode == "restore":
        trainer = Trainer(ToyTask(cfg), cfg)
        step, state = trainer.checkpointer.restore(trainer.abstract_state)
        shardings = sorted({str(x.sharding.spec) for x in jax.tree.leaves(state["params"])})
        print("RESULT " + json.dumps({"step": step, "eval": trainer.evaluate(state), "fingerprint": fingerprint(state),
                                      "devices": jax.device_count(), "specs": shardings}))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
