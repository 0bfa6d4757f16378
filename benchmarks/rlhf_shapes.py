"""Issue 13's comparison: from a Shapes base, equal wall-clock for continued supervised training (the control),
Diffusion-DPO on checker-labelled pairs collected from the base, and multi-reward policy gradient; then one
evaluation of every model on the same prompts and starting noise. Prints JSON lines.

    # each arm alone, or side by side in separate processes (same --work-dir), --minutes of wall time each:
    python benchmarks/rlhf_shapes.py --base RUN --work-dir W --arm control --minutes 60
    python benchmarks/rlhf_shapes.py --base RUN --work-dir W --arm dpo --minutes 60   # collection counts
    python benchmarks/rlhf_shapes.py --base RUN --work-dir W --arm pg --minutes 60
    python benchmarks/rlhf_shapes.py --base RUN --work-dir W --eval                   # every arm found in W

Arms (each writes ``W/<arm>.json``: start time, settings, the training summary):

* ``control``: the base run folder copied to ``W/control`` and resumed (same schedule, optimizer state, data
  order), so it is the base trained on for the same wall time;
* ``dpo``: ``canvas-jax rl collect`` of the base on the train prompts (``--per-prompt`` candidates each, checker
  partial credit, all pairs with a score gap, 10% of the prompts as the pairs' test split), then
  ``configs/canvas/dpo_shapes.yaml`` on those pairs for the rest of the time;
* ``pg``: ``configs/canvas/rl_shapes.yaml`` (checker + 0.1 x diversity) for the whole time;
* ``dpo_learned``: the human-label path, simulated: waits for the ``dpo`` arm's candidates and checker pairs (its
  clock runs meanwhile, as if it had collected them), trains ``configs/canvas/reward_model_shapes.yaml`` on the
  pairs' train split (``--rm-minutes``; held-out pair accuracy on the test split), scores every candidate with
  it, writes the pairs it prefers as a people-style ``pairs.jsonl`` (prompt, chosen path, rejected path), builds
  them with ``canvas-jax data build --kind preferences``' builder and runs the same DPO on them.

``--eval``: for the base and each arm's last checkpoint, strict adherence, checker partial credit and the
diversity reward (mean pixel-feature distance among each prompt's samples) on the 64 held-out and 64 seen scene
prompts of ``canvas-jax eval shapes`` (a held-out prompt holds the held-out colour/shape pair, which no train
prompt holds) x ``--eval-per-prompt`` seeds, at 20 DPM-Solver++(2M) steps (guidance 3), the same starting noise
for every model; the held-out prompts also with the policy-gradient sampler (DDIM, eta 1, 10 steps); training
curves (rewards, DPO implicit accuracy); held-out adherence over time (intermediate checkpoints, 64 prompts x 2
seeds, minutes from the arm's start); and a before/after grid (``W/grid.png``). Scene prompts (1-3 shapes), not
single shapes: a 20-minute base already draws single shapes right (99.6% checker credit; BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from canvas_jax import Pipeline  # noqa: E402
from canvas_jax.config import CanvasTrainConfig  # noqa: E402
from canvas_jax.eval.sampling import SamplingOptions, generate  # noqa: E402
from canvas_jax.eval.shapes_eval import shapes_config_for, shapes_prompts  # noqa: E402
from canvas_jax.rl.rewards import CheckerReward, DiversityReward  # noqa: E402
from canvas_jax.runs import pipeline_components, restore_run  # noqa: E402
from canvas_jax.train.run import train  # noqa: E402
from core_jax import config as config_lib  # noqa: E402
from core_jax.loop import time_limit_hook  # noqa: E402

ARMS = ("control", "dpo", "pg", "dpo_learned")
CONFIGS = {"dpo": "dpo_shapes.yaml", "pg": "rl_shapes.yaml", "rm": "reward_model_shapes.yaml"}


def emit(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _train(cfg, start: float, seconds: float) -> dict:
    """Train ``cfg`` until ``seconds`` after ``start`` (a ``time.time()``): everything before the first step
    (collection, model loading, compilation) counts."""
    hook = time_limit_hook(seconds)
    t0 = time.time()
    hook.fn.start = time.monotonic() - (t0 - start)
    state, metrics = train(cfg, extra_hooks=[hook])
    return {"train_steps": int(np.asarray(state["step"])), "train_seconds": round(time.time() - t0, 1),
            "stopped_by_time_limit": hook.fn.stopped, "last_metrics": {k: float(v) for k, v in metrics.items()}}


def _config(name: str, overrides: list[str]) -> CanvasTrainConfig:
    return config_lib.load(CanvasTrainConfig, os.path.join(ROOT, "configs", "canvas", CONFIGS[name]), overrides)


def prompt_sets(base: str, n_train: int) -> dict[str, list[str]]:
    """Scene prompts (one to three shapes, like the training captions): ``heldout`` and ``seen`` for the eval (64
    each, those of ``canvas-jax eval shapes``), ``train`` for collection and PG (``n_train`` seen scenes, none of
    them an eval prompt, none holding the held-out pair)."""
    scfg = shapes_config_for(base, 32)
    held = shapes_prompts(64, scfg, heldout=True, seed=0)
    seen = shapes_prompts(64, scfg, seed=0)
    train = [p for p in dict.fromkeys(shapes_prompts(n_train + 128, scfg, seed=1)) if p not in set(seen)][:n_train]
    return {"heldout": held, "seen": seen, "train": train}


def _prompt_file(work: Path, name: str, prompts: list[str]) -> str:
    path = work / f"prompts_{name}.txt"
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text("\n".join(prompts) + "\n")
    os.replace(tmp, path)
    return str(path)


def run_arm(args) -> dict:
    work, start = Path(args.work_dir), time.time()
    work.mkdir(parents=True, exist_ok=True)
    run_dir = work / args.arm
    if run_dir.exists():
        raise FileExistsError(f"{run_dir} exists; an arm runs once per work dir")
    record = {"arm": args.arm, "base": args.base, "start": start, "minutes": args.minutes}
    (work / f"{args.arm}.json").write_text(json.dumps(record))
    keep = ["train.progress=false", "train.checkpoint.keep=1000", *args.set]
    if args.arm == "control":
        shutil.copytree(args.base, run_dir)
        cfg = config_lib.load(CanvasTrainConfig, run_dir / "config.yaml",
                              [f"train.run_dir={run_dir}", f"train.checkpoint.every={args.control_every}", *keep])
    elif args.arm == "dpo":
        from canvas_jax.rl.collect import CollectConfig, collect
        from canvas_jax.rl.rewards import parse_rewards

        prompts = prompt_sets(args.base, args.train_prompts)["train"]
        pipe = Pipeline.from_pretrained(args.base)
        ccfg = CollectConfig(per_prompt=args.per_prompt, test_fraction=0.1, seed=1000)
        record["collect"] = collect(pipe, prompts, parse_rewards("checker"), work / "dpo_pairs", ccfg,
                                    model=args.base)
        record["collect_seconds"] = round(time.time() - start, 1)
        (work / "dpo.json").write_text(json.dumps(record))  # the dpo_learned arm waits for this
        del pipe
        cfg = _config("dpo", [f"init_from={args.base}", f"data.dataset={record['collect']['dataset']}",
                              f"train.run_dir={run_dir}", "train.steps=100000",
                              f"train.checkpoint.every={args.dpo_every}", *keep])
    elif args.arm == "dpo_learned":
        dataset = learned_pairs(args, work, record)
        cfg = _config("dpo", [f"init_from={args.base}", f"data.dataset={dataset}", f"train.run_dir={run_dir}",
                              "train.steps=100000", f"train.checkpoint.every={args.dpo_every}", *keep])
    else:
        sets = prompt_sets(args.base, args.train_prompts)
        cfg = _config("pg", [f"init_from={args.base}", f"data.dir={args.data_dir}", f"train.run_dir={run_dir}",
                             f"rl.train_prompts={_prompt_file(work, 'train', sets['train'])}",
                             f"rl.eval_prompts={_prompt_file(work, 'heldout', sets['heldout'])}",
                             "train.steps=100000", f"train.checkpoint.every={args.pg_every}",
                             f"train.eval_every={args.pg_every}", *keep])
    record.update(_train(cfg, start, args.minutes * 60))
    record["wall_seconds"] = round(time.time() - start, 1)
    (work / f"{args.arm}.json").write_text(json.dumps(record))
    return record


def learned_pairs(args, work: Path, record: dict) -> str:
    """The ``dpo_learned`` arm's preference dataset (see the module docstring)."""
    from canvas_jax.data.preferences import build_preferences
    from canvas_jax.rl.collect import pair_indices
    from canvas_jax.rl.reward_model import load_reward_model

    pairs_dir = work / "dpo_pairs"
    while not (pairs_dir / "data").is_dir() or not (work / "dpo.json").is_file() or \
            "collect" not in json.loads((work / "dpo.json").read_text()):
        time.sleep(10)
    collected = json.loads((work / "dpo.json").read_text())["collect"]
    rm_dir = work / "reward_model"
    cfg = _config("rm", [f"data.dataset={collected['dataset']}", f"train.run_dir={rm_dir}", "train.progress=false",
                         *args.set])
    record["reward_model"] = _train(cfg, time.time(), args.rm_minutes * 60)
    reward = load_reward_model(rm_dir)
    cands = [json.loads(line) for line in (pairs_dir / "candidates.jsonl").read_text().splitlines()]
    images = np.stack([np.asarray(Image.open(pairs_dir / c["file"]).convert("RGB")) for c in cands])
    learned = np.concatenate([reward(images[i:i + 256], [c["prompt"] for c in cands[i:i + 256]])
                              for i in range(0, len(cands), 256)])
    checker_pairs = [json.loads(line) for line in (pairs_dir / "pairs.jsonl").read_text().splitlines()]
    test = {pair["prompt"] for pair in checker_pairs if pair.get("split") == "test"}
    by_prompt: dict[str, list[int]] = {}
    for i, c in enumerate(cands):
        by_prompt.setdefault(c["prompt"], []).append(i)
    lines, agree = [], {"all": [], "test": []}
    for prompt, rows in by_prompt.items():
        checker = np.asarray([cands[r]["score"] for r in rows])
        for a, b in pair_indices(learned[rows]):
            ra, rb = rows[a], rows[b]
            lines.append(json.dumps({"prompt": prompt, "chosen": str(pairs_dir / cands[ra]["file"]),
                                     "rejected": str(pairs_dir / cands[rb]["file"]),
                                     **({"split": "test"} if prompt in test else {})}))
            if checker[a] != checker[b]:  # the checker's verdict on a pair the learned model ordered
                same = bool((checker[a] > checker[b]) == (learned[ra] > learned[rb]))
                agree["all"].append(same)
                if prompt in test:
                    agree["test"].append(same)
    src = work / "learned_pairs.jsonl"
    src.write_text("\n".join(lines) + "\n")
    dataset, _ = build_preferences(src, work / "learned_data", name="preferences", verbose=False)
    # the reward model's pair accuracy against the checker: on every pair, and on the test prompts' pairs (held out
    # from its training: its held-out pair accuracy)
    record["learned_pairs"] = {"pairs": len(lines), **{f"{k}_pair_acc": float(np.mean(v)) if v else None
                                                       for k, v in {"all": agree["all"],
                                                                    "heldout": agree["test"]}.items()},
                               "rm_seconds": round(time.time() - record["start"], 1)}
    return dataset


