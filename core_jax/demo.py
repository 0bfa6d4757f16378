"""``make demo``: the runtime end to end on the toy task.

Trains on 2 simulated CPU devices (mesh data=2), checkpoints, stops half way, resumes from the
checkpoint in a second process, and prints the metrics of both halves.
"""

import json
import os
import shutil
import subprocess
import sys

RUN = "out/demo/toy"


def _train(steps: int) -> dict:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "JAX_PLATFORMS": "cpu"}
    cmd = [sys.executable, "-m", "core_jax.toy", "--config", "configs/toy.yaml", f"train.steps={steps}",
           f"train.run_dir={RUN}", "data.dir=out/demo/toy_data", "mesh.data=2", "train.checkpoint.every=20"]
    print("$", " ".join(cmd[1:]), flush=True)
    out = subprocess.run(cmd, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    print(out, end="")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    shutil.rmtree(RUN, ignore_errors=True)
    first = _train(40)
    print(f"\n--- stopped at step {first['step']}; resuming from {RUN}/checkpoints ---\n", flush=True)
    second = _train(80)
    print("\ndemo summary:", json.dumps({"first_half": {k: first[k] for k in ("step", "loss", "eval_mse")},
                                         "after_resume": {k: second[k] for k in ("step", "loss", "eval_mse")},
                                         "checkpoints": sorted(os.listdir(f"{RUN}/checkpoints"))}))


if __name__ == "__main__":
    main()
