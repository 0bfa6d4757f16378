"""A trained text-to-image run exports to a diffusers-format pipeline folder that loads back."""

import json
from pathlib import Path

import numpy as np
from flax import nnx

from canvas_jax.convert.diffusers_models import load_unet, load_vae
from core_jax.text.minilm import load_bert
from core_jax.text.tokenizer import Tokenizer
from canvas_jax.runs import load_config, restore_run
from canvas_jax.train.export import export_pipeline


def _flat(module):
    return {k: np.asarray(v[...]) for k, v in nnx.to_flat_state(nnx.state(module))}


def test_export_pipeline_round_trip(tmp_path, t2i_run):
    assert (Path(t2i_run) / "samples" / "step_000004.png").stat().st_size > 0  # the sample-grid hook ran
    out = export_pipeline(t2i_run, tmp_path / "pipe")
    index = json.loads((out / "model_index.json").read_text())
    assert index["text_encoder"] == ["transformers", "BertModel"]
    assert index["force_zeros_for_empty_prompt"] is False
    run = restore_run(t2i_run, ema=True)
    cfg, model = run.cfg, run.model
    unet = load_unet(out)
    want, got = _flat(model.unet), _flat(unet)
    assert want.keys() == got.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
    vae = load_vae(out)
    for k, v in _flat(vae).items():
        np.testing.assert_array_equal(v, _flat(model.vae)[k])
    bert = load_bert(out / "text_encoder")
    tok = Tokenizer.from_folder(out / "tokenizer")
    assert tok.model_max_length == cfg.text_encoder.max_length
    ids = tok(["a red square at the top left"])
    assert ids["input_ids"].shape == (1, cfg.text_encoder.max_length)
    states = bert(ids["input_ids"], ids["attention_mask"]).last_hidden_state
    assert states.shape[-1] == unet.config["cross_attention_dim"]
    sched = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == cfg.diffusion.prediction_type
    assert sched["num_train_timesteps"] == 1000


def test_pipeline_loads_run_and_export_as_trained(tmp_path, t2i_run):
    """Pipeline.from_pretrained on the run folder and on its diffusers export generates what the training
    run's sample-grid hook (one sampling path: a Pipeline on the live weights) generates: the BERT encoder gets
    its attention mask, the empty prompt is encoded (force_zeros_for_empty_prompt false) and the default size
    is the training size."""
    from canvas_jax.pipeline import Pipeline
    from canvas_jax.train.hooks import SampleGrid
    from canvas_jax.train.tasks import make_task

    cfg = load_config(t2i_run)
    model = restore_run(t2i_run, ema=True).model
    prompts = ["a red square at the top left", "a small blue circle at the center"]
    kw = dict(sampler="dpmpp_2m", num_steps=3, guidance_scale=3.0)
    want = SampleGrid(make_task(cfg), prompts, seed=0, image_size=cfg.data.image_size, **kw).images(model)
    run_pipe = Pipeline.from_pretrained(t2i_run)
    assert run_pipe.default_size == cfg.data.image_size
    got = run_pipe(prompts, output_type="np", seed=0, **kw).images
    np.testing.assert_allclose(got, want, atol=2e-5)
    exported = Pipeline.from_pretrained(export_pipeline(t2i_run, tmp_path / "pipe"))
    np.testing.assert_allclose(exported(prompts, output_type="np", seed=0, **kw).images, want, atol=2e-5)
