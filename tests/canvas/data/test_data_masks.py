import numpy as np
import pytest

from canvas_jax.data import masks as M


@pytest.mark.parametrize("fn", [M.rectangles, M.brush_strokes, M.outpaint_border])
def test_shape_dtype_binary_and_deterministic(fn):
    a = fn(np.random.default_rng(3), 24, 32)
    b = fn(np.random.default_rng(3), 24, 32)
    assert a.shape == (24, 32, 1) and a.dtype == np.float32
    assert set(np.unique(a)) <= {0.0, 1.0}
    np.testing.assert_array_equal(a, b)
    coverage = [fn(np.random.default_rng(s), 24, 32).mean() for s in range(30)]
    assert 0.0 < min(coverage) and max(coverage) < 1.0  # never empty, never everything
    assert len({round(c, 4) for c in coverage}) > 10  # really random across seeds


def test_rectangles_are_boxes():
    m = M.rectangles(np.random.default_rng(0), 32, 32, count=(1, 1), size=(0.25, 0.25))[..., 0]
    ys, xs = np.nonzero(m)
    assert m.sum() == 8 * 8 == (np.ptp(ys) + 1) * (np.ptp(xs) + 1)


def test_outpaint_border_keeps_centre_and_touches_a_side():
    for seed in range(50):
        m = M.outpaint_border(np.random.default_rng(seed), 16, 20, max_fraction=0.9)[..., 0]
        keep = np.argwhere(m == 0)
        assert len(keep) > 0
        (y0, x0), (y1, x1) = keep.min(0), keep.max(0)
        assert m[y0:y1 + 1, x0:x1 + 1].sum() == 0  # the kept part is one rectangle
        assert (y0, x0, y1, x1) != (0, 0, 15, 19)  # at least one side is masked
        assert m[0].all() or m[-1].all() or m[:, 0].all() or m[:, -1].all()


def test_random_mask_kinds_and_errors():
    rng = np.random.default_rng(0)
    m = M.random_mask(rng, 16, 16, ("outpaint",))
    assert m[0].all() or m[-1].all() or m[:, 0].all() or m[:, -1].all()
    with pytest.raises(ValueError, match="mask kinds"):
        M.random_mask(rng, 16, 16, ("circles",))
    with pytest.raises(ValueError, match="mask size"):
        M.rectangles(rng, 1, 16)
