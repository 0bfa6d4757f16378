"""The ``recsys-jax`` command line.

    recsys-jax data build --format movielens --input ratings.dat --out out/ml1m [--max-seq-len 200]
    recsys-jax data build --out out/synthetic            # the built-in synthetic dataset
    recsys-jax data build --format movielens --input ratings.dat --out out/ml1m --item-text   # + MiniLM item texts
    recsys-jax data build --format marketplace --out out/sim [--drop-actions impression]   # event dataset
    recsys-jax train --config configs/recsys/hstu_ml1m.yaml [key.sub=value ...]
    recsys-jax eval --checkpoint RUN_DIR [--split test|validation] [--which auto|best|latest]
    recsys-jax eval --checkpoint UNIFIED_RUN --repeat auto [--repeat-model BACKTEST_RUN]   # + the repeat prior
    recsys-jax recommend --checkpoint RUN_DIR --history 1193,661,914 [--timestamps ...] [--k 10]
    recsys-jax recommend --checkpoint LONGSHORT_RUN_DIR --user 42 --history ... --timestamps ...
    recsys-jax longshort train --config configs/recsys/longshort_ml1m.yaml [key.sub=value ...]
    recsys-jax convert from-generative-recommenders --checkpoint CKPT --gin CONFIG.gin --out RUN_DIR
    recsys-jax convert to-generative-recommenders --checkpoint RUN_DIR --out CKPT [--gin OUT.gin]
    recsys-jax serve --checkpoint RUN_DIR --port 8080 [--max-batch 32] [--max-wait-ms 2] [--max-queue 256]

Each command group registers its subcommands in ``_COMMANDS`` (a function that adds them to the
top-level subparsers); a subcommand sets ``func`` to a handler ``(args) -> exit code``.
"""

from __future__ import annotations

import argparse
import sys

from core_jax.config import exit_on_error


