"""task=clip: the image-text model trains on the shared loop (loss down, retrieval up), resumes exactly from a
checkpoint, reads back from its run folder, and rejects bad configs with a message naming the key."""

import json
import os

import numpy as np
import pytest

import fakes
from conftest import clip_config

from canvas_jax.eval import cli as eval_cli
from canvas_jax.image_text import load_image_text_model
from canvas_jax.train.tasks import make_task
from core_jax.config import ConfigError
from core_jax.loop import Hook, Trainer
from core_jax.metrics import read_jsonl


def test_clip_loss_decreases_and_retrieval_beats_chance(clip_run):
    run_dir, task, before, last = clip_run
    assert last["eval_loss"] < 0.8 * before["loss"], (before, last)
    losses = [r["loss"] for r in read_jsonl(os.path.join(run_dir, "metrics.jsonl"), "train")]
    assert len(losses) == 12 and np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    # 12 captions (colour x corner) over 16 test images
    assert last["eval_caption_to_image_recall@1"] > before["caption_to_image_recall@1"]
    assert last["eval_caption_to_image_recall@5"] >= 0.5
    assert task.cache.misses <= 12 + 16 and task.cache.hits > 0  # each distinct caption encoded once (per split)
    assert not os.path.exists(os.path.join(run_dir, "models.json"))  # the run reads back from config.yaml


def test_clip_resumes_exactly_from_a_checkpoint(clip_run, tmp_path):
    """Stopped at step 5 (checkpoint), then resumed by a fresh task (and text cache): steps 6-12 log the losses of
    the uninterrupted run."""
    straight = dict((r["step"], r["loss"]) for r in read_jsonl(os.path.join(clip_run[0], "metrics.jsonl"), "train"))

    def stop_at_5(trainer, step, state):
        if step == 5:
            trainer.request_stop()

    over = {"train.ema_decay": 0.9, "train.steps": 12}
    cfg = clip_config(tmp_path, **over)
    Trainer(make_task(cfg, data_fn=fakes.data_fn()), cfg, hooks=[Hook(every=1, fn=stop_at_5)]).fit()
    assert max(r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl", "train")) == 5
    cfg = clip_config(tmp_path, **over)
    Trainer(make_task(cfg, data_fn=fakes.data_fn()), cfg).fit()
    resumed = dict((r["step"], r["loss"]) for r in read_jsonl(tmp_path / "metrics.jsonl", "train"))
    assert sorted(resumed) == list(range(1, 13))
    for s in range(6, 13):
        assert resumed[s] == straight[s], (s, resumed[s], straight[s])


def test_loaded_model_embeds_images_and_texts(clip_run):
    run_dir = clip_run[0]
    clip = load_image_text_model(run_dir)
    assert clip.step == 12 and clip.embed_dim == 16
    examples = fakes.examples(6, 16, seed=1)
    images = np.stack([e["image"] for e in examples])
    captions = [e["caption"] for e in examples]
    img, txt = clip.embed_images(images), clip.embed_texts(captions)
    assert img.shape == (6, 16) and txt.shape == (6, 16) and img.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(img, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    assert clip.embed_images(images[0]).shape == (1, 16)  # one HWC image
    big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # another size is resized to the model's
    assert clip.embed_images(big).shape == (6, 16)
    np.testing.assert_allclose(clip.embed_texts(captions[:2]), txt[:2], atol=1e-5)  # batch-independent
    with pytest.raises(Exception, match="uint8 images"):
        clip.embed_images(images.astype(np.float32))
    with pytest.raises(Exception, match="list of caption strings"):
        clip.embed_texts("a red square at the top left")


def test_eval_clip_cli(clip_run, tmp_path, capsys):
    run_dir = clip_run[0]
    out = tmp_path / "report.json"
    assert eval_cli.main(["clip", "--model", run_dir, "--num-examples", "8", "--out", str(out)]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["eval"] == "clip" and report["n"] == 8 and report["split"] == "test"
    for key in ("caption_to_image_recall@1", "image_to_caption_recall@5", "caption_to_image_recall@1_heldout"):
        assert 0.0 <= report[key] <= 1.0
    assert json.loads(out.read_text())["n"] == 8
    assert eval_cli.main(["clip", "--model", run_dir, "--num-examples", "1"]) == 2
    assert "must be >= 2" in capsys.readouterr().err


def test_eval_clip_rejects_another_task(tmp_path, capsys):
    run = tmp_path / "vae_run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("task: vae\n")
    assert eval_cli.main(["clip", "--model", str(run)]) == 2
    assert "expected a task=clip run" in capsys.readouterr().err


@pytest.mark.parametrize("over, match", [
    ({"data.caption_dropout": 0.1}, "data.caption_dropout"),
    ({"clip.channels": [8, 16, 32, 64, 128]}, "image_size=16 does not halve 5 times"),
    ({"clip.init_temperature": 0.001}, "max_logit_scale"),
    ({"clip.text_hidden": -1}, "clip.text_hidden"),
])
def test_bad_clip_configs_name_the_key(tmp_path, over, match):
    with pytest.raises(ConfigError, match=match):
        make_task(clip_config(tmp_path, **over), data_fn=fakes.data_fn())


def test_clip_config_section_is_typed(tmp_path):
    with pytest.raises(ConfigError, match="clip.embed_dm.*did you mean 'clip.embed_dim'"):
        clip_config(tmp_path, **{"clip.embed_dm": 8})
    with pytest.raises(ConfigError, match="clip.eval_examples"):
        clip_config(tmp_path, **{"clip.eval_examples": 1})
