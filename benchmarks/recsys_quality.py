"""recsys_jax quality and speed: one JSON line per (dataset, model).

Quality (default): trains each model with the dataset's config (configs/recsys/<model>_<dataset>.yaml;
two-tower uses the HSTU config with model.name=two_tower), restores the best checkpoint (by
validation NDCG@10) and prints test HR/NDCG@10/50/200 and MRR, train time, steps and train throughput
(sequences/s), plus the most-popular baseline. Each row records the protocol: ``exclude_history`` (the
config's ``eval.exclude_history``) and ``targets_in_history`` (test targets that repeat a history item).
Targets (issue 5): Beauty HSTU HR@10 >= 0.0533 and NDCG@10 >= 0.0327; ML-1M HSTU above SASRec.

    python benchmarks/recsys_quality.py --datasets beauty,ml1m --models hstu,sasrec,two_tower,most_popular \\
        --max-minutes 5                       # cap each model's training time (also --max-steps)

Throughput (``--throughput``): the issue's reference config (ML-1M: D=50, 2 blocks, 1 head, L=200,
batch 128, 128 negatives, temperature 0.05) for HSTU and SASRec: train sequences/s after compilation,
on ML-1M-half when present, else on synthetic sequences of length 200.

    python benchmarks/recsys_quality.py --throughput --steps 30

Data: ``--data-root`` (default ../shared/data/recsys from the project root) holds
amazon-beauty/beauty.txt and ml-1m-half/ratings_users1-2999.dat.gz.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402

from core_jax.metrics import read_jsonl  # noqa: E402
from recsys_jax.data.loader import load_dataset  # noqa: E402
from recsys_jax.eval.baselines import evaluate_most_popular  # noqa: E402
from recsys_jax.eval.evaluate import targets_in_history  # noqa: E402
from recsys_jax.train.config import load_config  # noqa: E402
from recsys_jax.train.dataset_cache import resolve_dataset  # noqa: E402
from recsys_jax.train.restore import restore_run  # noqa: E402
from core_jax.loop import time_limit_hook  # noqa: E402
from recsys_jax.train.task import train  # noqa: E402

DATASETS = {
    "beauty": ("amazon-beauty/beauty.txt", "beauty"),
    "ml1m": ("ml-1m-half/ratings_users1-2999.dat.gz", "ml1m"),
    "ml100k": ("ml-100k/ml-100k.inter", "ml100k"),
}
MODELS = ("hstu", "sasrec", "two_tower", "most_popular")


def _config_path(model: str, dataset: str) -> str:
    name = "sasrec" if model == "sasrec" else "hstu"
    return os.path.join(ROOT, "configs", "recsys", f"{name}_{DATASETS[dataset][1]}.yaml")


def _throughput(run_dir: str, skip_first: int = 1) -> float | None:
    """Median logged examples/s (the first log interval, and intervals holding an eval, are noisy)."""
    path = os.path.join(run_dir, "metrics.jsonl")
    if not os.path.exists(path):
        return None
    rows = read_jsonl(path, "train")[skip_first:]
    values = [r["examples_per_s"] for r in rows if "examples_per_s" in r]
    return statistics.median(values) if values else None


def _measured_rate(rows: list[dict], after: int, batch: int) -> float | None:
    """Sequences/s over the logged intervals after step ``after`` (total examples / total time)."""
    examples = seconds = 0.0
    prev = None
    for r in rows:
        if prev is not None and prev >= after and r.get("examples_per_s"):
            n = (r["step"] - prev) * batch
            examples += n
            seconds += n / r["examples_per_s"]
        prev = r["step"]
    return examples / seconds if seconds else None


def _emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def quality(args) -> None:
    for dataset in args.datasets:
        rel, _ = DATASETS[dataset]
        data_file = os.path.join(args.data_root, rel)
        if not os.path.isfile(data_file):
            _emit({"dataset": dataset, "skipped": f"{data_file} not found (see --data-root)"})
            continue
        for model in args.models:
            base = [f"data.build.input={data_file}", f"data.cache_dir={args.cache_dir}", "train.progress=false",
                    "train.tensorboard=false"]
            if model == "most_popular":
                cfg = load_config(_config_path("hstu", dataset), base)
                ds = load_dataset(resolve_dataset(cfg.data, verbose=False))
                m = evaluate_most_popular(ds, "test", batch_size=cfg.eval.batch_size, ks=cfg.eval.ks,
                                          exclude_history=cfg.eval.exclude_history)
                _emit({"dataset": dataset, "model": model, "users": m.pop("count"), **m,
                       "exclude_history": cfg.eval.exclude_history})
                continue
            run_dir = os.path.join(args.out, f"{dataset}-{model}")
            if not args.resume:
                shutil.rmtree(run_dir, ignore_errors=True)
            overrides = [*base, f"train.run_dir={run_dir}", f"model.name={model}",
                         *(["data.pack_rows=0"] if model == "two_tower" else []), *args.override]  # no packed rows
            if args.max_steps:
                overrides.append(f"train.steps={args.max_steps}")
            cfg = load_config(_config_path(model, dataset), overrides)
            hooks = [time_limit_hook(args.max_minutes * 60)] if args.max_minutes else []
            t0 = time.perf_counter()
            state, last = train(cfg, hooks=hooks)
            train_time = time.perf_counter() - t0
            steps = int(jax.device_get(state["step"]))
            run = restore_run(run_dir, which="auto", eval_split="test",
                              overrides=[f"data.cache_dir={args.cache_dir}"])
            run.cfg.train.eval_batches = 0
            m = run.trainer.evaluate(run.state)
            best = json.load(open(os.path.join(run_dir, "best.json"))) if os.path.exists(
                os.path.join(run_dir, "best.json")) else {}
            _emit({"dataset": dataset, "model": model, "split": "test", **m,
                   "checkpoint": run.which, "best_step": run.step, "best_val": best.get("value"),
                   "train_steps": steps, "epochs": round(steps * cfg.train.batch_size / max(
                       len(run.task.dataset.split_source("train")), 1), 1),
                   "train_time_s": round(train_time, 1), "train_sequences_per_s": _throughput(run_dir),
                   "batch_size": cfg.train.batch_size, "max_len": cfg.data.max_len,
                   "exclude_history": run.cfg.eval.exclude_history,
                   "targets_in_history": round(targets_in_history(run.task.dataset, "test"), 6),
                   "config": os.path.relpath(_config_path(model, dataset), ROOT), "device": jax.devices()[0].platform})


def throughput(args) -> None:
    ml1m = os.path.join(args.data_root, DATASETS["ml1m"][0])
    if os.path.isfile(ml1m):
        data = [f"data.build.input={ml1m}"]
        where = "ml1m-half"
    else:  # synthetic sequences long enough to fill L=200
        data = ["data.build.format=synthetic", "data.build.input=null",
                "data.build.synthetic.num_users=1000", "data.build.synthetic.num_items=3000",
                "data.build.synthetic.min_len=210", "data.build.synthetic.max_len=400"]
        where = "synthetic-L200"
    for model in args.models:
        if model not in ("hstu", "sasrec"):
            continue
        run_dir = os.path.join(args.out, f"throughput-{model}")
        shutil.rmtree(run_dir, ignore_errors=True)
        warm = 3
        cfg = load_config(os.path.join(ROOT, "configs", "recsys", "hstu_ml1m.yaml"), [
            *data, f"data.cache_dir={args.cache_dir}", f"model.name={model}", f"train.run_dir={run_dir}",
            f"train.steps={warm + args.steps}", f"train.log_every={warm}", "train.eval_every=0",
            "train.best_metric=null", "train.checkpoint.every=0", "train.progress=false", "train.tensorboard=false",
            "train.batch_size=128", "loss.num_negatives=128", "loss.temperature=0.05", "data.max_len=200",
            "train.eval_batches=1", *args.override])
        t0 = time.perf_counter()
        train(cfg)
        rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"), "train")
        # rows: after step `warm` (compile excluded, warm-up steps), then the measured steps
        seq_s = _measured_rate([r for r in rows], after=warm, batch=cfg.train.batch_size)
        _emit({"mode": "throughput", "model": model, "data": where, "embed_dim": 50, "blocks": 2, "heads": 1,
               "seq_len": 200, "batch_size": 128, "negatives": 128, "measured_steps": args.steps,
               "train_sequences_per_s": round(seq_s, 1) if seq_s else None,
               "seconds_per_step": round(128 / seq_s, 3) if seq_s else None,
               "total_time_s": round(time.perf_counter() - t0, 1), "device": jax.devices()[0].platform,
               "cpu_count": os.cpu_count()})


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="beauty,ml1m", help=f"comma-separated: {','.join(DATASETS)}")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated: {','.join(MODELS)}")
    p.add_argument("--data-root", default=os.path.join(ROOT, "..", "shared", "data", "recsys"))
    p.add_argument("--out", default=os.path.join(ROOT, "out", "bench", "recsys"), help="run folders")
    p.add_argument("--cache-dir", default=os.path.join(ROOT, "out", "recsys_data"), help="built datasets")
    p.add_argument("--max-steps", type=int, default=0, help="cap train.steps (0: the config's)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="cap each model's training wall time")
    p.add_argument("--resume", action="store_true", help="continue existing runs instead of starting fresh")
    p.add_argument("--throughput", action="store_true", help="measure train sequences/s on the reference config")
    p.add_argument("--steps", type=int, default=20, help="throughput mode: measured steps")
    p.add_argument("--override", action="append", default=[], help="extra config override (repeatable)")
    args = p.parse_args(argv)
    args.datasets = [d for d in args.datasets.split(",") if d]
    args.models = [m for m in args.models.split(",") if m]
    for d in args.datasets:
        if d not in DATASETS:
            p.error(f"unknown dataset {d!r}; expected {list(DATASETS)}")
    for m in args.models:
        if m not in MODELS:
            p.error(f"unknown model {m!r}; expected {list(MODELS)}")
    (throughput if args.throughput else quality)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
