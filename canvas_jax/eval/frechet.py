"""The Fréchet distance between two image sets in the feature space of our in-project classifier or of the
pretrained MobileNetV2.

This is the formula of FID (Fréchet distance between Gaussians fitted to features) but with the features of
:class:`canvas_jax.eval.classifier.SmallCNN` trained here ("classifier Fréchet distance") or the pooled 1280-d
features of torchvision's ImageNet MobileNetV2 ("MobileNetV2 Fréchet distance"), not Inception-v3, so the values
are not comparable with published FID numbers.

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean [D] and covariance [D, D] (float64, unbiased) of features [N, D]; N must be at least 2."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"gaussian_stats expects features [N, D] with N >= 2, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sym_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray, *, method: str = "auto") -> float:
    """``tr((S1 S2)^{1/2})`` for symmetric PSD S1, S2.

    ``eigh``: the eigenvalues of the symmetric PSD ``S1^{1/2} S2 S1^{1/2}`` (similar to S1 S2), square-rooted
    and summed. ``scipy``: ``scipy.linalg.sqrtm(S1 @ S2)``. ``auto``: scipy when installed, else eigh.
    """
    if method not in ("auto", "eigh", "scipy"):
        raise ValueError(f"method must be 'auto', 'eigh' or 'scipy', got {method!r}")
    if method in ("auto", "scipy"):
        try:
            from scipy import linalg
        except ImportError:
            if method == "scipy":
                raise
        else:
            root = linalg.sqrtm(s1 @ s2)
            if np.iscomplexobj(root):
                root = root.real  # tiny imaginary parts from round-off
            return float(np.trace(root))
    r = _sym_sqrt(s1)
    w = np.linalg.eigvalsh(r @ s2 @ r)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2, *, method: str = "auto") -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (the squared 2-Wasserstein distance)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"frechet_distance: expected means [D] and covariances [D, D] of one D, got "
                         f"{mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    diff = mu1 - mu2
    value = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2, method=method)
    return float(max(value, 0.0))


def _frechet_from_samples(fa: np.ndarray, fb: np.ndarray) -> float:
    """The same distance without any [D, D] matrix: with centred samples A [N, D], B [M, D],
    ``S1 = A'A/(N-1)``, ``S2 = B'B/(M-1)``, and the non-zero eigenvalues of ``S1 S2`` are the squared singular
    values of ``A B' / sqrt((N-1)(M-1))``, so ``tr((S1 S2)^{1/2})`` is that matrix's nuclear norm."""
    a, b = fa - fa.mean(axis=0), fb - fb.mean(axis=0)
    na, nb = len(a) - 1, len(b) - 1
    k = (a @ b.T) / np.sqrt(na * nb)
    gram = k @ k.T if k.shape[0] <= k.shape[1] else k.T @ k
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh(gram), 0.0, None)).sum())
    diff = fa.mean(axis=0) - fb.mean(axis=0)
    value = diff @ diff + (a * a).sum() / na + (b * b).sum() / nb - 2.0 * tr_sqrt
    return float(max(value, 0.0))


def frechet_distance_of_features(features_a, features_b, *, method: str = "auto") -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D] and [M, D].

    ``auto`` with fewer samples than dimensions (e.g. a few hundred images in MobileNetV2's 1280-d space) works
    in sample space (:func:`_frechet_from_samples`, exact and much cheaper than [D, D] matrix square roots);
    otherwise, and with ``eigh`` / ``scipy``, from the fitted means and covariances (:func:`frechet_distance`)."""
    fa, fb = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    if method == "auto" and fa.ndim == fb.ndim == 2 and fa.shape[1] == fb.shape[1] and \
            2 <= min(len(fa), len(fb)) and min(len(fa), len(fb)) < fa.shape[1]:
        return _frechet_from_samples(fa, fb)
    return frechet_distance(*gaussian_stats(fa), *gaussian_stats(fb), method=method)


def classifier_frechet_distance(model, images_a, images_b, *, batch_size: int = 256, method: str = "auto") -> float:
    """The classifier Fréchet distance between two image sets [N, H, W, 3] (uint8 or float in [-1, 1]) in the
    feature space of ``model`` (a :class:`canvas_jax.eval.classifier.SmallCNN`)."""
    from canvas_jax.eval.classifier import extract_features

    fa = extract_features(model, images_a, batch_size=batch_size)
    fb = extract_features(model, images_b, batch_size=batch_size)
    return frechet_distance_of_features(fa, fb, method=method)


def mobilenet_frechet_distance(model, images_a, images_b, *, size: int = 224, batch_size: int = 64,
                               method: str = "auto") -> float:
    """The Fréchet distance between two image sets [N, H, W, 3] (uint8, or float in [0, 1]) in the pooled feature
    space of ``model`` (a :class:`canvas_jax.models.mobilenet.MobileNetV2`, e.g. from
    :func:`canvas_jax.convert.mobilenet.load_mobilenet_v2`), the images resized to ``size``."""
    from canvas_jax.models.mobilenet import embed_images

    fa = embed_images(model, images_a, size=size, batch_size=batch_size)
    fb = embed_images(model, images_b, size=size, batch_size=batch_size)
    return frechet_distance_of_features(fa, fb, method=method)
