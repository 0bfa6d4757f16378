"""Strict vs lenient checker on the same samples of one run: what the minimum template fit alone changes.

    python benchmarks/checker_strict_vs_lenient.py RUN_DIR [scenes|single]

Samples 64 seen + 64 held-out prompts once (DPM-Solver++ 20 steps, guidance 3, seed 0) and prints one JSON line
with the adherence of each checker.
"""
import json
import sys

import numpy as np
from canvas_jax import Pipeline
from canvas_jax.data.checker import check
from canvas_jax.eval.sampling import SamplingOptions
from canvas_jax.eval.shapes_eval import generate_shapes, shapes_config_for

run, kind = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "scenes")
pipe = Pipeline.from_pretrained(run)
cfg = shapes_config_for(run, pipe.default_size)
s = generate_shapes(pipe, cfg, num_prompts=64, kind=kind, opts=SamplingOptions(sampler="dpmpp_2m", num_steps=20, guidance_scale=3.0, seed=0, batch_size=64))
out = {"run": run, "kind": kind}
for name, mf in (("strict", None), ("lenient", 0.0)):
    ok = np.array([bool(check(im, c) if mf is None else check(im, c, min_fit=mf)) for im, c in zip(s.images, s.captions)])
    h = np.asarray(s.heldout, bool)
    out[name] = {"seen": float(ok[~h].mean()), "heldout": float(ok[h].mean())}
print(json.dumps(out))