def _add_data_commands(sub: argparse._SubParsersAction) -> None:
    from recsys_jax.data.attribution import BY, RULES
    from recsys_jax.data.builder import SOURCE_FORMATS
    from recsys_jax.data.event_builder import EVENT_FORMATS

    data = sub.add_parser("data", help="build and inspect datasets")
    dsub = data.add_subparsers(dest="data_command", required=True)
    b = dsub.add_parser(
        "build", help="interaction log -> per-user sequence dataset (ArrayRecord)",
        description="Read an interaction log, build per-user sequences (sorted by time, dense ids) and write "
                    "an ArrayRecord dataset folder with id maps, item counts, side info and a build report. "
                    "Without --input it builds the built-in synthetic dataset.")
    b.add_argument("--format", choices=SOURCE_FORMATS + tuple(f for f in EVENT_FORMATS if f not in SOURCE_FORMATS),
                   default=None,
                   help="input format (default: guessed from the file name; 'synthetic' without --input)")
    b.add_argument("--input", help="interaction file (ratings.dat[.gz], .inter, text, .csv, .parquet); "
                                   "completejourney: a folder of its parquet tables (default: the installed package)")
    b.add_argument("--items", help="item side-info file (movies.dat, .item, or a csv/parquet table); "
                                   "default: the usual file beside --input, if any")
    b.add_argument("--no-items", action="store_true", help="do not read item side info")
    b.add_argument("--columns", help="csv/parquet column mapping, e.g. user=uid,item=iid,time=ts,rating=r")
    b.add_argument("--out", required=True, help="output folder (the dataset goes to OUT/NAME/1.0.0)")
    b.add_argument("--name", default=None, help="dataset name (lower_snake_case; default 'sequences', "
                                                 "'events' for an event dataset)")
    b.add_argument("--max-seq-len", type=int, default=200, help="keep each user's most recent N items (0: all)")
    b.add_argument("--min-rating", type=float, default=None, help="drop interactions rated below this")
    b.add_argument("--min-user-interactions", type=int, default=0, help="drop users with fewer interactions")
    b.add_argument("--skip-bad-lines", action="store_true", help="skip and count malformed lines instead of failing")
    b.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    b.add_argument("--quiet", action="store_true", help="no progress bar or report")
    b.add_argument("--item-text", action="store_true",
                   help="also embed each item's side-info text (title, genres, category, ...) with the packaged "
                        "MiniLM sentence encoder into item_text.npy ([N + 1, 384], by dense id); cached by a hash "
                        "of the texts and the encoder")
    b.add_argument("--item-text-fields", default=None,
                   help="side-info fields the item text joins, comma separated (default: title, genres, tags, "
                        "department, category, brand, type, description; a csv/parquet --items column name works)")
    b.add_argument("--item-text-cache", default=None,
                   help="folder of cached item text embeddings by key (default: OUT/item_text_cache)")
    e = b.add_argument_group(
        "event datasets (--events; implied by --format marketplace and completejourney)",
        "Per-event actions, surfaces, ads, advertisers, campaigns, values and attributed-conversion labels "
        "beside the item sequences (recsys_jax.data.event_builder). csv/parquet columns: user, item, time, "
        "action, surface, is_ad, advertiser, campaign, value, category.")
    e.add_argument("--events", action="store_true", help="build an event dataset")
    e.add_argument("--actions", help="action vocabulary, comma separated (default: the names in the data)")
    e.add_argument("--surfaces", help="surface vocabulary, comma separated (default: the names in the data)")
    e.add_argument("--action", default="interaction", help="the action of single-action logs")
    e.add_argument("--rating-behaviours", action="store_true",
                   help="ratings as behaviours: rating >= --like-threshold -> 'like', else 'view'")
    e.add_argument("--like-threshold", type=float, default=4.0)
    e.add_argument("--attribution", choices=RULES + ("none",), default="last_click")
    e.add_argument("--attribution-window", default=None,
                   help="seconds or e.g. 24h, 7d, 1w (default 7d; completejourney 180d)")
    e.add_argument("--attribute-by", choices=BY, default=None,
                   help="the conversion's advertiser, item or campaign (default advertiser; completejourney campaign)")
    e.add_argument("--drop-actions", default="", help="actions not to store, comma separated (e.g. impression)")
    g = b.add_argument_group("synthetic data (--format synthetic or marketplace)")
    g.add_argument("--num-users", type=int, default=2000)
    g.add_argument("--num-items", type=int, default=1000)
    g.add_argument("--scale", type=float, default=1.0, help="multiplies --num-users and --num-items")
    g.add_argument("--seed", type=int, default=0)
    b.set_defaults(func=_cmd_data_build)


def _cmd_data_build(args: argparse.Namespace) -> int:
    from recsys_jax.data import formats
    from recsys_jax.data.builder import SOURCE_FORMATS, SourceSpec, build
    from recsys_jax.data.synthetic import SyntheticConfig

    if (args.item_text_fields or args.item_text_cache) and not args.item_text:
        raise ValueError("--item-text-fields and --item-text-cache need --item-text")
    fmt = args.format
    if fmt is None:
        if args.input is None:
            fmt = "synthetic"
        else:
            fmt = formats.guess_format(args.input)
            if fmt is None:
                raise ValueError(f"cannot tell the format of '{args.input}' from its name: pass --format "
                                 f"{{{','.join(formats.FORMATS)}}}")
    if args.max_seq_len < 0:
        raise ValueError(f"--max-seq-len must be >= 0 (0 keeps everything), got {args.max_seq_len}")
    if args.events or fmt in ("marketplace", "completejourney"):
        return _build_events(args, fmt)
    if fmt not in SOURCE_FORMATS:
        raise ValueError(f"format {fmt!r} builds an event dataset: pass --events")
    synthetic = None
    if fmt == "synthetic":
        synthetic = SyntheticConfig(num_users=args.num_users, num_items=args.num_items, scale=args.scale,
                                    seed=args.seed)
    columns = formats.parse_columns(args.columns) if args.columns else None
    spec = SourceSpec(format=fmt, input=args.input, items="" if args.no_items else args.items,
                      columns={k: v for k, v in columns.items() if v} if columns else None,
                      skip_bad_lines=args.skip_bad_lines, synthetic=synthetic)
    path = build(spec, args.out, max_seq_len=args.max_seq_len or None, min_rating=args.min_rating,
                 min_user_interactions=args.min_user_interactions, name=args.name or "sequences",
                 overwrite=args.overwrite, progress=not args.quiet, verbose=not args.quiet)
    _item_text(args, path)
    print(path)
    return 0


