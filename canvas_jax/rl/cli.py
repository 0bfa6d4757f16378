"""``canvas-jax rl collect``: preference data from a model (see :mod:`canvas_jax.rl.collect`).

    canvas-jax rl collect --model RUN --prompts prompts.txt --per-prompt 4 --reward checker --out DIR
                          [--sampler dpmpp_2m] [--steps 20] [--guidance 3] [--seed 0] [--pairs all|best_worst]
                          [--test-fraction 0.1]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from canvas_jax.diffusion.plans import SAMPLERS
from canvas_jax.errors import USAGE_ERRORS, InputError

PROG = "canvas-jax"


def add_rl_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="rl_command", required=True)
    c = sub.add_parser("collect", help="sample candidates, score them, write preference pairs and a dataset",
                       description="sample candidates per prompt, score them, write preference pairs, review "
                                   "sheets and the pairs' ArrayRecord dataset")
    c.add_argument("--model", required=True, help="run folder or pipeline to sample from")
    c.add_argument("--prompts", required=True, help="text file, one prompt per line")
    c.add_argument("--out", required=True, help="output folder (new or empty)")
    c.add_argument("--per-prompt", type=int, default=4, help="candidates per prompt")
    c.add_argument("--reward", default="checker", help="NAME[:ARG][=WEIGHT],... of checker, checker_strict, "
                                                       "diversity, clip:RUN, learned:RUN")
    c.add_argument("--sampler", default="dpmpp_2m", choices=SAMPLERS)
    c.add_argument("--steps", type=int, default=20)
    c.add_argument("--guidance", type=float, default=3.0)
    c.add_argument("--eta", type=float, default=0.0)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--pairs", default="all", choices=("all", "best_worst"))
    c.add_argument("--min-gap", type=float, default=0.0, help="pair two candidates only if their scores differ more")
    c.add_argument("--test-fraction", type=float, default=0.0,
                   help="this fraction of the prompts gives the dataset's test split (held-out prompts)")


def run_rl(args) -> int:
    try:
        if args.rl_command != "collect":
            raise InputError(f"unknown rl command {args.rl_command!r}: expected collect")
        import canvas_jax
        from canvas_jax.rl.collect import CollectConfig, collect, read_prompts
        from canvas_jax.rl.rewards import parse_rewards

        cfg = CollectConfig(per_prompt=args.per_prompt, sampler=args.sampler, num_steps=args.steps,
                            guidance_scale=args.guidance, eta=args.eta, seed=args.seed, batch_size=args.batch_size,
                            pairs=args.pairs, min_gap=args.min_gap,
                            test_fraction=args.test_fraction)
        prompts, reward = read_prompts(args.prompts), parse_rewards(args.reward)
        if not Path(args.model).exists():
            raise FileNotFoundError(f"--model {args.model} does not exist")
        pipe = canvas_jax.Pipeline.from_pretrained(args.model)
        print(json.dumps(collect(pipe, prompts, reward, args.out, cfg, model=str(args.model))))
        return 0
    except USAGE_ERRORS as err:
        print(f"{PROG}: error: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
