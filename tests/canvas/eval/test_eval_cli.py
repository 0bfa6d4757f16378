"""``canvas-jax eval shapes|cifar10|inpaint`` (and the functions behind it) on a tiny random pipeline: one
JSON object with the metrics in range, the grid / report / classifier files written, archives extracted once,
a saved classifier reused, and bad input exits 2 with one line."""

import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from canvas_jax import Pipeline
from canvas_jax.cli import main
from canvas_jax.data.shapes import ShapesConfig
from canvas_jax.errors import InputError
from canvas_jax.eval import (
    ClassifierConfig,
    ClassifierModelConfig,
    SamplingOptions,
    evaluate_cifar10,
    evaluate_inpaint,
)
from core_jax.loop import TrainConfig

pytest.importorskip("diffusers")

FAST = ["--steps", "2", "--batch-size", "4", "--seed", "1", "--no-progress"]


def _report(capsys) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    return json.loads(lines[-1])


def test_shapes(tiny_sd, tmp_path, capsys):
    grid, out = tmp_path / "grid.png", tmp_path / "shapes.json"
    rc = main(["eval", "shapes", "--model", str(tiny_sd), "--num-prompts", "3", "--grid", str(grid),
               "--out", str(out), *FAST])
    assert rc == 0
    report = _report(capsys)
    assert report == json.loads(out.read_text())
    for key in ("adherence", "adherence_seen", "adherence_heldout"):
        assert 0.0 <= report[key] <= 1.0
    assert (report["n_seen"], report["n_heldout"], report["steps"], report["sampler"]) == (3, 3, 2, "dpmpp_2m")
    assert report["image_size"] == 32 and report["heldout_combinations"] == ["green triangle"]
    assert Image.open(grid).size[0] == 6 * 128


@pytest.fixture(scope="module")
def pipe(tiny_sd):
    return Pipeline.from_pretrained(tiny_sd)


def test_inpaint(pipe):
    opts = SamplingOptions(num_steps=2, batch_size=4, seed=1)
    report = evaluate_inpaint(pipe, ShapesConfig(resolution=pipe.default_size), num_images=3, opts=opts)
    assert 0.0 <= report["adherence_in_mask"] <= 1.0 and report["adherence_input"] == 1.0
    assert 0.0 < report["unmasked_psnr_db"] < 100.0  # no paste-back: the random model changes the outside
    assert report["n"] == 3 and report["masks"] == "shape"
    assert json.loads(json.dumps(report)) == report  # plain JSON values (no inf / nan)


def test_generate_with_eta(pipe):
    """SamplingOptions.eta reaches the sampler: DDIM with eta 1 differs from eta 0 and repeats from its seed."""
    from canvas_jax.eval.sampling import generate

    prompts = ["a small red circle at the center"] * 2

    def run(**kw):
        return generate(pipe, prompts, SamplingOptions(sampler="ddim", num_steps=3, batch_size=2, **kw))

    eta1 = run(eta=1.0, seed=3)
    assert np.array_equal(eta1, run(eta=1.0, seed=3))
    assert not np.array_equal(eta1, run(eta=0.0, seed=3))
    assert SamplingOptions(eta=0.5).describe()["eta"] == 0.5 and "eta" not in SamplingOptions().describe()
    with pytest.raises(InputError, match="eta"):
        SamplingOptions(eta=-1.0)


def _class_folders(root, classes=("red", "blue_sky"), per_class=6, size=16):
    g = np.random.default_rng(0)
    for split in ("train", "test"):
        for i, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True)
            for k in range(per_class):
                img = g.integers(0, 60, (size, size, 3)) + np.array([180 * (i == 0), 0, 180 * (i == 1)])
                Image.fromarray(img.astype(np.uint8)).save(root / split / cls / f"{k:04d}.jpg")
    (root / "train" / "red" / "broken.jpg").write_bytes(b"not a jpeg")  # skipped, as in `data build`
    return root