def _item_text(args: argparse.Namespace, path: str) -> None:
    """``--item-text``: embed the built dataset's item texts (cached by texts + encoder)."""
    import os

    if not args.item_text:
        return
    from recsys_jax.data.item_text import ensure_item_text
    from recsys_jax.data.loader import load_dataset

    fields = _split_list(args.item_text_fields, "item-text-fields") if args.item_text_fields else None
    ensure_item_text(load_dataset(path), fields=fields, verbose=not args.quiet,
                     cache_dir=args.item_text_cache or os.path.join(args.out, "item_text_cache"))


def _build_events(args: argparse.Namespace, fmt: str) -> int:
    import dataclasses

    from recsys_jax.data import completejourney, formats
    from recsys_jax.data.attribution import AttributionConfig
    from recsys_jax.data.event_builder import EVENT_FORMATS, EventSourceSpec, build_events
    from recsys_jax.data.marketplace import MarketplaceConfig

    if fmt not in EVENT_FORMATS:
        raise ValueError(f"format {fmt!r} has no event dataset; expected one of {list(EVENT_FORMATS)}")
    if args.min_rating is not None or args.min_user_interactions:
        raise ValueError("--min-rating and --min-user-interactions apply to sequence datasets, not event datasets")

    def names(text):
        return tuple(n.strip() for n in text.split(",") if n.strip()) if text else None

    columns = formats.parse_columns(args.columns, formats.EVENT_COLUMN_KEYS) if args.columns else None
    sim = None
    if fmt == "marketplace":
        sim = MarketplaceConfig(num_users=max(1, int(round(args.num_users * args.scale))), seed=args.seed)
    spec = EventSourceSpec(
        format=fmt, input=args.input, items="" if args.no_items else args.items,
        columns={k: v for k, v in columns.items() if v} if columns else None, skip_bad_lines=args.skip_bad_lines,
        actions=names(args.actions), surfaces=names(args.surfaces), action=args.action,
        rating_actions=(args.like_threshold, "like", "view") if args.rating_behaviours else None, marketplace=sim)
    base = completejourney.ATTRIBUTION if fmt == "completejourney" else AttributionConfig()
    attribution = None if args.attribution == "none" else dataclasses.replace(
        base, rule=args.attribution, by=args.attribute_by or base.by, window=args.attribution_window or base.window)
    path = build_events(spec, args.out, max_seq_len=args.max_seq_len or None, attribution=attribution,
                        drop_actions=names(args.drop_actions) or (), name=args.name or "events",
                        overwrite=args.overwrite, verbose=not args.quiet)
    _item_text(args, path)
    print(path)
    return 0


