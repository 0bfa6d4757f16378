"""Ingest a user's images into an ArrayRecord TFDS dataset (no TensorFlow), with a build report.

Two layouts:

* :func:`build_image_folder`: ``root/<class>/<image>``, one subfolder per class; captions from a template
  (``"a photo of a {class}"``; underscores in folder names become spaces); records get ``label``.
* :func:`build_captioned_folder`: ``root/`` with images plus ``captions.jsonl`` (one
  ``{"file": ..., "caption": ...}`` per line) or ``captions.csv`` (header ``file,caption``); records get
  ``caption_index`` (index into the sorted unique captions, kept in the dataset metadata when few enough).

Either takes one folder (split ``train``) or ``{split: folder}``. Images are decoded with PIL, converted
to RGB and, with ``size``, resized (shorter side) and centre-cropped to ``size`` x ``size``. A file that
cannot be read or decoded, or a caption row that names a missing file, is skipped and counted: the report
(:class:`BuildReport`) is printed and saved as ``build_report.json`` in the dataset folder.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from pathlib import Path

import numpy as np
from PIL import Image

from canvas_jax.errors import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
DEFAULT_TEMPLATE = "a photo of a {class}"
MAX_CAPTIONS_IN_METADATA = 100_000
MAX_LISTED_SKIPS = 1000
REPORT_FILE = "build_report.json"


class ImageReadError(Exception):
    """An image file that could not be read or decoded."""


@dataclasses.dataclass
class BuildReport:
    """What a build found, wrote and skipped (per split), and why each skipped file was skipped."""

    kind: str
    dataset_dir: str = ""
    splits: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    skipped_files: list[dict[str, str]] = dataclasses.field(default_factory=list)
    ignored_files: int = 0  # files without an image extension, not counted as images

    def _count(self, split: str, key: str) -> None:
        counts = self.splits.setdefault(split, {"found": 0, "written": 0, "skipped": 0})
        counts[key] += 1

    def skip(self, split: str, file: str, reason: str) -> None:
        self._count(split, "skipped")
        if len(self.skipped_files) < MAX_LISTED_SKIPS:
            self.skipped_files.append({"split": split, "file": file, "reason": reason})

    @property
    def written(self) -> int:
        return sum(s["written"] for s in self.splits.values())

    @property
    def skipped(self) -> int:
        return sum(s["skipped"] for s in self.splits.values())

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "written": self.written, "skipped": self.skipped}

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)

    def summary(self) -> str:
        parts = ", ".join(f"{s}: {c['written']} written, {c['skipped']} skipped" for s, c in self.splits.items())
        return f"{self.kind} dataset {self.dataset_dir}: {parts}" + (
            f"; {self.ignored_files} non-image files ignored" if self.ignored_files else "")


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` (bicubic, antialiased), then crop the centre square."""
    w, h = image.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        image = image.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (nw - size) // 2, (nh - size) // 2
    return image.crop((left, top, left + size, top + size))


