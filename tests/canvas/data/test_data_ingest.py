import csv
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from canvas_jax.data import ingest
from core_jax.data import dataset_metadata, open_split

CIFAR = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "images" / "cifar10-jpg-test.tar.gz"


def _image(path: Path, seed: int, size=(20, 12), fmt=None):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    return pixels


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "pets"
    for c, cls in enumerate(("cat", "hot_dog")):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            _image(root / cls / f"{i}.png", 10 * c + i)
    (root / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_class_folder_round_trip_and_corrupt_image_counted(class_folder, tmp_path, capsys):
    path, report = ingest.build_image_folder(class_folder, tmp_path / "out")
    src = open_split(path, "train")
    assert len(src) == 4
    records = sorted((src[i]["file"].decode(), src[i]) for i in range(len(src)))
    files = [f for f, _ in records]
    assert files == ["cat/0.png", "cat/1.png", "hot_dog/0.png", "hot_dog/1.png"]
    for f, r in records:
        np.testing.assert_array_equal(r["image"], np.asarray(Image.open(class_folder / f).convert("RGB")))
        cls = f.split("/")[0]
        assert r["caption"].decode() == f"a photo of a {cls.replace('_', ' ')}"
        assert r["label"] == ["cat", "hot_dog"].index(cls)
    assert report.splits["train"] == {"found": 5, "written": 4, "skipped": 1}
    assert report.ignored_files == 1
    saved = json.loads((Path(path) / ingest.REPORT_FILE).read_text())
    assert saved["skipped"] == 1 and saved["skipped_files"][0]["file"] == "cat/broken.jpg"
    assert "1 skipped" in capsys.readouterr().out
    assert dataset_metadata(path)["classes"] == ["cat", "hot_dog"]
    with pytest.raises(FileExistsError, match="overwrite"):
        ingest.build_image_folder(class_folder, tmp_path / "out")


def test_captions_jsonl_resized_with_missing_and_bad_rows(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    _image(root / "wide.png", 1, size=(40, 20))
    _image(root / "tall.jpg", 2, size=(10, 30), fmt="JPEG")
    (root / "empty.png").write_bytes(b"")
    rows = [{"file": "wide.png", "caption": "a wide one"}, {"file": "tall.jpg", "caption": "a tall one"},
            {"file": "empty.png", "caption": "nothing"}, {"file": "gone.png", "caption": "missing"}]
    lines = [json.dumps(r) for r in rows] + ["{not json", json.dumps({"caption": "no file"})]
    (root / "captions.jsonl").write_text("\n".join(lines) + "\n")
    path, report = ingest.build_captioned_folder(root, tmp_path / "out", size=8, verbose=False)
    src = open_split(path, "train")
    got = {src[i]["caption"].decode(): src[i] for i in range(len(src))}
    assert set(got) == {"a wide one", "a tall one"}
    assert all(r["image"].shape == (8, 8, 3) for r in got.values())
    assert report.splits["train"]["written"] == 2 and report.skipped == 4
    reasons = " | ".join(s["reason"] for s in report.skipped_files)
    assert "missing file" in reasons and "bad JSON" in reasons and "no 'file'" in reasons
    meta = dataset_metadata(path)
    captions = meta["captions"]
    assert [captions[int(r["caption_index"])] for r in got.values()] == list(got)


def test_captions_csv_and_bad_header(tmp_path):
    root = tmp_path / "csvimgs"
    root.mkdir()
    pixels = _image(root / "a.png", 3)
    with open(root / "captions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "caption"])
        w.writerow(["a.png", "a caption, with a comma"])
    rows, used = ingest.read_captions(root)
    assert used.name == "captions.csv" and rows[0][1:] == ("a caption, with a comma", "")
    path, _ = ingest.build_captioned_folder({"train": root}, tmp_path / "out", verbose=False)
    rec = open_split(path, "train")[0]
    np.testing.assert_array_equal(rec["image"], pixels)
    (root / "captions.csv").write_text("path,text\na.png,x\n")
    with pytest.raises(ValueError, match="expected columns 'file' and 'caption'"):
        ingest.read_captions(root)


def test_resize_center_crop_keeps_the_middle():
    img = Image.fromarray(np.arange(40 * 20 * 3, dtype=np.uint8).reshape(20, 40, 3) * 0 + 255)
    img.paste((0, 0, 0), (10, 0, 30, 20))  # black middle half of a 40x20 image
    out = np.asarray(ingest.resize_center_crop(img, 10))
    assert out.shape == (10, 10, 3) and out[:, 2:8].max() < 40


@pytest.mark.skipif(not CIFAR.is_file(), reason="../shared/data/images (CIFAR-10 JPEGs) is absent")
def test_cifar10_class_folders(tmp_path):
    root = tmp_path / "cifar"
    with tarfile.open(CIFAR) as tar:
        picked, per_class = [], {}
        for m in tar:
            parts = m.name.split("/")
            if m.isfile() and len(parts) == 3 and per_class.get(parts[1], 0) < 2:
                per_class[parts[1]] = per_class.get(parts[1], 0) + 1
                picked.append(m)
            if len(per_class) == 10 and all(v == 2 for v in per_class.values()):
                break
        tar.extractall(root, members=picked, filter="data")
    path, report = ingest.build_image_folder({"test": root / "test"}, tmp_path / "out", name="cifar10_mini",
                                             verbose=False)
    src = open_split(path, "test")
    assert len(src) == 20 and report.skipped == 0
    rec = src[0]
    assert rec["image"].shape == (32, 32, 3)
    assert dataset_metadata(path)["classes"][0] == "airplane"
    assert rec["caption"].decode() == f"a photo of a {dataset_metadata(path)['classes'][rec['label']]}"
    assert os.path.basename(path) == "1.0.0"


def test_all_images_unreadable_is_a_clear_error(tmp_path):
    (tmp_path / "src" / "cls").mkdir(parents=True)
    (tmp_path / "src" / "cls" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="no readable image in split 'train'.*bad.png"):
        ingest.build_image_folder(tmp_path / "src", tmp_path / "out", verbose=False)
    assert not (tmp_path / "out" / "src").exists()  # no half-written dataset left behind
