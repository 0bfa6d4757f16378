"""Fréchet distance (closed forms for Gaussians), PSNR on hand examples, adherence aggregation."""

import numpy as np
import pytest

from canvas_jax.eval.frechet import (
    frechet_distance,
    frechet_distance_of_features,
    gaussian_stats,
    trace_sqrt_product,
)
from canvas_jax.eval.metrics import (
    adherence_report,
    prompt_adherence,
    psnr,
    unmasked_psnr,
)


def _spd(g, d):
    a = g.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_of_a_set_with_itself_is_zero_and_a_shift_adds_its_squared_norm():
    g = np.random.default_rng(0)
    feats = g.standard_normal((500, 6)) @ g.standard_normal((6, 6))
    assert frechet_distance_of_features(feats, feats) == pytest.approx(0.0, abs=1e-6)
    previous, direction = 0.0, g.standard_normal(6)
    for size in (0.5, 1.0, 2.0):
        shift = size * direction
        d = frechet_distance_of_features(feats, feats + shift)  # same covariance: d = |shift|^2
        assert d == pytest.approx(float(shift @ shift), rel=1e-6)
        assert d > previous
        previous = d


@pytest.mark.parametrize("method", ["eigh", "scipy"])
def test_frechet_matches_closed_forms(method):
    if method == "scipy":
        pytest.importorskip("scipy")
    g = np.random.default_rng(1)
    # diagonal covariances: d = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = g.uniform(0.1, 2.0, 5), g.uniform(0.1, 2.0, 5)
    mu1, mu2 = g.standard_normal(5), g.standard_normal(5)
    want = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method) == pytest.approx(want, rel=1e-8)
    # scaled covariance: S2 = c^2 S1 -> d = (1 - c)^2 tr(S1)
    s = _spd(g, 7)
    got = frechet_distance(np.zeros(7), s, np.zeros(7), 4.0 * s, method=method)
    assert got == pytest.approx(np.trace(s), rel=1e-8)


def test_trace_sqrt_methods_agree_on_general_matrices():
    pytest.importorskip("scipy")
    g = np.random.default_rng(2)
    s1, s2 = _spd(g, 10), _spd(g, 10)
    assert trace_sqrt_product(s1, s2, method="eigh") == pytest.approx(trace_sqrt_product(s1, s2, method="scipy"),
                                                                      rel=1e-8)


def test_frechet_rejects_bad_shapes():
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_psnr_hand_examples():
    x = np.zeros((2, 4, 4, 3), np.float32)
    y = x.copy()
    y[0] += 0.1  # MSE 0.01 over a data range of 2: 10 log10(4 / 0.01)
    got = psnr(y, x)
    assert got[0] == pytest.approx(10 * np.log10(4 / 0.01))
    assert np.isinf(got[1])
    assert psnr(np.full((1, 2, 2, 1), 255.0), np.zeros((1, 2, 2, 1)), data_range=255.0)[0] == pytest.approx(0.0)


def test_unmasked_psnr_ignores_the_repainted_region():
    ref = np.random.default_rng(3).uniform(-1, 1, (1, 8, 8, 3))
    out = ref.copy()
    mask = np.zeros((1, 8, 8, 1))
    mask[:, 2:6, 2:6] = 1
    out[:, 2:6, 2:6] = 0.7  # changed only inside the mask
    assert np.isinf(unmasked_psnr(out, ref, mask)[0])
    out[:, 0, :] += 0.2  # 8 of the 48 unmasked pixels change by 0.2 in every channel
    mse = 8 * 0.04 / 48
    assert unmasked_psnr(out, ref, mask)[0] == pytest.approx(10 * np.log10(4 / mse))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        unmasked_psnr(out, ref, mask * 2)
    with pytest.raises(ValueError, match="same shape|one shape"):
        psnr(out, ref[:, :4])


def test_adherence_report_splits_seen_and_held_out():
    report = adherence_report([True, False, True, True, False], [False, False, True, True, True])
    assert report["adherence"] == pytest.approx(3 / 5)
    assert report["adherence_seen"] == pytest.approx(1 / 2)
    assert report["adherence_held_out"] == pytest.approx(2 / 3)
    assert (report["n_seen"], report["n_held_out"]) == (2, 3)
    assert adherence_report([True, True])["adherence_held_out"] is None
    with pytest.raises(ValueError, match="held-out"):
        adherence_report([True], [True, False])


def test_prompt_adherence_runs_the_checker():
    images = [np.full((4, 4, 3), c, np.uint8) for c in (0, 255, 255)]
    captions = ["dark", "bright", "dark"]

    def checker(image, caption):
        return (image.mean() > 127) == (caption == "bright")

    report, results = prompt_adherence(checker, images, captions, held_out=[False, False, True])
    assert results == [True, True, False]
    assert report["adherence_seen"] == 1.0 and report["adherence_held_out"] == 0.0


@pytest.mark.parametrize("n, m", [(5, 9), (9, 5), (3, 3)])
def test_sample_space_path_equals_the_covariance_formula(n, m):
    """Fewer samples than dimensions: the [N, M] path gives the [D, D] formula's value."""
    g = np.random.default_rng(n * 10 + m)
    fa, fb = g.normal(size=(n, 16)), 0.5 + 2.0 * g.normal(size=(m, 16))
    want = frechet_distance_of_features(fa, fb, method="eigh")
    assert frechet_distance_of_features(fa, fb) == pytest.approx(want, rel=1e-6)  # eigh: sqrt of ~0 eigenvalues
    assert frechet_distance_of_features(fa, fa) == pytest.approx(0.0, abs=1e-9)