# ---------------------------------------------------------------------------------------------- evaluation
def _generate(pipe, prompts: list[str], *, sampler: str, num_steps: int, eta: float = 0.0) -> np.ndarray:
    """uint8 32 px images, image ``i`` from the starting noise of index ``i`` (the same for every model)."""
    opts = SamplingOptions(sampler=sampler, num_steps=num_steps, guidance_scale=3.0, seed=13, batch_size=64, eta=eta)
    return generate(pipe, prompts, opts, size=32)


def score(images: np.ndarray, prompts: list[str]) -> dict:
    return {"adherence": float(CheckerReward(strict=True)(images, prompts).mean()),
            "partial_credit": float(CheckerReward()(images, prompts).mean()),
            "diversity": float(DiversityReward()(images, prompts).mean()), "n": len(prompts)}


def _pipe(run: str, step: int | None = None) -> Pipeline:
    if step is None:
        return Pipeline.from_pretrained(run)
    return Pipeline(pipeline_components(restore_run(run, step=step)))


def _steps(run: Path) -> list[tuple[int, float]]:
    """(step, checkpoint mtime) of a run's checkpoints."""
    folder = run / "checkpoints"
    return sorted((int(d.name), d.stat().st_mtime) for d in folder.iterdir() if d.name.isdigit())