def _add_run_commands(sub: argparse._SubParsersAction) -> None:
    from core_jax import distributed

    t = sub.add_parser("train", help="train a model (sampled softmax, on the shared loop)",
                       description="Train (or resume) a run: the config's data (built into a cache on first use), "
                                   "model, loss, eval, train, optim and mesh sections. Prints the final metrics "
                                   "as JSON. Without --config: the embedded synthetic default.")
    t.add_argument("--config", default=None, help="YAML run config (configs/recsys/*.yaml); default: built-in")
    t.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. train.steps=1000")
    distributed.add_flags(t)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="full-corpus metrics of a run's checkpoint (and most-popular) as JSON",
                       description="Rank every item for every user of the split (history excluded) and print "
                                   "HR@k, NDCG@k and MRR of the checkpoint and of the most-popular baseline as JSON. "
                                   "A unified run prints recall@k / NDCG@k / HR@k per scenario ('scenarios': "
                                   "'<label>:<surface>' -> metrics) and per-scenario popularity, on its split.")
    e.add_argument("--checkpoint", required=True, help="the run folder (train.run_dir)")
    e.add_argument("--split", choices=("test", "validation"), default="test")
    e.add_argument("--which", choices=("auto", "best", "latest"), default="auto",
                   help="checkpoint to evaluate (auto: best when the run kept one, else latest)")
    e.add_argument("--no-baseline", action="store_true", help="skip the most-popular baseline")
    e.add_argument("--repeat", default=None, metavar="auto|W",
                   help="unified runs: also rank by the model's score + W * log1p(the item's count in the user's "
                        "history) ('repeat'); auto: W per scenario chosen on the validation window (history kept "
                        "in the ranking: eval.exclude_history=false)")
    e.add_argument("--repeat-model", default=None, metavar="RUN",
                   help="with --repeat auto: choose the weights with this backtest run (the same config with "
                        "unified.split.backtest=1) on its test window, the run's validation window")
    e.add_argument("overrides", nargs="*", help="run-config overrides, e.g. eval.batch_size=512 data.dir=...")
    distributed.add_flags(e)
    e.set_defaults(func=_cmd_eval)

    r = sub.add_parser("recommend", help="top-k items for one history (original ids) as JSON")
    r.add_argument("--checkpoint", required=True, help="the run folder (train.run_dir)")
    r.add_argument("--history", required=True, help="comma-separated original item ids, oldest first")
    r.add_argument("--timestamps", default=None, help="comma-separated unix seconds, one per history item")
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--which", choices=("auto", "best", "latest"), default="auto")
    r.add_argument("--include-history", action="store_true", help="do not exclude the history items")
    r.add_argument("--skip-unknown", action="store_true", help="ignore ids unknown to the model instead of failing")
    r.add_argument("--actions", default=None, help="unified runs: comma-separated action names, one per history item")
    r.add_argument("--surfaces", default=None, help="unified runs: comma-separated surface names, one per history item")
    r.add_argument("--scenario", default=None, help="unified runs: LABEL:SURFACE, e.g. conversion:home")
    r.add_argument("--candidates", choices=("ads", "organic", "all"), default=None,
                   help="candidate pool (default: the scenario label's pool, e.g. ads for ad labels)")
    r.add_argument("--repeat-weight", type=float, default=0.0,
                   help="add W * log1p(the item's count in the history) to its score (with --include-history; "
                        "'recsys-jax eval --repeat auto' chooses W per scenario)")
    r.add_argument("--user", default=None, help="long+short runs: the user id whose stored long-term embedding "
                                                "conditions the recent history")
    r.set_defaults(func=_cmd_recommend)


