"""Issue 14 (unified, scenario-adaptive retrieval) targets: one comparison per call, JSON lines on stdout.

``compare``: trains each variant of one unified config at the same budget (same steps, batch, data,
split) and prints its per-scenario metrics (``recsys-jax eval``'s ``scenarios``) plus the per-scenario
popularity baseline. Variants (the README's baselines, as config overrides):

* ``unified``: the config as shipped;
* ``ads_only``: ``unified.label_weights.<organic label>=0`` (the labels whose pool is not ``ads``);
* ``ads_data``: ``ads_only`` and the organic labels' actions dropped from the data (``data.build.drop_actions``):
  a model that reads and learns ad events only (not the issue's baseline: it tells what organic data gives as
  input; its test users are those with an ad event before T, so compare on them with ``same_users``);
* ``per_label``: one run per label, the other labels' weights 0 (``per_label:<label>`` rows);
* ``two_tower``: ``model.name=two_tower unified.scenario_tower=false data.pack_rows=0``.

    python benchmarks/unified_targets.py compare --config configs/recsys/unified_tiny.yaml \\
        --variants unified,ads_only,per_label,two_tower [--override train.steps=400 ...]

``targets``: the simulator targets from ``compare`` output (one or more JSON-lines files with the ``unified``,
``ads_only`` and ``per_label:*`` rows): per surface, the unified model's conversion recall@k over the ads-only
model's (target >= 1.2) and over the best per-label model's (>= 1), and its organic recall against the organic
label's per-label model (within 5%).

    python benchmarks/unified_targets.py targets out/sim/compare.jsonl [--k 100]

``repeat``: a baseline with no model, per scenario of a unified config's split: the items of the user's own history
(every event before the test target, within the scenario's candidate pool) ranked by how often they occur there,
then the rest by popularity (the scenario's training targets); its recall@k beside popularity's, computed the same
way (grocery baskets repeat: on completejourney this is the bar a retrieval model has to clear).

    python benchmarks/unified_targets.py repeat --config configs/recsys/unified_completejourney.yaml

``same_users``: one run's per-scenario metrics on the users that have a scenario's test example in another run
over the same interactions (ML-1M: the "like"-only input evaluated on the users whose last event is a like, the
test users of the both-behaviour run), so that two inputs are compared on the same targets.

    python benchmarks/unified_targets.py same_users --run RUN_LIKE_ONLY --users-of RUN_BOTH --scenario like:unknown

``throughput``: train sequences/s of plain HSTU (configs/recsys/hstu_ml1m.yaml) and the unified model
(configs/recsys/unified_ml1m.yaml: the same sizes, L=200, batch 128, 128 negatives per label, action
embeddings and the scenario tower) on ML-1M-half, alternating ``--rounds`` times in one process (the
machine is shared: the ratio of medians is the number to read). Target: ratio >= 0.8.

    python benchmarks/unified_targets.py throughput --steps 20 --rounds 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from core_jax.metrics import read_jsonl  # noqa: E402
from recsys_jax.data.attribution import parse_window  # noqa: E402
from recsys_jax.eval.scenarios import evaluate_run, scenario_examples  # noqa: E402
from recsys_jax.train.config import load_config  # noqa: E402
from recsys_jax.train.restore import restore_run  # noqa: E402
from recsys_jax.train.task import make_task, train  # noqa: E402

ML1M = os.path.join(ROOT, "..", "shared", "data", "recsys", "ml-1m-half", "ratings_users1-2999.dat.gz")
QUIET = ["train.progress=false", "train.tensorboard=false"]


def _variants(cfg, names: list[str]) -> list[tuple[str, list[str]]]:
    labels = [(lab.name, lab.pool) for lab in cfg.unified.labels]
    out = []
    for name in names:
        if name == "unified":
            out.append((name, []))
        elif name == "ads_only":
            out.append((name, [f"unified.label_weights.{n}=0" for n, pool in labels if pool != "ads"]))
        elif name == "ads_data":
            ad_actions = {a for lab in cfg.unified.labels if lab.pool == "ads" for a in lab.actions}
            organic = {a for lab in cfg.unified.labels if lab.pool != "ads" for a in lab.actions} - ad_actions
            drop = ",".join(sorted(organic | set(cfg.data.build.drop_actions)))
            out.append((name, [f"unified.label_weights.{n}=0" for n, pool in labels if pool != "ads"]
                        + [f"data.build.drop_actions=[{drop}]"]))
        elif name == "per_label":
            out += [(f"per_label:{n}", [f"unified.label_weights.{o}=0" for o, _ in labels if o != n]) for n, _ in labels]
        elif name == "two_tower":
            out.append((name, ["model.name=two_tower", "unified.scenario_tower=false", "data.pack_rows=0"]))
        else:
            raise SystemExit(f"unknown variant {name!r}: expected unified, ads_only, ads_data, per_label, two_tower")
    return out


def compare(args) -> None:
    base = load_config(args.config, args.override)
    for name, extra in _variants(base, args.variants):
        run_dir = os.path.join(args.out, name.replace(":", "_"))
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = load_config(args.config, [*args.override, *extra, f"train.run_dir={run_dir}", *QUIET])
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            train(cfg)
            seconds = time.perf_counter() - t0
            run = restore_run(run_dir, which="latest", eval_split="test")
            res = evaluate_run(run.task, run.model(), split="test")
        last = read_jsonl(os.path.join(run_dir, "metrics.jsonl"), "train")[-1]
        print(json.dumps({"mode": "compare", "config": args.config, "variant": name, "overrides": [*args.override, *extra],
                          "steps": cfg.train.steps, "batch_size": cfg.train.batch_size,
                          "train_seconds": round(seconds, 1), "final_loss": last.get("loss"),
                          **{k: res[k] for k in ("protocol", "exclude_history", "users", "scenarios", "popularity")}}),
              flush=True)


def _rate(run_dir: str, warm: int, batch: int) -> float:
    rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"), "train")
    examples = seconds = 0.0
    for prev, r in zip(rows, rows[1:]):
        if prev["step"] >= warm and r.get("examples_per_s"):
            n = (r["step"] - prev["step"]) * batch
            examples += n
            seconds += n / r["examples_per_s"]
    return examples / seconds


def throughput(args) -> None:
    warm, rates = 3, {"hstu": [], "unified": []}
    common = [f"data.build.input={args.ml1m}", "data.max_len=200", "train.batch_size=128", f"train.steps={warm + args.steps}",
              f"train.log_every={warm}", "train.eval_every=0", "train.best_metric=null", "train.checkpoint.every=0", *QUIET]
    configs = {"hstu": "hstu_ml1m.yaml", "unified": "unified_ml1m.yaml"}
    for _ in range(args.rounds):
        for name, file in configs.items():
            run_dir = os.path.join(args.out, f"throughput-{name}")
            shutil.rmtree(run_dir, ignore_errors=True)
            cfg = load_config(os.path.join(ROOT, "configs", "recsys", file), [*common, f"train.run_dir={run_dir}"])
            with contextlib.redirect_stdout(sys.stderr):
                train(cfg)
            rates[name].append(_rate(run_dir, warm, 128))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(json.dumps({"mode": "throughput", "seq_len": 200, "batch_size": 128, "measured_steps": args.steps,
                      "rounds": args.rounds, "sequences_per_s": {k: [round(x, 1) for x in v] for k, v in rates.items()},
                      "ratio_unified_over_hstu": round(med["unified"] / med["hstu"], 3), "target": 0.8,
                      "cpu_count": os.cpu_count()}), flush=True)


def same_users(args) -> None:
    """``--run``'s scenario metrics on the users that have ``--scenario``'s test example in ``--users-of`` (another
    run over the same interactions, e.g. with more behaviours in the input), so two inputs are compared on the same
    targets; popularity is counted on those users' training events."""
    both, run = (restore_run(d, which="latest", eval_split="test") for d in (args.users_of, args.run))
    label, _, surface = args.scenario.partition(":")
    surfaces = both.task.dataset.events["surfaces"]
    if label not in both.task.labels.names or surface not in surfaces:
        raise SystemExit(f"--scenario {args.scenario!r}: no test example in {args.users_of} (labels "
                         f"{list(both.task.labels.names)}, surfaces {surfaces})")
    mine = scenario_rows(both.task, (both.task.labels.code(label), surfaces.index(surface)))
    original = [both.task.dataset.user_map.to_original(int(u)) for u in mine]
    ds = run.task.dataset
    records = [ds.sequence(ds.user_map.to_dense(u)) for u in original]
    res = evaluate_run(run.task, run.model(), records=records)
    print(json.dumps({"mode": "same_users", "run": args.run, "users_of": args.users_of, "scenario": args.scenario,
                      "users": len(records), "scenarios": res["scenarios"], "popularity": res["popularity"]}),
          flush=True)


