"""``python -m recsys_jax.demo``: HSTU on the built-in synthetic data, beside the most-popular baseline.

Trains the embedded default run (``configs/recsys/synthetic_tiny.yaml``: about a minute on 2 CPU
cores) on the shared loop, restores the best checkpoint (validation NDCG@10), prints its full-corpus
test metrics next to most-popular's, and one user's recommendations through ``recsys_jax.Retriever``.
Extra ``key=value`` arguments override the config (e.g. ``train.steps=200``).
"""

from __future__ import annotations

import json
import os
import shutil
import sys

RUN = "out/demo/recsys"
CONFIG = os.path.join("configs", "recsys", "synthetic_tiny.yaml")


def main(argv: list[str] | None = None) -> int:
    from recsys_jax import Retriever
    from recsys_jax.eval.baselines import evaluate_most_popular
    from recsys_jax.train.config import load_config
    from recsys_jax.train.restore import restore_run
    from recsys_jax.train.task import train

    overrides = [f"train.run_dir={RUN}", "data.cache_dir=out/demo/recsys_data", "train.progress=false",
                 *(sys.argv[1:] if argv is None else argv)]
    cfg = load_config(CONFIG if os.path.isfile(CONFIG) else None, overrides)  # the defaults are the same run
    shutil.rmtree(RUN, ignore_errors=True)
    print(f"training {cfg.model.name} for {cfg.train.steps} steps on the synthetic data ({RUN})", flush=True)
    train(cfg)

    run = restore_run(RUN, which="auto", eval_split="test", overrides=[f"data.cache_dir={cfg.data.cache_dir}"])
    model = run.trainer.evaluate(run.state)
    e = cfg.eval
    pop = evaluate_most_popular(run.task.dataset, "test", batch_size=e.batch_size, ks=e.ks, ties=e.ties,
                                exclude_history=e.exclude_history)
    names = [f"{m}@{k}" for m in ("hr", "ndcg") for k in e.ks] + ["mrr"]
    print(f"\ntest split, {len(run.task.dataset.split_source('test'))} users, all "
          f"{run.task.num_items} items ranked, history {'excluded' if e.exclude_history else 'kept'} "
          f"({run.which} checkpoint, step {run.step}):")
    print(f"  {'metric':<10}{cfg.model.name:>12}{'most-popular':>14}")
    for n in names:
        print(f"  {n:<10}{model[n]:>12.4f}{pop[n]:>14.4f}")

    r = Retriever.from_checkpoint(RUN)
    ds = run.task.dataset
    rec = ds.sequence(0)
    history = [ds.item_map.to_original(i) for i in rec["items"][-5:]]
    items, scores = r.recommend(history, [int(t) for t in rec["timestamps"][-5:]], k=5)
    print("\nuser 0 recently:", "; ".join(r.item_info(h)["title"] for h in history))
    print("recommended:    ", "; ".join(f"{r.item_info(i)['title']} ({s:.2f})" for i, s in zip(items, scores)))
    print("\ndemo summary:", json.dumps({"model": cfg.model.name, "step": run.step,
                                         "exclude_history": e.exclude_history,
                                         "test": {n: round(model[n], 4) for n in names},
                                         "most_popular": {n: round(pop[n], 4) for n in names}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
