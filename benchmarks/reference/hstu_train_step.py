"""HSTU training-step throughput, ours against facebookresearch/generative-recommenders, side by side.

One run times both on the SAME batches, one after the other on the same machine:

* ours: ``recsys_jax`` HSTU through the train step ``recsys-jax train`` compiles (``core_jax.loop.Trainer``
  with :class:`recsys_jax.train.task.RecsysTask`: forward, sampled-softmax loss, backward, AdamW update);
* reference: generative-recommenders' research HSTU (``generative_recommenders/research``: the module,
  ``LocalNegativesSampler`` + ``SampledSoftmaxLoss``, AdamW) built as its ``train_fn`` builds it, and its
  training-loop body (``reference_side.py``), run by ``--ref-python`` (a venv with torch + fbgemm-gpu-cpu:
  the ``reference`` extra) from the checkout at ``--gr-path``.

Both get the config's sizes (D, blocks, heads, dqk = dv = D, max length L, dropout, negatives,
temperature, learning rate, weight decay, batch). The batches are ours (``dataset.train_iterator``:
up to L input/target pairs per user; with ``data.pack_rows`` ours are packed, several users a row, and the
reference gets them one a row again); the reference gets each row as its own data format (history of up
to L items, the next item as target, right-padded), so each side trains the same pairs. Known difference:
the reference draws its negatives per position (``[positions, R]`` embeddings gathered), ours one draw
of R shared by the batch (``[R, D]``); both score R negatives at every position.

Prints JSON lines: one per side (``train_sequences_per_s``, ``seconds_per_step``, threads, load average
before the side ran), then ``{"ratio": ours / reference, ...}``. Without ``--gr-path`` the reference
side is skipped with its reason.

    python benchmarks/reference/hstu_train_step.py --gr-path /path/to/generative-recommenders \\
        --ref-python /path/to/refvenv/bin/python --steps 20
    python benchmarks/reference/hstu_train_step.py --dry-run      # tiny config, ours only: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from core_jax import mesh as mesh_lib  # noqa: E402
from core_jax import packing  # noqa: E402
from core_jax.loop import Trainer  # noqa: E402
from recsys_jax.data.loader import load_dataset  # noqa: E402
from recsys_jax.train.config import load_config  # noqa: E402
from recsys_jax.train.dataset_cache import resolve_dataset  # noqa: E402
from recsys_jax.train.task import RecsysTask  # noqa: E402

REFERENCE_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference_side.py")
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "recsys", "ml-1m-half", "ratings_users1-2999.dat.gz")
BATCH_KEYS = ("item_ids", "timestamps", "target_ids", "target_timestamps", "mask")
# the throughput reference config (BENCHMARKS.md): the ML-1M config at batch 128, 128 negatives
REFERENCE_OVERRIDES = ["train.batch_size=128", "loss.num_negatives=128", "loss.temperature=0.05",
                       "loss.in_batch_negatives=false", "data.max_len=200"]
SYNTHETIC_L200 = ["data.build.format=synthetic", "data.build.input=null", "data.build.synthetic.num_users=1000",
                  "data.build.synthetic.num_items=3000", "data.build.synthetic.min_len=210",
                  "data.build.synthetic.max_len=400"]
DRY_RUN = ["data.build.format=synthetic", "data.build.input=null", "data.build.synthetic.num_users=64",
           "data.build.synthetic.num_items=60", "data.build.synthetic.num_categories=4",
           "data.build.synthetic.min_len=6", "data.build.synthetic.max_len=20", "data.build.max_seq_len=20",
           "data.max_len=16", "model.hstu.embed_dim=16", "model.hstu.attention_dim=16", "model.hstu.linear_dim=16",
           "model.hstu.max_seq_len=16", "model.hstu.num_layers=1", "train.batch_size=8", "loss.num_negatives=16",
           "loss.in_batch_negatives=false"]


def load_run_config(args):
    """The config (``--config`` + the reference or dry-run overrides + ``--override``) and its data label."""
    if args.dry_run:
        data, where = DRY_RUN, "synthetic-tiny"
    elif os.path.isfile(args.data):
        data, where = [*REFERENCE_OVERRIDES, f"data.build.input={args.data}"], os.path.basename(args.data)
    else:
        data, where = [*REFERENCE_OVERRIDES, *SYNTHETIC_L200], "synthetic-L200"
    run_dir = os.path.join(args.work_dir, "run")
    cfg = load_config(args.config, [*data, f"data.cache_dir={args.cache_dir or os.path.join(args.work_dir, 'data')}",
                                    f"train.run_dir={run_dir}", "model.name=hstu", "train.eval_every=0",
                                    "train.best_metric=null", "train.checkpoint.every=0", "train.progress=false",
                                    "train.tensorboard=false", "train.grad_accum_steps=1", "train.ema_decay=null",
                                    *args.override])
    return cfg, where


def make_batches(dataset, cfg, count: int) -> list[dict]:
    """``count`` training batches of the run's iterator, as numpy (packed with ``data.pack_rows``)."""
    d = cfg.data
    it = dataset.train_iterator(batch_size=cfg.train.batch_size, max_len=d.max_len, seed=cfg.train.seed,
                                random_windows=d.random_windows, padding=d.padding,
                                length_grouping=d.length_grouping, length_bucket=d.length_bucket,
                                pack_rows=d.pack_rows)
    return [{k: np.asarray(v) for k, v in next(it).items()} for _ in range(count)]