def targets(args) -> None:
    rows = {}
    for path in args.files:
        with open(path) as f:
            rows.update({r["variant"]: r for r in map(json.loads, filter(str.strip, f)) if r.get("mode") == "compare"})
    need = {"unified", "ads_only"} - set(rows)
    per_label = {v: r for v, r in rows.items() if v.startswith("per_label:")}
    if need or not per_label:
        raise SystemExit(f"targets: the compare rows lack {sorted(need) or 'any per_label:* variant'} "
                         f"(found {sorted(rows)})")
    metric = f"recall@{args.k}"

    def at(variant, scenario):
        return rows[variant]["scenarios"].get(scenario, {}).get(metric)

    out = {}
    for scenario in sorted(rows["unified"]["scenarios"]):
        label, _, surface = scenario.partition(":")
        mine, entry = at("unified", scenario), {}
        if label == args.conversion_label:
            best_name = max(per_label, key=lambda v: at(v, scenario) or 0.0)
            entry = {"unified": mine, "ads_only": at("ads_only", scenario), "best_per_label": best_name,
                     "best_per_label_value": at(best_name, scenario)}
            entry["ratio_over_ads_only"] = round(mine / entry["ads_only"], 3)
            entry["ratio_over_best_per_label"] = round(mine / entry["best_per_label_value"], 3)
            entry["met"] = entry["ratio_over_ads_only"] >= 1.2 and entry["ratio_over_best_per_label"] >= 1.0
        elif f"per_label:{label}" in per_label and label == args.organic_label:
            own = at(f"per_label:{label}", scenario)
            entry = {"unified": mine, "per_label": own, "relative": round(mine / own - 1.0, 4),
                     "met": mine >= 0.95 * own}
        if entry:
            out[scenario] = entry
    print(json.dumps({"mode": "targets", "metric": metric, "scenarios": out,
                      "all_met": all(e["met"] for e in out.values())}), flush=True)