def load_image(path: str | os.PathLike, size: int | None = None) -> np.ndarray:
    """An image file as uint8 [H, W, 3] RGB (resized / centre-cropped to ``size``); ImageReadError if bad."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
                if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                    rgba = img.convert("RGBA")
                    canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    img = Image.alpha_composite(canvas, rgba).convert("RGB")
                else:
                    img = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageReadError(f"{type(err).__name__}: {err}") from None
    if img.width < 1 or img.height < 1:
        raise ImageReadError(f"empty image {img.size}")
    if size is not None:
        img = resize_center_crop(img, size)
    return np.asarray(img, np.uint8)


def dataset_name(text: str) -> str:
    """A TFDS-safe dataset name (lowercase letters, digits, underscores; starts with a letter)."""
    name = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return name if name[:1].isalpha() else f"d_{name}"


def _splits(src) -> dict[str, Path]:
    folders = {"train": src} if isinstance(src, (str, os.PathLike)) else dict(src)
    if not folders:
        raise InputError("no source folders given")
    out = {}
    for split, folder in folders.items():
        if not re.fullmatch(r"[a-z][a-z0-9_]*", split):
            raise InputError(f"split name {split!r}: expected lowercase letters, digits and underscores")
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"source folder {folder} does not exist (split {split!r})")
        out[split] = folder
    return out


def _default_name(folders: Mapping[str, Path], size: int | None) -> str:
    """The source folder's name (the common parent's with several splits), plus the size."""
    paths = [p.resolve() for p in folders.values()]
    base = paths[0].name if len(paths) == 1 else Path(os.path.commonpath(paths)).name or "images"
    return dataset_name(f"{base}{'_' + str(size) if size else ''}")


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _features(size: int | None, extra: Mapping[str, object]):
    import tensorflow_datasets as tfds

    shape = (size, size, 3) if size else (None, None, 3)
    return {"image": tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding="zlib"),
            "caption": tfds.features.Text(), "file": tfds.features.Text(), **extra}


def _write(name: str, data_dir, features, splits: Mapping[str, Callable[[], Iterator]], report: BuildReport,
           metadata: dict, overwrite: bool, verbose: bool) -> str:
    from core_jax import data as data_lib

    root = Path(data_dir) / name
    if (root / "1.0.0" / "dataset_info.json").exists() or root.exists():
        if not overwrite:
            raise FileExistsError(f"dataset {root} already exists; pass overwrite=True (--overwrite) to rebuild it")
        shutil.rmtree(root)
    try:
        path = data_lib.build_dataset(name, data_dir, features, splits, metadata=metadata,
                                      description=f"ingested by canvas_jax.data.ingest ({report.kind})")
    except AssertionError as err:  # TFDS refuses a split with no examples
        shutil.rmtree(root, ignore_errors=True)
        empty = [s for s, c in report.splits.items() if c["written"] == 0] or ["?"]
        first = "; ".join(f"{f['file']}: {f['reason']}" for f in report.skipped_files[:3])
        raise InputError(f"no readable image in split {empty[0]!r} ({err}); skipped {report.skipped} "
                         f"file(s){', e.g. ' + first if first else ''}") from None
    report.dataset_dir = path
    report.save(Path(path) / REPORT_FILE)
    if verbose:
        print(report.summary())
        if report.skipped:
            print(f"skipped {report.skipped} file(s); see {Path(path) / REPORT_FILE}")
    return path


def _examples(split: str, items, size, report: BuildReport, root: Path, fields: Callable[[int], dict]):
    """(key, example) for each readable image; unreadable ones go to the report."""
    def gen():
        for i, (path, reason) in enumerate(items):
            report._count(split, "found")
            rel = os.path.relpath(path, root)
            if reason:
                report.skip(split, rel, reason)
                continue
            try:
                image = load_image(path, size)
            except ImageReadError as err:
                report.skip(split, rel, str(err))
                continue
            report._count(split, "written")
            yield i, {"image": image, "file": rel, **fields(i)}
    return gen


def scan_class_folder(folder: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]], int]:
    """(sorted class names, [(image path, class index)], number of non-image files ignored)."""
    folder = Path(folder)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"{folder}: expected one subfolder per class, found none")
    items, ignored = [], 0
    for label, cls in enumerate(classes):
        for path in sorted((folder / cls).rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                if _is_image(path):
                    items.append((path, label))
                else:
                    ignored += 1
    return classes, items, ignored


def build_image_folder(src, data_dir: str | os.PathLike, *, name: str | None = None,
                       template: str = DEFAULT_TEMPLATE, size: int | None = None, overwrite: bool = False,
                       verbose: bool = True) -> tuple[str, BuildReport]:
    """Class-subfolder images -> dataset with ``image``, ``caption`` (template), ``label``, ``file``.

    The class list comes from the first split's folder (``train`` for a single folder); other splits must
    use the same class names. Returns (dataset folder, report).
    """
    import tensorflow_datasets as tfds

    if "{class}" not in template:
        raise InputError(f"template {template!r}: expected a '{{class}}' placeholder, e.g. {DEFAULT_TEMPLATE!r}")
    if size is not None and size < 1:
        raise InputError(f"size={size}: expected a positive number of pixels (or None to keep sizes)")
    folders = _splits(src)
    report = BuildReport(kind="folder")
    classes, gens = None, {}
    for split, folder in folders.items():
        split_classes, items, ignored = scan_class_folder(folder)
        if not items:
            raise InputError(f"{folder}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in its class folders")
        report.ignored_files += ignored
        if classes is None:
            classes = split_classes
        unknown = sorted(set(split_classes) - set(classes))
        if unknown:
            raise InputError(f"split {split!r} ({folder}) has classes {unknown} that the first split lacks; "
                             f"expected a subset of {classes}")
        index = {c: i for i, c in enumerate(classes)}
        labels = [index[split_classes[label]] for _, label in items]
        captions = [template.replace("{class}", c.replace("_", " ")) for c in classes]
        gens[split] = _examples(split, [(p, "") for p, _ in items], size, report, folder,
                                lambda i, labels=labels, captions=captions: {
                                    "caption": captions[labels[i]], "label": labels[i], "caption_index": labels[i]})
    name = name or _default_name(folders, size)
    features = _features(size, {"label": tfds.features.Scalar(dtype=np.int32),
                                "caption_index": tfds.features.Scalar(dtype=np.int32)})
    metadata = {"kind": "folder", "classes": classes, "template": template, "size": size,
                "captions": [template.replace("{class}", c.replace("_", " ")) for c in classes]}
    return _write(name, data_dir, features, gens, report, metadata, overwrite, verbose), report


def json_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any, str]]:
    """(line number, parsed value, "") per non-empty line of a JSON-lines file; (line number, None, problem) for a
    line that is not JSON."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line), ""
            except json.JSONDecodeError as err:
                yield lineno, None, f"bad JSON ({err.msg})"