def _split_list(text: str, what: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError(f"--{what} is empty: expected comma-separated values")
    return values


def _cmd_train(args: argparse.Namespace) -> int:
    import json

    import jax

    from core_jax import distributed
    from recsys_jax.train.config import load_config
    from recsys_jax.train.task import train

    cfg = load_config(args.config, args.overrides)
    distributed.initialize_from_args(args)
    state, metrics = train(cfg)
    if jax.process_index() == 0:
        print(json.dumps({"step": int(jax.device_get(state["step"])), "run_dir": cfg.train.run_dir, **metrics}))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json

    import jax
    import numpy as np

    from core_jax import distributed
    from recsys_jax.eval.baselines import evaluate_most_popular
    from recsys_jax.eval.evaluate import targets_in_history
    from recsys_jax.train.restore import restore_run

    distributed.initialize_from_args(args)  # several processes evaluate on one mesh
    run = restore_run(args.checkpoint, which=args.which, overrides=args.overrides, eval_split=args.split)
    if (args.repeat or args.repeat_model) is not None and not run.cfg.unified.enabled:
        raise ValueError(f"--repeat / --repeat-model: {args.checkpoint} is not a unified run (unified.enabled)")
    if run.cfg.unified.enabled:  # per-scenario metrics ("<label>:<surface>") and popularity per scenario
        import contextlib

        from recsys_jax.eval.scenarios import evaluate_run

        with contextlib.redirect_stdout(sys.stderr):  # a dataset (re)built on the way reports on stderr: one JSON
            chosen = _repeat_weights(args, run)
            weights = chosen if not isinstance(chosen, dict) else {n: c["weight"] for n, c in chosen.items()}
            res = evaluate_run(run.task, run.model(), split=args.split, popularity=not args.no_baseline,
                               repeat_weights=weights)
        if isinstance(chosen, dict):  # auto: what each weight scored on the validation examples, of which run
            res["repeat_chosen_with"] = args.repeat_model or args.checkpoint
            for name, c in chosen.items():
                if name in res["repeat"]:
                    res["repeat"][name]["validation"] = c["validation"]
        out = {"run_dir": args.checkpoint, "checkpoint": run.which, "step": run.step, "model": run.cfg.model.name,
               **res}
        if jax.process_index() == 0:
            print(json.dumps(out))
        return 0
    run.cfg.train.eval_batches = 0  # the whole split
    metrics = run.trainer.evaluate(run.state)
    e = run.cfg.eval
    out = {"run_dir": args.checkpoint, "split": args.split, "checkpoint": run.which, "step": run.step,
           "model": run.cfg.model.name, "users": len(run.task.dataset.split_source(args.split)),
           "exclude_history": e.exclude_history, "ties": e.ties,
           "targets_in_history": round(targets_in_history(run.task.dataset, args.split), 6), "metrics": metrics}
    if not args.no_baseline:  # training counts; held-out cold items count zero (no training interaction)
        counts = run.task.dataset.item_counts
        if run.task.cold_items is not None:
            counts = np.where(run.task.cold_items, 0, counts)
        base = evaluate_most_popular(run.task.dataset, args.split, counts=counts, batch_size=e.batch_size, ks=e.ks,
                                     ties=e.ties, exclude_history=e.exclude_history)
        base.pop("count", None)
        out["most_popular"] = base
    if run.task.cold_items is not None:  # data.cold_item_fraction: cold / warm targets and history lengths apart
        from recsys_jax.eval.coldstart import coldstart_metrics

        out.update(coldstart_metrics(run.model(), run.task.dataset, run.task.cold_items, args.split,
                                     batch_size=e.batch_size, max_len=run.cfg.data.max_len,
                                     padding=run.cfg.data.padding, ks=e.ks, ties=e.ties,
                                     exclude_history=e.exclude_history))
    if jax.process_index() == 0:
        print(json.dumps(out))
    return 0


def _repeat_weights(args: argparse.Namespace, run) -> dict | float | None:
    """``eval --repeat``: auto: ``{scenario: {"weight": w, "validation": ...}}`` chosen on the validation
    examples; a number: that weight for every scenario; None without the flag."""
    if args.repeat is None:
        return None
    if run.cfg.eval.exclude_history:
        raise ValueError("--repeat ranks the history's items: the run excludes them (eval.exclude_history=true); "
                         "pass the override eval.exclude_history=false")
    if args.repeat_model is not None and args.repeat != "auto":
        raise ValueError("--repeat-model chooses the weights of --repeat auto")
    if args.repeat == "auto":
        if args.split != "test":
            raise ValueError("--repeat auto chooses the weights on the validation examples: evaluate --split test")
        from recsys_jax.eval.repeat_prior import backtest_examples, choose_repeat_weights

        if args.repeat_model is None:
            return choose_repeat_weights(run.task, run.model())
        from recsys_jax.train.restore import restore_run

        back = restore_run(args.repeat_model, which=args.which)
        try:
            examples = backtest_examples(run.task, back.task)
        except ValueError as e:
            raise ValueError(f"--repeat-model {args.repeat_model}: {e}") from None
        return choose_repeat_weights(back.task, back.model(), examples=examples)
    try:
        w = float(args.repeat)
    except ValueError:
        w = -1.0
    if not w >= 0:
        raise ValueError(f"--repeat must be 'auto' or a weight >= 0, got {args.repeat!r}")
    return w


def _cmd_recommend(args: argparse.Namespace) -> int:
    import json

    from recsys_jax.retriever import Retriever

    history = _split_list(args.history, "history")
    timestamps = None
    if args.timestamps is not None:
        try:
            timestamps = [int(v) for v in _split_list(args.timestamps, "timestamps")]
        except ValueError:
            raise ValueError(f"--timestamps must be comma-separated integers (unix seconds), got {args.timestamps!r}") \
                from None
    events = {}
    for key in ("actions", "surfaces"):
        if getattr(args, key) is not None:
            events[key] = _split_list(getattr(args, key), key)
    if args.scenario is not None:
        events["scenario"] = args.scenario
    if args.candidates is not None:
        events["candidates"] = args.candidates
    if args.user is not None:
        events["user"] = args.user
    r = Retriever.from_checkpoint(args.checkpoint, which=args.which)
    items, scores = r.recommend(history, timestamps, k=args.k, exclude_history=not args.include_history,
                                unknown="skip" if args.skip_unknown else "error", repeat_weight=args.repeat_weight,
                                **events)
    rows = []
    for item, score in zip(items, scores):
        row = {"item": item, "score": round(float(score), 6)}
        info = r.item_info(item) or {}
        if info.get("title"):
            row["title"] = info["title"]
        rows.append(row)
    extra = {"scenario": args.scenario} if args.scenario else {}
    print(json.dumps({"checkpoint": r.which, "step": r.step, "k": args.k, **extra, "items": rows}, ensure_ascii=False))
    return 0


def _add_convert_commands(sub: argparse._SubParsersAction) -> None:
    conv = sub.add_parser("convert", help="import / export checkpoints of other libraries")
    csub = conv.add_subparsers(dest="convert_command", required=True)
    f = csub.add_parser(
        "from-generative-recommenders", help="generative-recommenders research HSTU checkpoint -> run folder",
        description="Read a facebookresearch/generative-recommenders research HSTU checkpoint (model_state_dict, "
                    "torch.load weights_only=True) and its gin config, and write a run folder that Retriever, "
                    "`recsys-jax recommend` and `recsys-jax eval` load (needs torch and gin-config).")
    f.add_argument("--checkpoint", required=True, help="the checkpoint GR saved (ckpts/..._epN)")
    f.add_argument("--gin", required=True, help="the gin config of the run (train_fn.*, hstu_encoder.*)")
    f.add_argument("--out", required=True, help="the run folder to write")
    f.add_argument("--dataset", default=None, help="a dataset (recsys-jax data build) whose original item ids are "
                                                   "GR's item ids: the table is reordered into its ids, for eval")
    f.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    f.set_defaults(func=_cmd_convert_from_gr)
    t = csub.add_parser(
        "to-generative-recommenders", help="run folder (HSTU) -> generative-recommenders checkpoint",
        description="Write a run's HSTU as {'model_state_dict': ...} with generative-recommenders' keys and shapes "
                    "(item row d = dense id d of the run's id map; needs torch).")
    t.add_argument("--checkpoint", required=True, help="the run folder (train.run_dir or a converted run)")
    t.add_argument("--out", required=True, help="the checkpoint file to write")
    t.add_argument("--gin", default=None, help="also write the matching gin values here")
    t.add_argument("--which", choices=("auto", "best", "latest"), default="auto")
    t.set_defaults(func=_cmd_convert_to_gr)


def _cmd_convert_from_gr(args: argparse.Namespace) -> int:
    import json

    try:  # needs the `convert` extra (torch, gin-config): a missing one is one line, not a traceback
        from recsys_jax.convert import from_generative_recommenders

        out = from_generative_recommenders(args.checkpoint, args.gin, args.out, dataset=args.dataset,
                                           overwrite=args.overwrite)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"run_dir": out}))
    return 0