def padded(batch: dict, cfg) -> dict:
    """A packed batch's users one a row again (the reference's input); other batches as they are."""
    if packing.SEGMENT_IDS not in batch:
        return batch
    return packing.unpack_sequences(batch, cfg.train.batch_size, max_len=cfg.data.max_len, padding=cfg.data.padding)


def _side_row(side: str, times: list[float], batch: int, **extra) -> dict:
    total = sum(times)
    return {"side": side, "measured_steps": len(times), "seconds_per_step": round(total / len(times), 4),
            "median_step_s": round(statistics.median(times), 4),
            "train_sequences_per_s": round(batch * len(times) / total, 2), **extra}


def time_ours(cfg, dataset, batches: list[dict], warmup: int) -> dict:
    """Our train step (the one ``Trainer.fit`` compiles) on ``batches``; the first ``warmup`` untimed."""
    load = os.getloadavg()[0]
    trainer = Trainer(RecsysTask(cfg, dataset), cfg)
    state = trainer.init_state()
    # one program per distinct batch shape (length buckets), all compiled before timing, as fit compiles each
    # once per run
    for b in batches:
        trainer._compile(state, mesh_lib.global_batch(b, trainer.mesh))
    compile_s = {str(list(key[1][0][0])): round(s, 2) for key, s in trainer.compile_times.items()}
    times, losses = [], []
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        batch = mesh_lib.global_batch(b, trainer.mesh)
        step_fn, _ = trainer._compile(state, batch)
        state, metrics = step_fn(state, batch)
        loss = float(jax.device_get(metrics["loss"]))  # waits for the step
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        losses.append(loss)
    return _side_row("ours", times, cfg.train.batch_size, framework=f"jax {jax.__version__}",
                     device=jax.devices()[0].platform, compile_s=compile_s, first_loss=round(losses[0], 4),
                     last_loss=round(losses[-1], 4), load_avg_before=round(load, 2), cpu_count=os.cpu_count())


def reference_spec(cfg, num_items: int) -> dict:
    """The sizes the reference side builds its model with (from our config)."""
    h, loss, o = cfg.model.hstu, cfg.loss, cfg.optim
    if h.attention_dim != h.embed_dim or h.linear_dim != h.embed_dim:
        raise ValueError("the reference HSTU ties dqk = dv = D: set model.hstu.attention_dim and linear_dim to "
                         f"embed_dim ({h.embed_dim})")
    return {"num_items": num_items, "embed_dim": h.embed_dim, "num_blocks": h.num_layers, "num_heads": h.num_heads,
            "max_len": cfg.data.max_len, "dropout": h.dropout, "num_negatives": loss.num_negatives,
            "temperature": loss.temperature, "learning_rate": o.learning_rate, "weight_decay": o.weight_decay,
            "batch_size": cfg.train.batch_size}