def repeat(args) -> None:
    cfg = load_config(args.config, [*args.override, "train.run_dir=" + os.path.join(args.out, "repeat")])
    task = make_task(cfg)
    ds, sp = task.dataset, cfg.unified.split
    ex = scenario_examples(ds.source, task.labels, num_surfaces=len(ds.events["surfaces"]), num_items=task.num_items,
                           max_len=cfg.data.max_len, protocol=sp.protocol, cutoff=task.cutoff,
                           window=parse_window(sp.window) if sp.protocol == "time" else None, padding=cfg.data.padding)
    ks, out = sorted(cfg.eval.ks), {}
    for (lab, surf), (rows, relevant) in ex.targets.items():
        pool = task.labels.pool[lab]
        pop = np.where(pool, ex.train_counts[lab, surf].astype(np.float64), -1.0)
        pop_score = pop / (pop.max() + 1.0)  # < 1: breaks ties among items seen equally often, never outranks one
        top_pop = np.argsort(-pop, kind="stable")[: max(ks)]
        sums = {f"{name}@{k}": 0.0 for name in ("repeat", "popularity") for k in ks}
        for r, rel in zip(rows, relevant):
            own = np.bincount(ex.history[r], minlength=len(pool)).astype(np.float64)
            own[0] = 0.0
            score = np.where(pool, own + pop_score, -np.inf)
            top = np.argsort(-score, kind="stable")[: max(ks)]
            rel = np.asarray(rel)
            for k in ks:
                sums[f"repeat@{k}"] += np.isin(rel, top[:k]).mean()
                sums[f"popularity@{k}"] += np.isin(rel, top_pop[:k]).mean()
        name = f"{task.labels.names[lab]}:{ds.events['surfaces'][surf]}"
        out[name] = {"count": len(rows), **{k: round(v / len(rows), 6) for k, v in sums.items()}}
    print(json.dumps({"mode": "repeat", "config": args.config, "overrides": args.override, "metric": "recall",
                      "exclude_history": False, "scenarios": out}), flush=True)


def scenario_rows(task, key) -> list[int]:
    """Dense user ids of ``task``'s run with a test example in scenario ``key`` ((label, surface) codes)."""
    cfg, ds, sp = task.cfg, task.dataset, task.cfg.unified.split
    ex = scenario_examples(ds.source, task.labels, num_surfaces=len(ds.events["surfaces"]), num_items=task.num_items,
                           max_len=cfg.data.max_len, protocol=sp.protocol, cutoff=task.cutoff,
                           window=parse_window(sp.window) if sp.protocol == "time" else None, padding=cfg.data.padding)
    if key not in ex.targets:
        raise SystemExit(f"scenario {key}: no test example in {cfg.train.run_dir}")
    return [int(ex.users[r]) for r in ex.targets[key][0]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="mode", required=True)
    c = sub.add_parser("compare")
    c.add_argument("--config", default=os.path.join(ROOT, "configs", "recsys", "unified_tiny.yaml"))
    c.add_argument("--variants", default="unified,ads_only,per_label,two_tower")
    c.add_argument("--override", action="append", default=[], help="config override for every variant (repeatable)")
    u = sub.add_parser("same_users")
    u.add_argument("--run", required=True, help="the run to evaluate (e.g. like-only input)")
    u.add_argument("--users-of", required=True, help="the run whose scenario test users are kept")
    u.add_argument("--scenario", default="like:unknown")
    r = sub.add_parser("repeat")
    r.add_argument("--config", default=os.path.join(ROOT, "configs", "recsys", "unified_completejourney.yaml"))
    r.add_argument("--override", action="append", default=[], help="config override (repeatable)")
    g = sub.add_parser("targets")
    g.add_argument("files", nargs="+", help="JSON lines written by `compare`")
    g.add_argument("--k", type=int, default=100)
    g.add_argument("--conversion-label", default="conversion")
    g.add_argument("--organic-label", default="engagement")
    t = sub.add_parser("throughput")
    t.add_argument("--steps", type=int, default=20)
    t.add_argument("--rounds", type=int, default=2)
    t.add_argument("--ml1m", default=ML1M)
    for s in (c, t, r):
        s.add_argument("--out", default=os.path.join(ROOT, "out", "bench", "unified"))
    args = p.parse_args(argv)
    if args.mode == "compare":
        args.variants = [v for v in args.variants.split(",") if v]
        compare(args)
    elif args.mode == "same_users":
        same_users(args)
    elif args.mode == "targets":
        targets(args)
    elif args.mode == "repeat":
        repeat(args)
    else:
        throughput(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