def evaluate(args) -> None:
    work = Path(args.work_dir)
    models = {"base": args.base, **{a: str(work / a) for a in ARMS if (work / a / "checkpoints").is_dir()}}
    k = args.eval_per_prompt
    sets = {name: [p for p in ps for _ in range(k)] for name, ps in prompt_sets(args.base, 0).items()
            if name != "train"}
    grid_rows = []
    for name, run in models.items():
        t0 = time.time()
        pipe = _pipe(run)
        row = {"eval": "rlhf_shapes", "model": name, "run": run}
        for split, prompts in sets.items():
            images = _generate(pipe, prompts, sampler="dpmpp_2m", num_steps=20)
            row[split] = score(images, prompts)
            if split == "heldout":
                grid_rows.append((name, images[::k][:8]))
        prompts = sets["heldout"]
        row["heldout_ddim_eta1_10"] = score(_generate(pipe, prompts, sampler="ddim", num_steps=10, eta=1.0), prompts)
        if name in ARMS:
            info = json.loads((work / f"{name}.json").read_text())
            row["arm"] = {k: info.get(k) for k in ("minutes", "wall_seconds", "train_steps", "collect_seconds")}
            if "collect" in info:
                row["arm"]["pairs"] = info["collect"]["pairs"]
            if "learned_pairs" in info:
                row["arm"].update(info["learned_pairs"], reward_model=info["reward_model"])
        row["seconds"] = round(time.time() - t0, 1)
        emit(row)
    _grid(grid_rows, work / "grid.png", sets["heldout"][::k][:8])
    for arm in [a for a in ARMS if a in models]:
        training_curves(work / arm, arm, args.curve_points + 2)
    if not args.no_curves:
        curves(args, work, prompt_sets(args.base, 0)["heldout"], [a for a in ARMS if a in models])


