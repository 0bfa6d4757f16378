import numpy as np
import pytest
from PIL import Image, ImageDraw

from canvas_jax.data import checker
from canvas_jax.data import shapes as S


@pytest.mark.parametrize("resolution,backgrounds,n", [(32, ("white",), 200), (64, ("black", "gray"), 40)])
def test_accepts_true_captions(resolution, backgrounds, n):
    src = S.ShapesSource(S.ShapesConfig(resolution=resolution, backgrounds=backgrounds), num_examples=n, seed=5,
                         split="test")
    results = [checker.check(src[i]["image"], src[i]["caption"]) for i in range(n)]
    failures = [(src[i]["caption"], r.reason) for i, r in enumerate(results) if not r]
    assert len(failures) <= 0.005 * n, failures[:5]  # checker.MIN_FIT is calibrated for >= 99.5%


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


def _drawn(draw_fn, resolution=32):
    """A red figure drawn by ``draw_fn(draw, cell)`` (4x supersampled like the renderer) on white."""
    big = resolution * 4
    img = Image.new("RGB", (big, big), S.BACKGROUNDS["white"])
    draw_fn(ImageDraw.Draw(img), big / 3)
    return np.asarray(img.resize((resolution, resolution), Image.Resampling.BOX), np.uint8)


_RED, _WHITE = S.PALETTE["red"], S.BACKGROUNDS["white"]
_ILL_FORMED = {  # each in the centre cell; the lenient checker reads each as its best template
    "plus": lambda d, c: (d.rectangle((1.05 * c, 1.4 * c, 1.95 * c, 1.6 * c), fill=_RED),
                          d.rectangle((1.4 * c, 1.05 * c, 1.6 * c, 1.95 * c), fill=_RED)),
    "bar": lambda d, c: d.rectangle((1.05 * c, 1.35 * c, 1.95 * c, 1.65 * c), fill=_RED),
    "flat ellipse": lambda d, c: d.ellipse((1.05 * c, 1.25 * c, 1.95 * c, 1.75 * c), fill=_RED),
    "notched square": lambda d, c: (d.rectangle((1.05 * c, 1.05 * c, 1.95 * c, 1.95 * c), fill=_RED),
                                    d.rectangle((1.5 * c, 1.05 * c, 1.95 * c, 1.5 * c), fill=_WHITE)),
}


@pytest.mark.parametrize("name", sorted(_ILL_FORMED))
def test_ill_formed_shapes_are_rejected(name):
    image = _drawn(_ILL_FORMED[name])
    (det,) = checker.detect(image)
    assert det.iou < checker.MIN_FIT
    caption = f"a {det.spec.size} red {det.spec.shape} at the center"  # what the blob resembles most
    assert checker.check(image, caption, min_fit=0.0)  # the old, lenient checker accepted it
    result = checker.check(image, caption)
    assert not result and result.reason.startswith("form:") and "ill-formed" in result.reason, result.reason
    assert not checker.adherence([image], [caption])


def test_min_fit_is_validated():
    image = S.render(S.Scene((S.ShapeSpec("circle", "red", "large", "center"),)), 32)
    with pytest.raises(ValueError, match="min_fit"):
        checker.check(image, "a large red circle at the center", min_fit=1.5)