def _cmd_convert_to_gr(args: argparse.Namespace) -> int:
    import json

    try:
        from recsys_jax.convert import to_generative_recommenders

        shapes = to_generative_recommenders(args.checkpoint, args.out, gin=args.gin, which=args.which)
    except ImportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"checkpoint": args.out, "gin": args.gin, "tensors": len(shapes)}))
    return 0


def _add_serve_commands(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="HTTP JSON API: POST /recommend, GET /healthz, POST /reload",
                       description="Serve a run's checkpoint over HTTP with micro-batching (aiohttp). POST /recommend "
                                   "{history, timestamps, k, quotas, unknown, exclude_history}; GET /healthz; POST "
                                   "/reload [{checkpoint, which}] or SIGHUP loads a new checkpoint without dropping "
                                   "requests. A bad field is a 400 naming it; a full queue a 503.")
    s.add_argument("--checkpoint", required=True, help="the run folder (train.run_dir)")
    s.add_argument("--which", choices=("auto", "best", "latest"), default="auto")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--k", type=int, default=10, help="k of a request that gives none")
    s.add_argument("--max-k", type=int, default=1000, help="largest k a request may ask for")
    s.add_argument("--unknown", choices=("error", "skip"), default="error", help="default for unknown item ids")
    s.add_argument("--max-batch", type=int, default=32, help="requests per batch (padded to a power of two)")
    s.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a batch waits to fill")
    s.add_argument("--max-queue", type=int, default=256, help="waiting requests beyond which the answer is 503")
    s.add_argument("--index-dtype", choices=("float32", "bfloat16", "int8"), default="float32")
    s.add_argument("--no-warmup", action="store_true", help="compile on the first requests instead of at start")
    s.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    from recsys_jax.retriever import Retriever
    from recsys_jax.serving.server import RecommendService, serve

    def load(path, which):
        return Retriever.from_checkpoint(path, which=which, index_dtype=args.index_dtype)

    service = RecommendService(load(args.checkpoint, args.which), checkpoint=args.checkpoint, which=args.which,
                               loader=load, default_k=args.k, max_k=args.max_k, unknown=args.unknown,
                               max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                               warmup=not args.no_warmup)
    serve(service, host=args.host, port=args.port)
    return 0


