"""`data build --kind preferences`: pairs.jsonl -> dataset; bad lines and unreadable images skipped and counted."""

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from canvas_jax.data import cli
from core_jax.data import open_split


def _png(path: Path, value: int, size: int = 8) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path.name


def test_build_preferences_keeps_good_pairs_and_counts_the_rest(tmp_path, capsys):
    for i in range(4):
        _png(tmp_path / "img" / f"{i}.png", 40 * i)
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    _png(tmp_path / "img" / "big.png", 9, size=12)
    lines = [
        {"prompt": "a red circle", "chosen": "img/0.png", "rejected": "img/1.png", "chosen_score": 0.75,
         "rejected_score": 0.25, "chosen_seed": 3, "rejected_seed": 4, "sampler": {"name": "ddim", "steps": 20}},
        {"prompt": "a blue square", "chosen": str(tmp_path / "img" / "2.png"), "rejected": "img/3.png"},
        {"prompt": "held out", "chosen": "img/3.png", "rejected": "img/0.png", "split": "test"},
        {"prompt": "x", "chosen": "img/missing.png", "rejected": "img/0.png"},
        {"prompt": "x", "chosen": "img/broken.png", "rejected": "img/0.png"},
        {"prompt": "x", "chosen": "img/big.png", "rejected": "img/0.png"},
        {"prompt": "x", "chosen": "img/0.png"},
        {"prompt": "x", "chosen": "img/0.png", "rejected": "img/1.png", "chosen_seed": 1.5},
    ]
    text = "\n".join(json.dumps(r) for r in lines) + "\n{not json\n"
    (tmp_path / "pairs.jsonl").write_text(text)
    code = cli.main(["build", "--kind", "preferences", "--src", str(tmp_path / "pairs.jsonl"), "--out",
                     str(tmp_path / "out")])
    path = capsys.readouterr().out.strip().splitlines()[-1]
    assert code == 0
    train, test = open_split(path, "train"), open_split(path, "test")
    assert len(train) == 2 and len(test) == 1
    first = train[0]
    assert first["caption"].decode() == "a red circle" and first["chosen"].shape == (8, 8, 3)
    assert int(first["chosen"][0, 0, 0]) == 0 and int(first["rejected"][0, 0, 0]) == 40
    assert float(first["chosen_score"]) == 0.75 and int(first["rejected_seed"]) == 4
    assert json.loads(first["info"].decode()) == {"sampler": {"name": "ddim", "steps": 20}}
    assert math.isnan(float(train[1]["chosen_score"])) and int(train[1]["chosen_seed"]) == -1
    report = json.loads((Path(path) / "build_report.json").read_text())
    assert report["written"] == 3 and report["skipped"] == 6
    reasons = " | ".join(f["reason"] for f in report["skipped_files"])
    for expected in ("FileNotFoundError", "cannot identify image", "image sizes differ", "no 'rejected' text",
                     "expected an integer", "bad JSON"):
        assert expected in reasons, (expected, reasons)
    # with --size both images of the odd pair are resized: it is kept
    assert cli.main(["build", "--kind", "preferences", "--src", str(tmp_path / "pairs.jsonl"), "--out",
                     str(tmp_path / "out"), "--size", "4", "--overwrite", "--name", "resized"]) == 0
    resized = capsys.readouterr().out.strip().splitlines()[-1]
    assert len(open_split(resized, "train")) == 3 and open_split(resized, "train")[0]["chosen"].shape == (4, 4, 3)


def test_preferences_errors_exit_2(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("\n")
    for args in (["--src", str(tmp_path / "none.jsonl")], ["--src", str(tmp_path / "empty.jsonl")],
                 ["--src", f"train={tmp_path / 'empty.jsonl'}", "--src", f"test={tmp_path / 'empty.jsonl'}"]):
        assert cli.main(["build", "--kind", "preferences", "--out", str(tmp_path / "o"), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("canvas-jax: error:") and len(err.strip().splitlines()) == 1