def test_cifar10_from_archives_then_folders(tiny_sd, pipe, tmp_path, capsys, mobilenet_cache, monkeypatch):
    monkeypatch.setenv("CANVAS_JAX_CACHE", str(mobilenet_cache))  # the pretrained MobileNetV2, converted once
    folders = _class_folders(tmp_path / "images")
    archives = tmp_path / "archives"
    archives.mkdir()
    for split in ("train", "test"):
        with tarfile.open(archives / f"toy-{split}.tar.gz", "w:gz") as tar:
            tar.add(folders / split, arcname=split)
    clf, cache = tmp_path / "clf.safetensors", tmp_path / "cache"
    # the Python function on the archives: extracted into the cache, a tiny classifier trained and saved
    tiny = ClassifierConfig(model=ClassifierModelConfig(num_classes=2, widths=(8,), feature_dim=8, groups=4),
                            train=TrainConfig(steps=2, batch_size=8, run_dir=str(tmp_path / "clf_run"),
                                              progress=False, tensorboard=False))
    opts = SamplingOptions(num_steps=2, batch_size=4, seed=1)
    first = evaluate_cifar10(pipe, archives, clf, per_class=2, opts=opts,
                             cache_dir=cache, classifier_config=tiny)
    assert clf.is_file() and first["classifier_trained_now"]
    assert [p.name[:9] for p in cache.iterdir()] == ["archives_"]
    for key in ("classifier_accuracy", "classifier_test_accuracy"):
        assert 0.0 <= first[key] <= 1.0
    assert first["classifier_frechet_distance"] >= 0.0
    assert first["classes"] == ["blue_sky", "red"] and set(first["per_class_accuracy"]) == {"blue_sky", "red"}
    assert (first["n_generated"], first["n_real"], first["image_size"]) == (4, 12, 16)
    # the CLI on the same data as plain folders: the saved classifier is reused, the numbers are the same
    assert "mobilenet_frechet_distance" not in first  # the Python function: only when given a MobileNetV2
    assert main(["eval", "cifar10", "--model", str(tiny_sd), "--data", str(folders), "--classifier", str(clf),
                 "--per-class", "2", "--mobilenet-size", "32", *FAST]) == 0
    second = _report(capsys)
    assert not second["classifier_trained_now"]
    assert second["mobilenet_frechet_distance"] > 0 and second["mobilenet_size"] == 32
    for key in ("classifier_accuracy", "classifier_frechet_distance", "classifier_test_accuracy"):
        assert second[key] == pytest.approx(first[key], rel=1e-5, abs=1e-6)
    # a classifier for another number of classes is refused
    (folders / "train" / "green").mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(folders / "train" / "green" / "0.jpg")
    assert main(["eval", "cifar10", "--model", str(tiny_sd), "--data", str(folders), "--classifier", str(clf),
                 *FAST]) == 2
    assert "has 2 classes but the data has 3" in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    (["shapes", "--model", "{missing}"], "folder does not exist"),
    (["shapes", "--model", "{model}", "--out", "{tmp}/r.txt"], "expected a .json"),
    (["shapes", "--model", "{model}", "--num-prompts", "0"], "--num-prompts"),
    (["shapes", "--model", "{model}", "--steps", "0"], "steps must be >= 1"),
    (["shapes", "--model", "{model}", "--holdout", "green"], "COLOUR:SHAPE"),
    (["cifar10", "--model", "{model}", "--data", "{tmp}", "--classifier", "{tmp}/c.safetensors"],
     "unrecognised layout"),
    (["cifar10", "--model", "{model}", "--data", "{missing}", "--classifier", "{tmp}/c.safetensors"],
     "does not exist"),
    (["inpaint", "--model", "{model}", "--masks", "circles"], "invalid choice"),
    (["imagenet", "--model", "{model}"], "invalid choice"),
])
def test_bad_input_exits_2_with_one_line(tiny_sd, tmp_path, capsys, argv, match):
    argv = [a.format(missing=tmp_path / "missing", model=tiny_sd, tmp=tmp_path) for a in ["eval", *argv]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert match in err[-1] and err[-1].startswith("canvas-jax")


@pytest.mark.parametrize("exc", [TypeError, ValueError, KeyError])
def test_a_bug_is_not_a_usage_error(tmp_path, monkeypatch, exc):
    """Only our own checks' errors are usage errors (exit 2); a bug inside keeps its type and traceback."""
    from canvas_jax.data import shapes

    def broken(*args, **kwargs):
        raise exc("an internal bug")

    monkeypatch.setattr(shapes, "parse_holdout", broken)  # called before the model loads
    with pytest.raises(exc, match="an internal bug"):
        main(["eval", "shapes", "--model", str(tmp_path), "--holdout", "green:triangle", *FAST])


def test_a_built_dataset_without_the_split_is_bad_input(tmp_path):
    from canvas_jax.data.ingest import build_image_folder
    from canvas_jax.eval.class_folders import load_split

    folders = _class_folders(tmp_path / "images", per_class=2)
    path, _ = build_image_folder(folders / "train", tmp_path / "data")
    with pytest.raises(InputError, match="has no split 'test'; it has train"):
        load_split(path, "test")