def read_captions(folder: str | os.PathLike, captions_file: str | os.PathLike | None = None
                  ) -> tuple[list[tuple[Path, str, str]], Path]:
    """Rows of ``captions.jsonl`` / ``captions.csv`` as (image path, caption, problem or ""), and the file read."""
    folder = Path(folder)
    if captions_file is None:
        found = [folder / n for n in ("captions.jsonl", "captions.csv") if (folder / n).is_file()]
        if not found:
            raise FileNotFoundError(f"{folder}: no captions.jsonl or captions.csv; expected one with "
                                    "'file' and 'caption' fields (or pass the captions file)")
        captions_file = found[0]
    captions_file = Path(captions_file)
    if not captions_file.is_file():
        raise FileNotFoundError(f"captions file {captions_file} does not exist")
    rows: list[tuple[Path, str, str]] = []

    def add(lineno, record):
        if not isinstance(record, dict) or not isinstance(record.get("file"), str) or not record.get("file"):
            rows.append((captions_file, "", f"line {lineno}: no 'file' field"))
        elif not isinstance(record.get("caption"), str):
            rows.append((folder / record["file"], "", f"line {lineno}: no 'caption' text"))
        else:
            path = folder / record["file"]
            rows.append((path, record["caption"], "" if path.is_file() else "missing file"))

    if captions_file.suffix.lower() == ".csv":
        with open(captions_file, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"file", "caption"} - set(reader.fieldnames or ())
            if missing:
                raise InputError(f"{captions_file}: header {reader.fieldnames} lacks {sorted(missing)}; "
                                 "expected columns 'file' and 'caption'")
            for lineno, record in enumerate(reader, start=2):
                add(lineno, record)
    else:
        for lineno, record, problem in json_lines(captions_file):
            if problem:
                rows.append((captions_file, "", f"line {lineno}: {problem}"))
            else:
                add(lineno, record)
    return rows, captions_file


def build_captioned_folder(src, data_dir: str | os.PathLike, *, captions_file: str | os.PathLike | None = None,
                           name: str | None = None, size: int | None = None, overwrite: bool = False,
                           verbose: bool = True) -> tuple[str, BuildReport]:
    """Images + ``captions.jsonl`` / ``.csv`` -> dataset with ``image``, ``caption``, ``caption_index``, ``file``.

    ``captions_file`` applies to a single source folder; with several splits each folder holds its own.
    """
    import tensorflow_datasets as tfds

    if size is not None and size < 1:
        raise InputError(f"size={size}: expected a positive number of pixels (or None to keep sizes)")
    folders = _splits(src)
    if captions_file is not None and len(folders) > 1:
        raise InputError("captions_file applies to one source folder; with several splits put a captions.jsonl "
                         "or captions.csv in each")
    report = BuildReport(kind="captions")
    rows = {split: read_captions(folder, captions_file)[0] for split, folder in folders.items()}
    for split, split_rows in rows.items():
        if not split_rows:
            raise InputError(f"the captions file of split {split!r} ({folders[split]}) has no rows")
    unique = sorted({caption for split_rows in rows.values() for _, caption, problem in split_rows if not problem})
    index = {c: i for i, c in enumerate(unique)}
    gens = {}
    for split, folder in folders.items():
        split_rows = rows[split]
        gens[split] = _examples(split, [(p, problem) for p, _, problem in split_rows], size, report, folder,
                                lambda i, r=split_rows: {"caption": r[i][1], "caption_index": index[r[i][1]]})
    name = name or _default_name(folders, size)
    features = _features(size, {"caption_index": tfds.features.Scalar(dtype=np.int32)})
    metadata = {"kind": "captions", "size": size, "num_captions": len(unique)}
    if len(unique) <= MAX_CAPTIONS_IN_METADATA:
        metadata["captions"] = unique
    return _write(name, data_dir, features, gens, report, metadata, overwrite, verbose), report
