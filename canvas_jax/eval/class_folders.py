"""Labelled real images for the class-conditional evaluation (e.g. CIFAR-10), from one of three layouts:

* a folder with ``train/<class>/<image>`` and ``test/<class>/<image>``;
* a folder with two archives, ``*train*.tar.gz`` and ``*test*.tar.gz``, holding that layout (extracted once
  into ``cache_dir``);
* a dataset built by ``canvas-jax data build --kind folder`` with ``train`` and ``test`` splits.

Classes are the sorted train folder names (as :func:`canvas_jax.data.ingest.build_image_folder` numbers them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np

from canvas_jax.data import ingest
from canvas_jax.errors import InputError

SPLITS = ("train", "test")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_DONE = ".extracted"
LAYOUTS = ("a folder with train/ and test/ class folders, a folder with *train*.tar.gz and *test*.tar.gz "
           "archives of that layout, or a dataset built by `canvas-jax data build --kind folder` with train and "
           "test splits")


@dataclasses.dataclass
class LabelledImages:
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int32 [N]
    classes: list[str]


def _built_dataset(path: Path) -> Path | None:
    for candidate in (path, path / "1.0.0"):
        if (candidate / "dataset_info.json").is_file():
            return candidate
    return None


def _archives(path: Path) -> dict[str, Path]:
    files = [p for p in sorted(path.iterdir()) if p.is_file() and p.name.endswith(ARCHIVE_SUFFIXES)]
    found = {}
    for split in SPLITS:
        matches = [p for p in files if split in p.name]
        if len(matches) > 1:
            raise InputError(f"--data {path}: several {split} archives ({', '.join(p.name for p in matches)}); "
                             "expected one")
        if matches:
            found[split] = matches[0]
    return found


def _extract(archives: dict[str, Path], cache_dir: Path) -> Path:
    """Extract both archives into one cache folder (reused when already complete); returns it."""
    key = "|".join(f"{p.resolve()}:{p.stat().st_size}" for p in archives.values())
    dest = cache_dir / f"{ingest.dataset_name(archives['train'].parent.name)}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    if (dest / _DONE).is_file():
        return dest
    if dest.exists():  # an interrupted extraction
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for split, archive in archives.items():
        print(f"extracting {archive} -> {dest}", flush=True)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(dest, filter="data")
        except (tarfile.TarError, OSError) as err:
            shutil.rmtree(dest, ignore_errors=True)
            raise InputError(f"cannot extract {archive}: {err}") from None
        if not (dest / split).is_dir():
            shutil.rmtree(dest, ignore_errors=True)
            raise InputError(f"{archive} holds no top-level {split}/ folder; expected {split}/<class>/<image> inside")
    (dest / _DONE).write_text("ok\n")
    return dest


def resolve_root(data: str | os.PathLike, cache_dir: str | os.PathLike = "out/eval_cache") -> Path:
    """The folder to read: ``data`` itself (class folders or a built dataset) or the archives' extraction."""
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"--data {data} does not exist; expected {LAYOUTS}")
    if not path.is_dir():
        raise InputError(f"--data {data} is a file; expected {LAYOUTS}")
    built = _built_dataset(path)
    if built is not None:
        return built
    if all((path / s).is_dir() for s in SPLITS):
        return path
    archives = _archives(path)
    if set(archives) == set(SPLITS):
        return _extract(archives, Path(cache_dir))
    raise InputError(f"--data {data}: unrecognised layout; expected {LAYOUTS}")


def _from_folder(folder: Path, classes: list[str] | None, size: int | None) -> LabelledImages:
    names, items, _ = ingest.scan_class_folder(folder)
    if not items:
        raise InputError(f"{folder}: no image files in its class folders")
    classes = classes or names
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise InputError(f"{folder} has classes {unknown} that the train split lacks; expected a subset of {classes}")
    index = {c: i for i, c in enumerate(classes)}
    images, labels = [], []
    for path, label in items:
        try:
            image = ingest.load_image(path, size)
        except ingest.ImageReadError:
            continue  # unreadable files are skipped, as in `data build`
        if size is None:
            size = min(image.shape[:2])
            image = ingest.load_image(path, size)
        images.append(image)
        labels.append(index[names[label]])
    if not images:
        raise InputError(f"{folder}: no readable image")
    return LabelledImages(np.stack(images), np.asarray(labels, np.int32), list(classes))


def _from_built(path: Path, split: str, size: int | None) -> LabelledImages:
    from canvas_jax.data.loader import open_split
    from core_jax import data as data_lib

    meta = data_lib.dataset_metadata(path)
    classes = meta.get("classes")
    if not classes:
        raise InputError(f"{path} is not a class-folder dataset (no 'classes' in its metadata); build it with "
                         "`canvas-jax data build --kind folder`")
    source = open_split(path, split)
    images = [np.asarray(source[i]["image"], np.uint8) for i in range(len(source))]
    labels = np.asarray([int(source[i]["label"]) for i in range(len(source))], np.int32)
    if size is not None or len({im.shape for im in images}) > 1:
        from PIL import Image

        size = size or min(images[0].shape[:2])
        images = [np.asarray(ingest.resize_center_crop(Image.fromarray(im), size)) for im in images]
    return LabelledImages(np.stack(images), labels, list(classes))


def load_split(root: str | os.PathLike, split: str, *, classes: list[str] | None = None,
               size: int | None = None) -> LabelledImages:
    """One split of a root from :func:`resolve_root` as uint8 arrays (``size``: resize + centre-crop; default:
    the first image's size). ``classes`` (from the train split) fixes the label numbering of other splits."""
    if split not in SPLITS:
        raise InputError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    root = Path(root)
    if _built_dataset(root) is not None:
        out = _from_built(root, split, size)
        if classes is not None and out.classes != list(classes):
            raise InputError(f"{root}: classes {out.classes} differ from {list(classes)}")
        return out
    if not (root / split).is_dir():
        raise InputError(f"{root}: no {split}/ folder; expected {LAYOUTS}")
    return _from_folder(root / split, classes, size)


def class_names(root: str | os.PathLike) -> list[str]:
    """The class names of a root (the train split's), without reading images."""
    root = Path(root)
    built = _built_dataset(root)
    if built is not None:
        from core_jax import data as data_lib

        classes = data_lib.dataset_metadata(built).get("classes")
        if not classes:
            raise InputError(f"{root} is not a class-folder dataset (no 'classes' in its metadata)")
        return list(classes)
    return ingest.scan_class_folder(root / "train")[0]
