import numpy as np
import pytest

from canvas_jax.data import checker
from canvas_jax.data import shapes as S


@pytest.mark.parametrize("resolution,backgrounds,n", [(32, ("white",), 200), (64, ("black", "gray"), 40)])
def test_accepts_true_captions(resolution, backgrounds, n):
    src = S.ShapesSource(S.ShapesConfig(resolution=resolution, backgrounds=backgrounds), num_examples=n, seed=5,
                         split="test")
    results = [checker.check(src[i]["image"], src[i]["caption"]) for i in range(n)]
    failures = [(src[i]["caption"], r.reason) for i, r in enumerate(results) if not r]
    assert len(failures) <= 0.01 * n, failures[:5]


def _mutations(scene: S.Scene, rng: np.random.Generator):
    """(field, wrong scene) for one shape of ``scene`` changed in colour, shape, position, size; plus counts."""
    shapes = list(scene.shapes)
    k = int(rng.integers(len(shapes)))
    spec = shapes[k]
    free = [p for p in S.POSITIONS if p not in {s.position for s in shapes}]

    def replaced(**kw):
        new = {"shape": spec.shape, "color": spec.color, "size": spec.size, "position": spec.position, **kw}
        return S.Scene(tuple(shapes[:k] + [S.ShapeSpec(**new)] + shapes[k + 1:]), scene.background)

    yield "color", replaced(color=str(next(c for c in rng.permutation(list(S.PALETTE)) if c != spec.color)))
    yield "shape", replaced(shape=str(next(s for s in rng.permutation(list(S.SHAPES)) if s != spec.shape)))
    yield "position", replaced(position=free[int(rng.integers(len(free)))])
    yield "size", replaced(size="small" if spec.size == "large" else "large")
    yield "count", S.Scene(tuple(shapes + [S.ShapeSpec("square", "red", "large", free[0])]), scene.background)
    if len(shapes) > 1:
        yield "count", S.Scene(tuple(shapes[:k] + shapes[k + 1:]), scene.background)


def test_rejects_wrong_colour_shape_position_size_count():
    src = S.ShapesSource(num_examples=40, seed=11, split="test")
    rng = np.random.default_rng(0)
    tried = {}
    for i in range(40):
        image, scene = src[i]["image"], src.scene(i)
        for field, wrong in _mutations(scene, rng):
            result = checker.check(image, wrong.caption)
            assert not result, (field, scene.caption, wrong.caption)
            assert result.reason.split(":")[0] in (field, "count", "position"), result.reason
            tried[field] = tried.get(field, 0) + 1
    assert set(tried) == {"color", "shape", "position", "size", "count"}


def test_structured_targets_and_size_optional():
    scene = S.Scene((S.ShapeSpec("triangle", "purple", "small", "bottom left"),))
    image = S.render(scene, 32)
    assert checker.check(image, scene) and checker.check(image, list(scene.shapes))
    wrong_size = S.ShapeSpec("triangle", "purple", "large", "bottom left")
    assert not checker.check(image, wrong_size)
    assert checker.check(image, wrong_size, check_size=False)
    assert checker.adherence([image, image], [scene, wrong_size]) == 0.5


def test_blank_and_noise_images_are_rejected():
    blank = np.full((32, 32, 3), 245, np.uint8)
    result = checker.check(blank, "a small red circle at the center")
    assert not result and "found 0" in result.reason
    noise = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert not checker.check(noise, "a large blue square at the top left")


def test_bad_image_input_is_named():
    with pytest.raises(ValueError, match="uint8"):
        checker.check(np.zeros((32, 32, 3), np.float32), "a small red circle at the center")
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        checker.check(np.zeros((32, 32), np.uint8), "a small red circle at the center")
