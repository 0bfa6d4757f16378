"""Linear probe of the pretrained MobileNetV2 port: a check that the weights were converted right.

CIFAR-10 images (read from the two JPEG archives in ``--data-root``), upsampled to ``--size`` px and ImageNet
normalised, go through :func:`canvas_jax.models.mobilenet.embed_images`; a logistic regression (scikit-learn)
on the pooled 1280-d features of ``--train`` images (balanced over the classes) is scored on ``--test`` test
images; its L2 strength is chosen by 5-fold cross-validation on the train images (never on the test images).
A correct port reaches 0.75 or more; a wrong one (a transposed kernel, a missing BatchNorm statistic) lands far
below. Prints one JSON line; ``--features FILE.npz`` keeps the features for a rerun of the probe alone.

    python benchmarks/mobilenet_probe.py --train 5000 --test 2000 --size 128   # needs the [probes] extra (scikit-learn)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from canvas_jax.convert.mobilenet import load_mobilenet_v2  # noqa: E402
from canvas_jax.models.mobilenet import embed_images  # noqa: E402


def read_archive(path: str, per_class: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The first ``per_class`` images of each class folder in a ``<split>/<class>/<file>.jpg`` archive."""
    images: dict[str, list[np.ndarray]] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) != 3:
                continue
            got = images.setdefault(parts[1], [])
            if len(got) < per_class:
                got.append(np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read())).convert("RGB")))
    classes = sorted(images)
    x = np.stack([im for c in classes for im in images[c]])
    y = np.concatenate([np.full(len(images[c]), i) for i, c in enumerate(classes)])
    return x, y, classes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.path.join(ROOT, "..", "shared", "data", "images"))
    p.add_argument("--train", type=int, default=5000, help="train images (balanced over the 10 classes)")
    p.add_argument("--test", type=int, default=2000, help="test images (balanced)")
    p.add_argument("--size", type=int, default=128, help="side the 32 px images are upsampled to")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--Cs", default="0.0003,0.001,0.003,0.01,0.03,0.1,0.3,1",
                   help="inverse L2 strengths tried by cross-validation on the train images")
    p.add_argument("--features", default=None, help=".npz file: features are read from it when it exists "
                                                    "(same --train/--test/--size), else computed and saved there")
    args = p.parse_args()
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    speed = None
    if args.features and os.path.isfile(args.features):
        saved = np.load(args.features)
        ftr, ytr, fte, yte = saved["ftr"], saved["ytr"], saved["fte"], saved["yte"]
        if (len(ftr), len(fte), int(saved["size"])) != (args.train // 10 * 10, args.test // 10 * 10, args.size):
            raise SystemExit(f"{args.features} holds other --train/--test/--size; remove it or pass another file")
    else:
        model = load_mobilenet_v2(classifier=False)
        xtr, ytr, _ = read_archive(os.path.join(args.data_root, "cifar10-jpg-train.tar.gz"), args.train // 10)
        xte, yte, _ = read_archive(os.path.join(args.data_root, "cifar10-jpg-test.tar.gz"), args.test // 10)
        t1 = time.perf_counter()
        ftr = embed_images(model, xtr, size=args.size, batch_size=args.batch_size)
        fte = embed_images(model, xte, size=args.size, batch_size=args.batch_size)
        speed = round((len(xtr) + len(xte)) / (time.perf_counter() - t1), 1)
        if args.features:
            np.savez(args.features, ftr=ftr, ytr=ytr, fte=fte, yte=yte, size=args.size)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    search = GridSearchCV(probe, {"logisticregression__C": [float(c) for c in args.Cs.split(",")]}, cv=5)
    search.fit(ftr, ytr)
    acc = float(np.mean(search.predict(fte) == yte))
    print(json.dumps({"benchmark": "mobilenet_probe", "test_accuracy": round(acc, 4),
                      "cv_accuracy": round(float(search.best_score_), 4),
                      "train_accuracy": round(float(search.score(ftr, ytr)), 4),
                      "C": search.best_params_["logisticregression__C"], "n_train": len(ftr), "n_test": len(fte),
                      "size": args.size, "feature_images_per_second": speed,
                      "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
