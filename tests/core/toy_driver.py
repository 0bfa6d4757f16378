"""Run the toy task in a subprocess for the core tests.

usage: python tests/core/toy_driver.py MODE [overrides...]
  MODE train:     train (optionally slowed by TOY_STEP_SLEEP seconds per step, through a user hook)
  MODE meshes:    train the same config on 1 device and on the meshes in TOY_MESHES ("d,f,t;d,f,t"),
                  print the per-step losses of each as JSON
  MODE restore:   restore the run's latest checkpoint into the mesh in the overrides and print the
                  eval metrics and a parameter fingerprint as JSON
"""

import json
import os
import sys
import time

import jax
import numpy as np

from core_jax import config as config_lib
from core_jax import distributed
from core_jax.loop import Hook, Trainer
from core_jax.mesh import make_mesh
from core_jax.metrics import read_jsonl
from core_jax.toy import ToyConfig, ToyTask


def fingerprint(state):
    leaves = jax.tree.leaves(jax.device_get(state["params"]))
    return [float(np.asarray(x, np.float64).sum()) for x in leaves] + [float(np.abs(np.asarray(x)).max()) for x in leaves]


def main():
    mode, overrides = sys.argv[1], sys.argv[2:]
    distributed.initialize()
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
