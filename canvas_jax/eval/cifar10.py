"""Class-conditional evaluation (CIFAR-10, or any class-folder dataset; see :mod:`canvas_jax.eval.class_folders`).

An in-project classifier (:class:`canvas_jax.eval.classifier.SmallCNN`), trained on the train split and cached
as one safetensors file, judges ``per_class`` images generated for each prompt ``"a photo of a {class}"``:

* ``classifier_accuracy``: the fraction classified as their prompt's class;
* ``classifier_frechet_distance``: the Fréchet distance between generated and real test images in the
  classifier's feature space (FID's formula, but not Inception features: not comparable with FID);
* ``classifier_test_accuracy``: the classifier's accuracy on the real test images, to judge the judge;
* ``mobilenet_frechet_distance`` (given a MobileNetV2): the same distance in the pooled feature space of the
  pretrained ImageNet MobileNetV2 (:func:`canvas_jax.eval.frechet.mobilenet_frechet_distance`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from PIL import Image

from canvas_jax.data.ingest import DEFAULT_TEMPLATE
from canvas_jax.errors import InputError
from canvas_jax.eval.class_folders import class_names, load_split, resolve_root
from canvas_jax.eval.classifier import (
    ClassifierConfig,
    ClassifierModelConfig,
    SmallCNN,
    load_classifier,
    predict_logits,
    save_classifier,
    train_classifier,
)
from canvas_jax.eval.frechet import classifier_frechet_distance, mobilenet_frechet_distance
from canvas_jax.eval.sampling import SamplingOptions, generate
from core_jax.loop import TrainConfig


def default_classifier_config(num_classes: int, run_dir: str | os.PathLike, *, steps: int = 4000,
                              batch_size: int = 128, progress: bool = False) -> ClassifierConfig:
    """The classifier run used when ``--classifier`` does not exist yet (its checkpoints go to ``run_dir``)."""
    cfg = ClassifierConfig(model=ClassifierModelConfig(num_classes=num_classes))
    cfg.train = TrainConfig(steps=steps, batch_size=batch_size, log_every=100, run_dir=str(run_dir),
                            progress=progress, tensorboard=False)
    cfg.optim.warmup_steps = min(cfg.optim.warmup_steps, max(steps // 10, 0))
    return cfg


def get_classifier(path: str | os.PathLike, root, classes: list[str], cfg: ClassifierConfig | None = None):
    """(classifier, trained_now): loaded from ``path``, or trained on ``root``'s train split and saved there."""
    path = Path(path)
    if path.is_file():
        model = load_classifier(path)
        if model.config.num_classes != len(classes):
            raise InputError(f"--classifier {path} has {model.config.num_classes} classes but the data has "
                             f"{len(classes)} ({', '.join(classes)}); pass another --classifier path")
        return model, False
    if path.exists():
        raise InputError(f"--classifier {path} is not a file; expected a .safetensors path (trained there if absent)")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--classifier {path}: folder {path.parent} does not exist")
    train = load_split(root, "train", classes=classes)
    cfg = cfg or default_classifier_config(len(classes), path.with_suffix(".run"))
    if cfg.model.num_classes != len(classes):
        raise InputError(f"classifier config has {cfg.model.num_classes} classes but the data has {len(classes)}")
    model, _ = train_classifier(train.images, train.labels, cfg)
    save_classifier(model, path)
    return model, True


def prompts_for(classes: list[str], template: str = DEFAULT_TEMPLATE) -> list[str]:
    """One caption per class, as :func:`canvas_jax.data.ingest.build_image_folder` writes them."""
    if "{class}" not in template:
        raise InputError(f"template {template!r}: expected a '{{class}}' placeholder, e.g. {DEFAULT_TEMPLATE!r}")
    return [template.replace("{class}", c.replace("_", " ")) for c in classes]


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    if images.shape[1:3] == (size, size):
        return images
    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.Resampling.BICUBIC)) for im in images])


def evaluate_cifar10(pipe, data: str | os.PathLike, classifier: str | os.PathLike | SmallCNN, *,
                     per_class: int = 100, opts: SamplingOptions = SamplingOptions(), template: str = DEFAULT_TEMPLATE,
                     cache_dir: str | os.PathLike = "out/eval_cache", size: int | None = None,
                     classifier_config: ClassifierConfig | None = None, mobilenet=None,
                     mobilenet_size: int = 224) -> dict:
    """Generate ``per_class`` images per class at ``size`` (default: the model's), score them (module docstring).
    ``classifier``: a loaded classifier, or its file (see :func:`get_classifier`); ``mobilenet``: a
    :class:`~canvas_jax.models.mobilenet.MobileNetV2` for ``mobilenet_frechet_distance`` (images seen at
    ``mobilenet_size``), or None."""
    if per_class < 2:
        raise InputError(f"--per-class must be >= 2 (the Fréchet distance needs a covariance), got {per_class}")
    t0 = time.perf_counter()
    root = resolve_root(data, cache_dir)
    classes = class_names(root)
    if isinstance(classifier, SmallCNN):
        model, trained = classifier, False
        if model.config.num_classes != len(classes):
            raise InputError(f"the classifier has {model.config.num_classes} classes but the data has {len(classes)}")
    else:
        model, trained = get_classifier(classifier, root, classes, classifier_config)
    test = load_split(root, "test", classes=classes)
    prompts = prompts_for(classes, template)
    labels = np.repeat(np.arange(len(classes)), per_class)
    generated = generate(pipe, [prompts[i] for i in labels], opts, size=size)
    generated = _resize(generated, test.images.shape[1])
    pred = predict_logits(model, generated).argmax(-1)
    test_acc = float(np.mean(predict_logits(model, test.images).argmax(-1) == test.labels))
    extra = {} if mobilenet is None else {
        "mobilenet_frechet_distance": mobilenet_frechet_distance(mobilenet, generated, test.images,
                                                                 size=mobilenet_size),
        "mobilenet_size": mobilenet_size}
    return {"eval": "cifar10", "classifier_accuracy": float(np.mean(pred == labels)),
            "classifier_frechet_distance": classifier_frechet_distance(model, generated, test.images),
            **extra, "classifier_test_accuracy": test_acc,
            "per_class_accuracy": {c: float(np.mean(pred[labels == i] == i)) for i, c in enumerate(classes)},
            "classes": classes, "per_class": per_class, "n_generated": len(generated),
            "n_real": len(test.images), "classifier": None if isinstance(classifier, SmallCNN) else str(classifier),
            "classifier_trained_now": trained,
            "image_size": int(test.images.shape[1]), **opts.describe(),
            "seconds": round(time.perf_counter() - t0, 2)}