def time_reference(args, spec: dict, batches: list[dict], warmup: int) -> dict:
    """Run ``reference_side.py`` with ``--ref-python`` on the same batches; its JSON row."""
    if not args.gr_path:
        return {"side": "reference", "skipped": "no --gr-path (or GR_PATH): the generative-recommenders checkout "
                                                 "is needed to time the reference"}
    if not os.path.isdir(os.path.join(args.gr_path, "generative_recommenders", "research")):
        return {"side": "reference", "skipped": f"--gr-path {args.gr_path!r} has no generative_recommenders/research "
                                                 "(expected a facebookresearch/generative-recommenders checkout)"}
    path = os.path.join(args.work_dir, "batches.npz")
    np.savez(path, **{f"{k}_{i}": b[k] for i, b in enumerate(batches) for k in BATCH_KEYS})  # padded rows
    cmd = [args.ref_python, REFERENCE_SCRIPT, "--gr-path", args.gr_path, "--batches", path,
           "--count", str(len(batches)), "--warmup", str(warmup), "--spec", json.dumps(spec)]
    if args.ref_threads:
        cmd += ["--threads", str(args.ref_threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"reference side failed ({shlex.join(cmd[:2])}, exit {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "recsys", "hstu_ml1m.yaml"))
    p.add_argument("--data", default=DEFAULT_DATA, help="ratings file (synthetic L>=200 sequences when absent)")
    p.add_argument("--gr-path", default=os.environ.get("GR_PATH"),
                   help="facebookresearch/generative-recommenders checkout (default: $GR_PATH; none: reference "
                        "skipped)")
    p.add_argument("--ref-python", default=os.environ.get("GR_PYTHON", sys.executable),
                   help="python with torch + fbgemm-gpu-cpu + gin-config (the 'reference' extra); default $GR_PYTHON")
    p.add_argument("--ref-threads", type=int, default=0, help="torch threads for the reference (0: torch's default)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per side")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator warm-up)")
    p.add_argument("--dry-run", action="store_true", help="tiny synthetic config (a few seconds; for tests)")
    p.add_argument("--work-dir", default=None, help="run folder, dataset cache and batches (default: a temp dir)")
    p.add_argument("--cache-dir", default=None, help="built datasets (default: under --work-dir)")
    p.add_argument("--override", action="append", default=[], help="extra config override (repeatable)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be >= 1 and --warmup >= 0")
    with tempfile.TemporaryDirectory(prefix="hstu_step_") as tmp:
        args.work_dir = args.work_dir or tmp
        cfg, where = load_run_config(args)
        dataset = load_dataset(resolve_dataset(cfg.data, verbose=False))
        batches = make_batches(dataset, cfg, args.warmup + args.steps)
        spec = reference_spec(cfg, dataset.num_items)
        common = {"data": where, "config": os.path.relpath(args.config, ROOT), **spec,
                  "real_positions_per_batch": round(float(np.mean([b["mask"].sum() for b in batches])), 1),
                  "padded_positions_per_batch": round(float(np.mean([b["mask"].size for b in batches])), 1),
                  "length_grouping": cfg.data.length_grouping, "length_bucket": cfg.data.length_bucket,
                  "pack_rows": cfg.data.pack_rows,
                  "rows_per_batch": round(float(np.mean([len(b["mask"]) for b in batches])), 1)}
        ours = {**time_ours(cfg, dataset, batches, args.warmup), **common}
        print(json.dumps(ours), flush=True)
        ref = time_reference(args, spec, [padded(b, cfg) for b in batches], args.warmup)
        print(json.dumps({**ref, **common} if "skipped" not in ref else ref), flush=True)
        if "skipped" not in ref:
            print(json.dumps({"ratio": round(ours["train_sequences_per_s"] / ref["train_sequences_per_s"], 2),
                              "meaning": "ours / reference train sequences per second, same batches, same run",
                              "command": shlex.join(["python", os.path.relpath(__file__, ROOT),
                                                     *(argv if argv is not None else sys.argv[1:])])}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
