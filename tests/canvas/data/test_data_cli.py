import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from canvas_jax.data import cli
from core_jax.data import open_split


def test_build_shapes(tmp_path, capsys):
    code = cli.main(["build", "--kind", "shapes", "--out", str(tmp_path), "--train-examples", "6",
                     "--test-examples", "2", "--resolution", "16", "--holdout", "red:circle"])
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and any("held out: red circle" in line for line in out)
    src = open_split(out[-1], "train")
    assert len(src) == 6 and src[0]["image"].shape == (16, 16, 3)
    assert all("red circle" not in src[i]["caption"].decode() for i in range(6))
    # same recipe: reused; another recipe under the same name: refused unless --overwrite
    again = ["build", "--kind", "shapes", "--out", str(tmp_path), "--train-examples", "6", "--test-examples", "2",
             "--resolution", "16", "--name", "mine"]
    assert cli.main(again) == 0 and cli.main(again) == 0
    capsys.readouterr()
    assert cli.main(again[:-2] + ["--name", "mine", "--seed", "1"]) == 2
    assert "another Shapes recipe" in capsys.readouterr().err
    assert cli.main(again + ["--seed", "1", "--overwrite"]) == 0


def test_build_folder_with_splits(tmp_path, capsys):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / split / cls / "x.png")
    code = cli.main(["build", "--kind", "folder", "--src", f"train={tmp_path / 'train'}", "--src",
                     f"test={tmp_path / 'test'}", "--out", str(tmp_path / "out"), "--size", "4",
                     "--template", "a {class} picture"])
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0 and len(open_split(path, "test")) == 2
    assert open_split(path, "train")[1]["caption"].decode() == "a b picture"
    assert json.loads((Path(path) / "build_report.json").read_text())["written"] == 4


def test_errors_are_one_line_exit_2(tmp_path, capsys):
    cases = [["build", "--kind", "folder", "--out", str(tmp_path)],
             ["build", "--kind", "captions", "--src", str(tmp_path / "missing"), "--out", str(tmp_path)],
             ["build", "--kind", "folder", "--src", str(tmp_path), "--out", str(tmp_path), "--template", "x"],
             ["build", "--kind", "shapes", "--out", str(tmp_path), "--holdout", "green:hexagon"],
             ["build", "--kind", "shapes", "--out", str(tmp_path), "--resolution", "8"],
             ["build", "--kind", "shapes", "--out", str(tmp_path), "--train-examples", "0"],
             ["build", "--kind", "folder", "--src", str(tmp_path), "--out", str(tmp_path), "--size", "0"]]
    for argv in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("canvas-jax: error: "), err


@pytest.mark.parametrize("exc", [TypeError, ValueError, KeyError])
def test_a_bug_is_not_a_usage_error(tmp_path, monkeypatch, exc):
    """Only our own checks' errors are usage errors (exit 2); a bug inside keeps its type and traceback."""
    from canvas_jax.data import shapes

    def broken(*args, **kwargs):
        raise exc("an internal bug")

    monkeypatch.setattr(shapes, "build_shapes", broken)
    with pytest.raises(exc, match="an internal bug"):
        cli.main(["build", "--kind", "shapes", "--out", str(tmp_path), "--train-examples", "2"])
