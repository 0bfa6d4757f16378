"""``python -m recsys_jax.demo``: HSTU on the built-in synthetic data, beside the most-popular baseline,
and the unified (multi-label, scenario-adaptive) HSTU on the marketplace simulator.

Trains the embedded default run (``configs/recsys/synthetic_tiny.yaml``: about a minute on 2 CPU
cores) on the shared loop, restores the best checkpoint (validation NDCG@10), prints its full-corpus
test metrics next to most-popular's, and one user's recommendations through ``recsys_jax.Retriever``.
Then trains ``configs/recsys/unified_tiny.yaml`` (a few minutes) and prints its per-scenario metrics
(``"<label>:<surface>"``, time split) next to per-scenario popularity, and one user's conversion ads.
Extra ``key=value`` arguments override the first config (e.g. ``train.steps=200``). A finished run with
the same overrides is reused (``--fresh`` starts over); ``DEMO_SMOKE=1`` trains a few steps only
(``core_jax.demo_runs``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from core_jax import demo_runs

CONFIG = os.path.join("configs", "recsys", "synthetic_tiny.yaml")
UNIFIED_CONFIG = os.path.join("configs", "recsys", "unified_tiny.yaml")
SMOKE_OVERRIDES = ["train.steps=4"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recsys_jax.demo", description=__doc__.splitlines()[0])
    p.add_argument("--fresh", action="store_true", help="start over instead of reusing a finished run")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. train.steps=200")
    args = p.parse_args(argv)
    base = demo_runs.out_dir("demo")
    run_dir = os.path.join(base, "recsys")
    overrides = [f"train.run_dir={run_dir}", f"data.cache_dir={os.path.join(base, 'recsys_data')}",
                 "train.progress=false", *(SMOKE_OVERRIDES if demo_runs.smoke() else []), *args.overrides]
    part = demo_runs.Part("recsys", [run_dir], {"overrides": overrides}, fresh=args.fresh)
    summary = part.reused()
    if summary is None:
        if part.saved_settings is not None:  # finished with other overrides: not a run to continue
            shutil.rmtree(run_dir, ignore_errors=True)
        summary = _train_and_report(run_dir, overrides, part)
        part.finish(summary)
    print("\ndemo summary:", json.dumps(summary))

    unified_dir = os.path.join(base, "recsys_unified")
    overrides = [f"train.run_dir={unified_dir}", f"data.cache_dir={os.path.join(base, 'recsys_data')}",
                 "train.progress=false", *(SMOKE_OVERRIDES if demo_runs.smoke() else [])]
    part = demo_runs.Part("recsys_unified", [unified_dir], {"overrides": overrides}, fresh=args.fresh)
    summary = part.reused()
    if summary is None:
        if part.saved_settings is not None:
            shutil.rmtree(unified_dir, ignore_errors=True)
        summary = _train_and_report_unified(unified_dir, overrides, part)
        part.finish(summary)
    print("\ndemo summary (unified):", json.dumps(summary))
    return 0


def _train_and_report_unified(run_dir: str, overrides: list[str], part: demo_runs.Part) -> dict:
    from recsys_jax import Retriever
    from recsys_jax.eval.scenarios import evaluate_run
    from recsys_jax.train.config import load_config
    from recsys_jax.train.restore import restore_run
    from recsys_jax.train.task import train

    cfg = load_config(UNIFIED_CONFIG, overrides)
    step = demo_runs.checkpoint_step(run_dir)
    verb = f"continuing from step {step}" if step else "training"
    print(f"\n{verb}: unified HSTU ({', '.join(lab.name for lab in cfg.unified.labels)} labels, scenario tower) "
          f"for {cfg.train.steps} steps on the marketplace simulator ({run_dir})", flush=True)
    train(cfg)
    part.lap("training")

    run = restore_run(run_dir, which="latest", overrides=[f"data.cache_dir={cfg.data.cache_dir}"])
    res = evaluate_run(run.task, run.model())
    ks = sorted({min(cfg.eval.ks), max(cfg.eval.ks)})
    print(f"\nper-scenario recall ({res['protocol']} split: {res['users']} users; history "
          f"{'excluded' if res['exclude_history'] else 'kept'}; candidates: {res['pools']}):")
    print(f"  {'scenario':<22}{'examples':>9}" + "".join(f"{'unified@' + str(k):>13}{'popular@' + str(k):>13}"
                                                        for k in ks))
    for name, m in res["scenarios"].items():
        pop = res["popularity"][name]
        print(f"  {name:<22}{m['count']:>9}" + "".join(f"{m[f'recall@{k}']:>13.4f}{pop[f'recall@{k}']:>13.4f}"
                                                       for k in ks))

    r = Retriever.from_checkpoint(run_dir, which="latest")
    ds = run.task.dataset
    rec = ds.sequence(0)
    events = ds.events
    last = slice(-8, None)
    history = [ds.item_map.to_original(i) for i in rec["items"][last]]
    kw = dict(actions=[events["actions"][a] for a in rec["actions"][last]],
              surfaces=[events["surfaces"][s] for s in rec["surfaces"][last]])
    items, _ = r.recommend(history, [int(t) for t in rec["timestamps"][last]], k=5, scenario=("conversion", "home"),
                           **kw)
    print("\nuser 0's last events:", ", ".join(f"{a}@{s}" for a, s in zip(kw["actions"], kw["surfaces"])))
    print("conversion:home ads: ", ", ".join(items))
    part.lap("evaluation")
    return {"step": run.step, "protocol": res["protocol"], "exclude_history": res["exclude_history"],
            **{f"recall@{k}": {n: m[f"recall@{k}"] for n, m in res["scenarios"].items()} for k in ks},
            **{f"popularity_recall@{k}": {n: m[f"recall@{k}"] for n, m in res["popularity"].items()} for k in ks}}


def _train_and_report(run_dir: str, overrides: list[str], part: demo_runs.Part) -> dict:
    from recsys_jax import Retriever
    from recsys_jax.eval.baselines import evaluate_most_popular
    from recsys_jax.train.config import load_config
    from recsys_jax.train.restore import restore_run
    from recsys_jax.train.task import train

    cfg = load_config(CONFIG if os.path.isfile(CONFIG) else None, overrides)  # the defaults are the same run
    step = demo_runs.checkpoint_step(run_dir)
    verb = f"continuing from step {step}" if step else "training"
    print(f"{verb}: {cfg.model.name} for {cfg.train.steps} steps on the synthetic data ({run_dir})", flush=True)
    train(cfg)
    part.lap("training")

    run = restore_run(run_dir, which="auto", eval_split="test", overrides=[f"data.cache_dir={cfg.data.cache_dir}"])
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

    r = Retriever.from_checkpoint(run_dir)
    ds = run.task.dataset
    rec = ds.sequence(0)
    history = [ds.item_map.to_original(i) for i in rec["items"][-5:]]
    items, scores = r.recommend(history, [int(t) for t in rec["timestamps"][-5:]], k=5)
    print("\nuser 0 recently:", "; ".join(r.item_info(h)["title"] for h in history))
    print("recommended:    ", "; ".join(f"{r.item_info(i)['title']} ({s:.2f})" for i, s in zip(items, scores)))
    part.lap("evaluation")
    return {"model": cfg.model.name, "step": run.step, "exclude_history": e.exclude_history,
            "test": {n: round(model[n], 4) for n in names}, "most_popular": {n: round(pop[n], 4) for n in names}}


if __name__ == "__main__":
    sys.exit(main())
