"""A run folder alone reproduces its samples: the VAE's latent scale is stored with the VAE when its training
ends and in every run that uses it (never re-read from a log), and loading honours dtype / param_dtype."""

import json
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import fakes
from conftest import tiny_config

from canvas_jax.pipeline import Pipeline
from canvas_jax.runs import MANIFEST, read_manifest, restore_run
from canvas_jax.train.run import train
from core_jax.metrics import read_jsonl

PROMPTS = ["a red square at the top left", "a blue square at the bottom right"]


def _sample(path, **kw):
    return Pipeline.from_pretrained(path, **kw)(PROMPTS, num_steps=2, guidance_scale=3.0, seed=1,
                                                output_type="np").images


def test_a_run_folder_alone_reproduces_its_samples(tmp_path):
    vae_dir, run = tmp_path / "vae", tmp_path / "t2i"
    cfg = tiny_config(run, vae_path=vae_dir, **{"train.steps": 2, "vae.pretrain_steps": 2, "sampling.prompts": []})
    train(cfg, data_fn=fakes.data_fn())

    # the scale is measured when pretraining ends and stored with the VAE and with the run that uses it
    last_eval = read_jsonl(vae_dir / "metrics.jsonl", "eval")[-1]
    scale = read_manifest(vae_dir)["modules"]["vae"]["scaling_factor"]
    assert scale == pytest.approx(1.0 / math.sqrt(last_eval["latent_ms"]))
    assert scale != cfg.vae.config["scaling_factor"]
    assert read_manifest(run)["modules"]["vae"]["scaling_factor"] == scale
    assert restore_run(run).model.vae.scaling_factor == pytest.approx(scale)
    want = _sample(run)

    # the VAE run's log says something else now: the samples do not change
    with open(vae_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({**last_eval, "step": last_eval["step"] + 1, "latent_ms": 100.0}) + "\n")
    np.testing.assert_array_equal(_sample(run), want)

    # the run folder copied alone, the VAE run gone: it loads and samples the same
    moved = tmp_path / "elsewhere" / "t2i"
    shutil.copytree(run, moved)
    shutil.rmtree(vae_dir)
    np.testing.assert_array_equal(_sample(moved), want)

    # dtype / param_dtype are honoured for a run folder as for any pipeline folder
    pipe = Pipeline.from_pretrained(moved, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    for model in (pipe.unet, pipe.vae, pipe.components.text_encoder):
        dtypes = {x.dtype for x in jax.tree.leaves(nnx.state(model)) if jnp.issubdtype(x.dtype, jnp.floating)}
        assert dtypes == {jnp.dtype(jnp.bfloat16)}, (type(model).__name__, dtypes)
    assert pipe.unet.dtype == jnp.bfloat16
    low = _sample(moved, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    assert low.shape == want.shape and np.abs(low - want).mean() < 0.1

    # a folder without its models.json (an unfinished VAE run, or one written before) is a clear error
    (moved / MANIFEST).unlink()
    with pytest.raises(FileNotFoundError, match="models.json"):
        Pipeline.from_pretrained(moved)
