"""Subprocess for test_recsys_sharded_eval: 8 simulated devices, item table row-sharded over fsdp x tensor.

Trains a few steps on a (data=2, fsdp=2, tensor=2) mesh, then prints the loop's sharded validation metrics
and the same metrics of the same weights copied to one device and evaluated without a mesh.
"""

import json
import sys

import jax

from recsys_jax.eval.evaluate import evaluate_model
from recsys_jax.train.config import load_config
from recsys_jax.train.task import RecsysTask
from core_jax.loop import Trainer


def main(run_dir: str) -> None:
    cfg = load_config(None, [
        f"train.run_dir={run_dir}", f"data.cache_dir={run_dir}/data", "train.steps=6", "train.batch_size=16",
        "train.eval_every=0", "train.progress=false", "train.tensorboard=false", "eval.batch_size=32",
        "data.build.synthetic.num_users=120", "data.build.synthetic.num_items=97", "data.build.synthetic.min_len=8",
        "data.build.synthetic.max_len=20", "data.max_len=12",
        "model.hstu.max_seq_len=12", "model.hstu.embed_dim=16", "model.hstu.attention_dim=16",
        "model.hstu.linear_dim=16", "model.hstu.num_layers=1", "loss.num_negatives=16",
        "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"])
    trainer = Trainer(RecsysTask(cfg), cfg)
    state, _ = trainer.fit()
    table = trainer.model(state).item_embeddings()
    sharded = trainer.evaluate(state)
    single = jax.device_put(jax.device_get(state), jax.devices()[0])
    e = cfg.eval
    unsharded = evaluate_model(trainer.model(single), trainer.task.dataset, "validation", batch_size=e.batch_size,
                               max_len=cfg.data.max_len, padding=cfg.data.padding, ks=tuple(e.ks), ties=e.ties)
    print("RESULT " + json.dumps({"sharded": sharded, "unsharded": unsharded,
                                  "table_spec": str(trainer.model(state).items.embedding[...].sharding.spec),
                                  "table_rows": int(table.shape[0]),
                                  "param_rows": int(trainer.model(state).items.embedding[...].shape[0])}))


if __name__ == "__main__":
    main(sys.argv[1])
