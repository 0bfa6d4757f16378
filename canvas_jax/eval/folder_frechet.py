"""Fréchet distance between two image sets read from disk, in the feature space of the pretrained MobileNetV2
(``mobilenet_frechet_distance``) and, given one, of the in-project classifier (``classifier_frechet_distance``).

A set is a folder of image files (searched recursively; an unreadable file is skipped and counted) or a dataset
built by ``canvas-jax data build`` with a split (``DIR`` when it has one split, else ``DIR:SPLIT``). Both sets
are resized (shorter side) and centre-cropped to one common side, by default the reference set's first image's;
MobileNetV2 then sees them at ``mobilenet_size`` (default 224, bilinear). Features are computed chunk by chunk,
so a set never has to fit in memory as pixels.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from canvas_jax.data import ingest
from canvas_jax.errors import InputError
from canvas_jax.eval.frechet import frechet_distance_of_features

SOURCES = ("a folder of image files (searched recursively), or a dataset built by `canvas-jax data build` "
           "(DIR, or DIR:SPLIT when it has several splits)")


class ImageSet:
    """One image set: files of a folder, or the records of one split of a built dataset."""

    def __init__(self, spec: str | os.PathLike, what: str = "images", limit: int | None = None):
        self.spec, self.what, self.skipped = str(spec), what, []
        path, split = Path(spec), None
        if not path.exists() and ":" in self.spec:
            head, _, split = self.spec.rpartition(":")
            path = Path(head)
        if not path.exists():
            raise FileNotFoundError(f"{what} {spec} does not exist; expected {SOURCES}")
        if not path.is_dir():
            raise InputError(f"{what} {spec} is a file; expected {SOURCES}")
        built = _built(path)
        if built is not None:
            from core_jax import data as data_lib

            splits = data_lib.split_names(built)
            if split is None and len(splits) == 1:
                split = splits[0]
            if split not in splits:
                raise InputError(f"{what} {spec}: dataset {built} has splits {', '.join(splits)}; name one as "
                                 f"{path}:SPLIT")
            self.source, self.files = data_lib.open_split(built, split), None
            n = len(self.source)
        else:
            if split is not None:
                raise FileNotFoundError(f"{what} {spec} does not exist; expected {SOURCES}")
            self.source = None
            self.files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in
                                ingest.IMAGE_EXTENSIONS and not any(s.startswith(".") for s in p.relative_to(path).parts))
            n = len(self.files)
        self.n = n if limit is None else min(n, limit)
        if self.n < 2:
            raise InputError(f"{what} {spec}: found {n} image(s); the Fréchet distance needs at least 2 "
                             f"(expected {SOURCES}, with image files {', '.join(ingest.IMAGE_EXTENSIONS)})")

    def first_side(self) -> int:
        """The shorter side of the first readable image."""
        for image in self.chunks(None, 1):
            return int(min(image.shape[1:3]))
        raise InputError(f"{self.what} {self.spec}: no readable image among {self.n} files")

    def chunks(self, size: int | None, batch: int) -> Iterator[np.ndarray]:
        """uint8 [<=batch, size, size, 3] chunks (size None: the images as they are, one per chunk)."""
        out = []
        for i in range(self.n):
            if self.files is not None:
                try:
                    image = ingest.load_image(self.files[i], size)
                except ingest.ImageReadError as err:
                    if size is not None:  # count each bad file once (the size probe reads with size None)
                        self.skipped.append({"file": str(self.files[i]), "reason": str(err)})
                    continue
            else:
                image = np.asarray(self.source[i]["image"], np.uint8)
                if size is not None and image.shape[:2] != (size, size):
                    image = np.asarray(ingest.resize_center_crop(Image.fromarray(image), size))
            out.append(image)
            if len(out) == batch or size is None:
                yield np.stack(out)
                out = []
        if out:
            yield np.stack(out)


def _built(path: Path) -> Path | None:
    for candidate in (path, path / "1.0.0"):
        if (candidate / "dataset_info.json").is_file():
            return candidate
    return None


def _features(images: ImageSet, size: int, mobilenet, mobilenet_size: int, classifier, batch_size: int):
    from canvas_jax.models.mobilenet import embed_images

    mob, clf = [], []
    for chunk in images.chunks(size, batch_size):
        mob.append(embed_images(mobilenet, chunk, size=mobilenet_size, batch_size=batch_size))
        if classifier is not None:
            from canvas_jax.eval.classifier import extract_features

            clf.append(extract_features(classifier, chunk, batch_size=batch_size))
    if sum(len(m) for m in mob) < 2:
        raise InputError(f"{images.what} {images.spec}: fewer than 2 readable images ({len(images.skipped)} "
                         "unreadable); the Fréchet distance needs at least 2")
    return np.concatenate(mob), (np.concatenate(clf) if clf else None)


def folder_frechet(images: str | os.PathLike, reference: str | os.PathLike, *, mobilenet=None, classifier=None,
                   size: int | None = None, mobilenet_size: int = 224, batch_size: int = 64,
                   limit: int | None = None) -> dict:
    """Fréchet distances between the image set ``images`` and ``reference`` (module docstring).

    ``mobilenet``: a :class:`~canvas_jax.models.mobilenet.MobileNetV2` (default: the pretrained one,
    :func:`canvas_jax.convert.mobilenet.load_mobilenet_v2`); ``classifier``: a loaded
    :class:`~canvas_jax.eval.classifier.SmallCNN` or None; ``limit``: at most that many images of each set.
    """
    for name, value in (("size", size), ("mobilenet_size", mobilenet_size), ("batch_size", batch_size),
                        ("limit", limit)):
        if value is not None and value < 1:
            raise InputError(f"{name}={value}: expected a positive number")
    t0 = time.perf_counter()
    a, b = ImageSet(images, "--images", limit), ImageSet(reference, "--reference", limit)
    size = size or b.first_side()
    if mobilenet is None:
        from canvas_jax.convert.mobilenet import load_mobilenet_v2

        mobilenet = load_mobilenet_v2(classifier=False)
    ma, ca = _features(a, size, mobilenet, mobilenet_size, classifier, batch_size)
    mb, cb = _features(b, size, mobilenet, mobilenet_size, classifier, batch_size)
    report = {"eval": "frechet", "images": a.spec, "reference": b.spec,
              "mobilenet_frechet_distance": frechet_distance_of_features(ma, mb)}
    if classifier is not None:
        report["classifier_frechet_distance"] = frechet_distance_of_features(ca, cb)
    return {**report, "n_images": len(ma), "n_reference": len(mb), "image_size": size,
            "mobilenet_size": mobilenet_size, "skipped": a.skipped + b.skipped,
            "seconds": round(time.perf_counter() - t0, 2)}