CURVE_KEYS = ("reward_total", "reward_checker", "reward_diversity", "kl", "implicit_acc", "reward_margin",
              "dpo_loss", "loss")


def training_curves(run: Path, arm: str, bins: int) -> None:
    """Each logged training metric of ``CURVE_KEYS`` (PG: every reward; DPO: implicit accuracy, margin) averaged
    over ``bins`` equal step ranges, and PG's own held-out evaluations (its sampler) as they were logged."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train_rows = [r for r in rows if r.get("split") == "train"]
    if train_rows:
        edges = np.linspace(train_rows[0]["step"], train_rows[-1]["step"] + 1, bins + 1)
        for lo, hi in zip(edges[:-1], edges[1:]):
            part = [r for r in train_rows if lo <= r["step"] < hi]
            if part:
                emit({"training_curve": arm, "steps": [int(lo), int(hi) - 1], **{
                    k: float(np.mean([r[k] for r in part])) for k in CURVE_KEYS if k in part[0]}})
    for r in rows:
        if r.get("split") == "heldout":
            emit({"pg_heldout_eval": arm, **{k: v for k, v in r.items() if k != "split"}})


def curves(args, work: Path, held: list[str], arms: list[str]) -> None:
    """Held-out adherence (64 prompts x 2 seeds) of each arm's checkpoints, against minutes from its start."""
    prompts = [p for p in held for _ in range(2)]
    for arm in arms:
        start = json.loads((work / f"{arm}.json").read_text())["start"]
        points = [(s, t) for s, t in _steps(work / arm) if t >= start]
        picks = sorted({int(i) for i in np.linspace(0, len(points) - 1, min(args.curve_points, len(points)))})
        for step, mtime in [points[i] for i in picks]:
            images = _generate(_pipe(str(work / arm), step), prompts, sampler="dpmpp_2m", num_steps=20)
            emit({"curve": arm, "step": step, "minutes": round((mtime - start) / 60, 1),
                  "heldout_adherence": float(CheckerReward(strict=True)(images, prompts).mean())})


def _grid(rows: list[tuple[str, np.ndarray]], path: Path, prompts: list[str]) -> None:
    from canvas_jax.images import make_grid

    tiles, captions = [], []
    for name, images in rows:
        for im, p in zip(images, prompts):
            tiles.append(Image.fromarray(im).resize((96, 96), Image.Resampling.NEAREST))
            captions.append(f"{name}: {p.replace('a ', '').replace('at the ', '')}")
    make_grid(tiles, cols=len(prompts), captions=captions).save(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", required=True, help="the weak base: a shapes_tiny text_to_image run folder")
    p.add_argument("--work-dir", required=True)
    p.add_argument("--arm", choices=ARMS)
    p.add_argument("--minutes", type=float, default=60.0, help="wall time of an arm (DPO: collection included)")
    p.add_argument("--eval", action="store_true", help="evaluate the base and every arm in --work-dir")
    p.add_argument("--eval-per-prompt", type=int, default=4, help="samples per eval prompt (seeds)")
    p.add_argument("--no-curves", action="store_true")
    p.add_argument("--curve-points", type=int, default=4)
    p.add_argument("--per-prompt", type=int, default=5, help="DPO: candidates per collected prompt")
    p.add_argument("--train-prompts", type=int, default=600, help="seen scene prompts for collection and PG")
    p.add_argument("--rm-minutes", type=float, default=8.0, help="dpo_learned: reward-model training time")
    p.add_argument("--data-dir", default="out/canvas_data", help="PG: the Shapes data folder (data.dir)")
    p.add_argument("--control-every", type=int, default=200)
    p.add_argument("--dpo-every", type=int, default=300)
    p.add_argument("--pg-every", type=int, default=20)
    p.add_argument("--set", action="append", default=[], help="key=value override of the arm's config")
    args = p.parse_args(argv)
    if args.eval == bool(args.arm):
        p.error("give exactly one of --arm or --eval")
    if args.arm:
        emit(run_arm(args))
    else:
        evaluate(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
