"""``canvas-jax`` command line: sample / inpaint / outpaint PNGs, convert pipelines.

    canvas-jax sample --model PATH --prompt "a cat" [--prompt ...] --out grid.png
    canvas-jax sample --model PATH --prompt "a cat" --ip-adapter DIR --ip-image ref.png --ip-scale 0.7 ...
    canvas-jax inpaint --model PATH --image in.png --mask m.png --prompt "..." --out out.png
    canvas-jax outpaint --model PATH --image in.png --right 64 --prompt "..." --out out.png
    canvas-jax convert from-diffusers|to-diffusers SRC DST
    canvas-jax data build ... / train --config ... / rl collect ...
    canvas-jax eval shapes|cifar10|inpaint|clip|frechet ...

Subcommands live in :data:`COMMANDS` (name -> (help, add_arguments, run)).
Bad input, as our own checks find it (:class:`~canvas_jax.errors.InputError`, a config error, a missing or
existing path), prints one ``canvas-jax: error: ...`` line and exits with code 2; any other exception is a bug
and propagates with its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from canvas_jax.data.cli import add_data_arguments, run_data
from canvas_jax.diffusion.plans import SAMPLERS
from canvas_jax.errors import USAGE_ERRORS, InputError
from canvas_jax.eval.cli import add_eval_arguments, run_eval
from canvas_jax.rl.cli import add_rl_arguments, run_rl
from canvas_jax.train.run import add_train_arguments, run_train

PROG = "canvas-jax"


class UsageError(InputError):
    """Bad command-line input: reported as one line, exit code 2."""


def _existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise UsageError(f"file {value} does not exist")
    return path


def _output_path(value: str) -> Path:
    path = Path(value)
    if not path.parent.is_dir():
        raise UsageError(f"--out {value}: folder {path.parent} does not exist")
    if path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".webp"):
        raise UsageError(f"--out {value}: expected a .png (or .jpg / .webp) file name")
    return path


def _add_generation_args(p: argparse.ArgumentParser, *, image: bool) -> None:
    p.add_argument("--model", required=True, help="pipeline folder (diffusers or canvas_jax format)")
    p.add_argument("--prompt", action="append", required=True, help="text prompt (repeat for a batch)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (<= 1: off)")
    p.add_argument("--guidance-rescale", type=float, default=0.0)
    p.add_argument("--sampler", default="dpmpp_2m", choices=SAMPLERS)
    p.add_argument("--karras", action="store_true", help="Karras sigmas (euler, heun, dpmpp_*)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=1, help="images per prompt")
    p.add_argument("--cols", type=int, default=None, help="grid columns (default: near square)")
    p.add_argument("--caption", action="store_true", help="write each prompt under its image")
    p.add_argument("--out", required=True, help="output PNG (a grid when there are several images)")
    if not image:
        p.add_argument("--height", type=int, default=None)
        p.add_argument("--width", type=int, default=None)
    else:
        p.add_argument("--image", required=True, help="input image file")
    ip = p.add_argument_group("image prompt (IP-Adapter)")
    ip.add_argument("--ip-adapter", default=None, metavar="PATH",
                    help="IP-Adapter weights: a .safetensors file, or a folder holding --ip-weight-name")
    ip.add_argument("--ip-weight-name", default="ip-adapter.safetensors", help="weights file inside --ip-adapter")
    ip.add_argument("--ip-image-encoder", default="image_encoder", metavar="PATH",
                    help="CLIP image encoder folder: a name inside the --ip-adapter folder, or a path")
    ip.add_argument("--ip-image", action="append", default=None, metavar="FILE",
                    help="reference image (repeat for several images of one prompt)")
    ip.add_argument("--ip-scale", type=float, default=1.0, help="IP-Adapter strength (0: text only)")


def _add_sample(p):
    _add_generation_args(p, image=False)


def _add_inpaint(p):
    _add_generation_args(p, image=True)
    p.add_argument("--mask", required=True, help="mask image file: white = repaint")
    p.add_argument("--strength", type=float, default=1.0)


def _add_outpaint(p):
    _add_generation_args(p, image=True)
    for side, default in (("left", 0), ("top", 0), ("right", 64), ("bottom", 0)):
        p.add_argument(f"--{side}", type=int, default=default, help=f"pixels to add on the {side}")
    p.add_argument("--fill", default="edge", choices=("edge", "noise"), help="how the new border starts")


def _add_convert(p):
    sub = p.add_subparsers(dest="direction", required=True)
    for name, what in (("from-diffusers", "a diffusers folder to canvas_jax format"),
                       ("to-diffusers", "a canvas_jax (or diffusers) folder to diffusers format")):
        q = sub.add_parser(name, help=f"convert {what}")
        q.add_argument("src")
        q.add_argument("dst")
        q.add_argument("--overwrite", action="store_true", help="replace a non-empty DST")


def _load_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.convert("RGB") if im.mode not in ("L", "1") else im.convert("L")
    except UnidentifiedImageError as err:
        raise UsageError(f"{path} is not an image file PIL can read") from err


def _common(args) -> dict:
    if args.num_images < 1:
        raise UsageError(f"--num-images must be >= 1, got {args.num_images}")
    if args.steps < 1:
        raise UsageError(f"--steps must be >= 1, got {args.steps}")
    if bool(args.ip_image) != bool(args.ip_adapter):
        raise UsageError("--ip-image and --ip-adapter go together: the adapter weights and a reference image")
    kw = dict(negative_prompt=args.negative_prompt, num_steps=args.steps, guidance_scale=args.guidance,
              guidance_rescale=args.guidance_rescale, sampler=args.sampler, seed=args.seed,
              use_karras_sigmas=True if args.karras else None, num_images_per_prompt=args.num_images)
    if args.ip_image:
        kw["ip_adapter_image"] = [_load_image(_existing_file(f)) for f in args.ip_image]
    return kw


def _pipeline(args):
    import canvas_jax

    pipe = canvas_jax.Pipeline.from_pretrained(args.model)
    if args.ip_adapter:
        path = Path(args.ip_adapter)
        if not path.exists():
            raise UsageError(f"--ip-adapter {path} does not exist")
        try:
            pipe.load_ip_adapter(path, weight_name=args.ip_weight_name, image_encoder_folder=args.ip_image_encoder,
                                 scale=args.ip_scale)
        except ValueError as err:  # weights that do not fit this UNet: the user's input, not a bug
            raise UsageError(f"--ip-adapter {path}: {err}") from err
    return pipe


def _write(images, args, out: Path) -> None:
    from canvas_jax.images import make_grid

    prompts = [p for p in args.prompt for _ in range(args.num_images)]
    if len(images) == 1 and not args.caption:
        images[0].save(out)
    else:
        make_grid(images, cols=args.cols, captions=prompts if args.caption else None).save(out)
    print(f"wrote {out} ({len(images)} image{'s' if len(images) > 1 else ''})")


def _run_sample(args) -> int:
    out = _output_path(args.out)
    kw = _common(args)
    if not Path(args.model).is_dir():
        raise UsageError(f"--model {args.model}: folder does not exist")
    pipe = _pipeline(args)
    images = pipe(args.prompt, height=args.height, width=args.width, **kw).images
    _write(images, args, out)
    return 0


def _run_inpaint(args) -> int:
    out, kw = _output_path(args.out), _common(args)
    image, mask = _load_image(_existing_file(args.image)), _load_image(_existing_file(args.mask))
    if image.size != mask.size:
        raise UsageError(f"--mask size {mask.size} differs from --image size {image.size}")
    images = _pipeline(args).inpaint(image, mask, args.prompt, strength=args.strength, **kw).images
    _write(images, args, out)
    return 0


def _run_outpaint(args) -> int:
    out, kw = _output_path(args.out), _common(args)
    image = _load_image(_existing_file(args.image))
    images = _pipeline(args).outpaint(image, args.prompt, left=args.left, top=args.top, right=args.right,
                                      bottom=args.bottom, fill=args.fill, **kw).images
    _write(images, args, out)
    return 0


def _run_convert(args) -> int:
    from canvas_jax.convert.pipeline import from_diffusers, to_diffusers

    fn = from_diffusers if args.direction == "from-diffusers" else to_diffusers
    dst = fn(args.src, args.dst, overwrite=args.overwrite)
    print(f"wrote {dst}")
    return 0


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {
    "sample": ("text to image; writes a PNG grid", _add_sample, _run_sample),
    "inpaint": ("repaint the white part of a mask", _add_inpaint, _run_inpaint),
    "outpaint": ("extend an image's canvas and paint the border", _add_outpaint, _run_outpaint),
    "convert": ("convert pipelines between diffusers and canvas_jax formats", _add_convert, _run_convert),
    "data": ("build training datasets (ArrayRecord)", add_data_arguments, run_data),
    "train": ("train a VAE, a text-to-image or an inpainting model", add_train_arguments, run_train),
    "eval": ("score a model: Shapes adherence, CIFAR-10 classifier metrics, inpainting", add_eval_arguments,
             run_eval),
    "rl": ("preference data for fine-tuning toward rewards (collect)", add_rl_arguments, run_rl),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="canvas_jax: latent diffusion in JAX")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add, _) in COMMANDS.items():
        add(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse printed the usage error (code 2) or the help (code 0)
        return int(exit_.code or 0)
    try:
        return COMMANDS[args.command][2](args)
    except USAGE_ERRORS as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