# Command groups: each adds its subcommands to the top-level subparsers.
def _add_longshort_commands(sub: argparse._SubParsersAction) -> None:
    ls = sub.add_parser("longshort", help="long- and short-term interests (recsys_jax.train.longshort)")
    lsub = ls.add_subparsers(dest="longshort_command", required=True)
    t = lsub.add_parser("train", help="train the long-term encoder, short-term HSTU with and without it, evaluate",
                        description="Train the long-term encoder (dense all-action loss), build the per-user "
                                    "long-term table, train the short-term HSTU alone and conditioned on it, and "
                                    "write RUN_DIR/results.json (future-window recall@k, next-item hr@k of long "
                                    "only / short only / both).")
    t.add_argument("--config", required=True, help="YAML config, e.g. configs/recsys/longshort_ml1m.yaml")
    t.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. long.encoder=chunk_hstu")
    t.set_defaults(func=_cmd_longshort_train)


def _cmd_longshort_train(args: argparse.Namespace) -> int:
    import json

    from recsys_jax.train.longshort import load_config, run

    results = run(load_config(args.config, args.overrides))
    print(json.dumps(results))
    return 0


_COMMANDS = [_add_data_commands, _add_run_commands, _add_convert_commands, _add_serve_commands,
             _add_longshort_commands]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys-jax", description="Generative sequential retrieval in JAX.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


@exit_on_error
def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``recsys-jax`` console script; returns the exit code (2 on bad input)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as e:  # DataFormatError is a ValueError; missing files are OSErrors
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
