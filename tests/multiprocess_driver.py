"""One process of the two-process end-to-end test (run under ``launch/local.sh 2 --``).

usage: python tests/multiprocess_driver.py OUT_DIR SD_PIPELINE_DIR
Trains a tiny recsys model (length-grouped batches) with evaluation, best_metric, early stopping and checkpoints; evaluates its best
checkpoint on the 2-process mesh (``recsys-jax eval``); samples a tiny random canvas Pipeline on the
2-process mesh. Process 0 prints one ``RESULT {json}`` line.
"""

import contextlib
import io
import json
import os
import sys

import jax
import numpy as np

from core_jax import config as config_lib
from core_jax import distributed


@config_lib.exit_on_error
def main():
    out_dir, sd_dir = sys.argv[1], sys.argv[2]
    distributed.initialize()
    assert jax.process_count() == 2, jax.process_count()
    result = {"processes": jax.process_count(), "devices": jax.device_count()}

    from recsys_jax import cli as recsys_cli
    from recsys_jax.train.config import load_config
    from recsys_jax.train.task import train

    run_dir = os.path.join(out_dir, "recsys_run")
    overrides = [
        "data.build.format=synthetic", "data.build.synthetic.num_users=96", "data.build.synthetic.num_items=60",
        "data.build.synthetic.min_len=6", "data.build.synthetic.max_len=12", f"data.cache_dir={out_dir}/cache",
        "data.max_len=8", "model.hstu.embed_dim=16", "model.hstu.num_layers=1", "model.hstu.attention_dim=8",
        "model.hstu.linear_dim=8", "model.hstu.max_seq_len=8", "loss.num_negatives=8", "eval.ks=[5,10]",
        "eval.batch_size=32", "train.steps=40", "train.batch_size=16", "train.log_every=2", "train.eval_every=2",
        "train.best_metric=ndcg@10", "train.early_stop_patience=2", "train.checkpoint.every=2",
        "train.checkpoint.keep=2", "train.progress=false", "train.tensorboard=false", f"train.run_dir={run_dir}",
        # length-grouped, packed batches (several users a row): both processes must pack each step into the same
        # number of rows
        "data.length_grouping=2", "data.pack_rows=2",
        "optim.learning_rate=0.0"]  # no learning: the first eval stays best, so early stopping fires
    state, metrics = train(load_config(None, overrides))
    result["stopped_at"] = int(jax.device_get(state["step"]))

    out = io.StringIO()  # `recsys-jax eval` of the best checkpoint, on both processes
    with contextlib.redirect_stdout(out):
        rc = recsys_cli.main(["eval", "--checkpoint", run_dir, "--which", "best", "--split", "validation",
                              "--no-baseline"])
    assert rc == 0, rc
    if jax.process_index() == 0:
        evaluated = json.loads(out.getvalue().strip().splitlines()[-1])
        result["best_step"], result["restored_eval"] = evaluated["step"], evaluated["metrics"]

    import canvas_jax

    pipe = canvas_jax.Pipeline.from_pretrained(sd_dir)
    images = pipe(["a photo of a cat", "a red dog", "hello world"], num_steps=2, guidance_scale=3.0,
                  output_type="np", seed=1).images
    result["pipeline_mesh"] = dict(pipe.mesh.shape) if pipe.mesh is not None else None
    if jax.process_index() == 0:
        np.save(os.path.join(out_dir, "images.npy"), np.asarray(images))
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
