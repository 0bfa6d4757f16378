"""The procedural Shapes dataset: the embedded default for text-to-image training (needs no download).

A scene is one to three coloured shapes (circle, square, triangle, diamond), each small or large, each in
its own cell of a 3x3 grid, on a plain background, with a compositional caption such as
"a small red circle at the top left and a large blue square at the bottom right" (shapes listed in
reading order). Everything is deterministic from a seed: example ``i`` of a split is drawn from
``np.random.default_rng([seed, split_id, i])``, so the in-memory source (:class:`ShapesSource`) and the
ArrayRecord build (:func:`build_shapes`) hold the same examples.

Held-out combinations (default: every green triangle) never appear in the train split; the test split
draws from all combinations and flags the scenes that contain one (``heldout``). :func:`enumerate_prompts`
lists single-shape prompts, seen or held out, for evaluation with :mod:`canvas_jax.data.checker`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import re
import shutil
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from canvas_jax.errors import InputError

# Shape colours, far apart in RGB so that a colour survives anti-aliasing and an imperfect generator.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "purple": (150, 40, 190),
}
# Background colours: none is close to a shape colour.
BACKGROUNDS: dict[str, tuple[int, int, int]] = {"white": (245, 245, 245), "black": (15, 15, 15),
                                                "gray": (128, 128, 128)}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES: dict[str, float] = {"small": 0.55, "large": 0.9}  # side of the shape's box, as a fraction of a grid cell
POSITIONS = ("top left", "top center", "top right", "center left", "center", "center right",
             "bottom left", "bottom center", "bottom right")  # row-major over the 3x3 grid
SPLIT_IDS = {"train": 0, "test": 1}
_SUPERSAMPLE = 4


@dataclasses.dataclass(frozen=True)
class ShapeSpec:
    """One shape of a scene."""

    shape: str
    color: str
    size: str
    position: str

    def __post_init__(self):
        for field, allowed in (("shape", SHAPES), ("color", tuple(PALETTE)), ("size", tuple(SIZES)),
                               ("position", POSITIONS)):
            value = getattr(self, field)
            if value not in allowed:
                raise InputError(f"ShapeSpec.{field}={value!r}: expected one of {', '.join(allowed)}")

    @property
    def cell(self) -> tuple[int, int]:
        """(row, column) in the 3x3 grid."""
        return divmod(POSITIONS.index(self.position), 3)

    def phrase(self) -> str:
        return f"a {self.size} {self.color} {self.shape} at the {self.position}"


@dataclasses.dataclass(frozen=True)
class Scene:
    """Shapes (in distinct grid cells, reading order) on a plain background."""

    shapes: tuple[ShapeSpec, ...]
    background: str = "white"

    def __post_init__(self):
        if not 1 <= len(self.shapes) <= 9:
            raise InputError(f"a scene holds 1 to 9 shapes, got {len(self.shapes)}")
        cells = [s.position for s in self.shapes]
        if len(set(cells)) != len(cells):
            raise InputError(f"two shapes share a grid cell: {cells}")
        if self.background not in BACKGROUNDS:
            raise InputError(f"background={self.background!r}: expected one of {', '.join(BACKGROUNDS)}")
        object.__setattr__(self, "shapes", tuple(sorted(self.shapes, key=lambda s: POSITIONS.index(s.position))))

    @property
    def caption(self) -> str:
        return " and ".join(s.phrase() for s in self.shapes)

    def to_json(self) -> str:
        return json.dumps({"background": self.background, "shapes": [dataclasses.asdict(s) for s in self.shapes]})

    @classmethod
    def from_json(cls, text: str | bytes) -> Scene:
        data = json.loads(text)
        return cls(tuple(ShapeSpec(**s) for s in data["shapes"]), data.get("background", "white"))


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    """What the Shapes generator draws from."""

    resolution: int = 32
    min_shapes: int = 1
    max_shapes: int = 3
    backgrounds: tuple[str, ...] = ("white",)
    holdout: tuple[tuple[str, str], ...] = (("green", "triangle"),)  # (colour, shape) pairs kept out of train

    def __post_init__(self):
        if self.resolution < 16:
            raise InputError(f"resolution={self.resolution}: expected >= 16 pixels")
        if not 1 <= self.min_shapes <= self.max_shapes <= 9:
            raise InputError(f"min_shapes={self.min_shapes}, max_shapes={self.max_shapes}: expected "
                             "1 <= min_shapes <= max_shapes <= 9")
        for bg in self.backgrounds:
            if bg not in BACKGROUNDS:
                raise InputError(f"background {bg!r}: expected one of {', '.join(BACKGROUNDS)}")
        if not self.backgrounds:
            raise InputError("backgrounds: expected at least one")
        for pair in self.holdout:
            if len(pair) != 2 or pair[0] not in PALETTE or pair[1] not in SHAPES:
                raise InputError(f"holdout entry {pair!r}: expected (colour, shape) with colour in "
                                 f"{', '.join(PALETTE)} and shape in {', '.join(SHAPES)}")
        object.__setattr__(self, "holdout", tuple(tuple(p) for p in self.holdout))
        object.__setattr__(self, "backgrounds", tuple(self.backgrounds))

    def is_heldout(self, spec: ShapeSpec) -> bool:
        return (spec.color, spec.shape) in self.holdout


def parse_holdout(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``["green:triangle", "red:circle"]`` (or "green triangle") -> ``(("green", "triangle"), ...)``."""
    out = []
    for item in items:
        parts = re.split(r"[:\s]+", item.strip())
        if len(parts) != 2:
            raise InputError(f"holdout {item!r}: expected COLOUR:SHAPE, e.g. green:triangle")
        out.append((parts[0], parts[1]))
    return tuple(out)


_PHRASE = re.compile(r"^an? (\w+) (\w+) (\w+) at the ([a-z ]+?)$")


def parse_caption(caption: str) -> tuple[ShapeSpec, ...]:
    """The shapes a caption asks for (the inverse of :attr:`Scene.caption`); ValueError if it is not one."""
    specs = []
    for phrase in caption.strip().lower().split(" and "):
        m = _PHRASE.match(phrase.strip())
        if not m:
            raise InputError(f"caption phrase {phrase!r}: expected 'a SIZE COLOUR SHAPE at the POSITION'")
        specs.append(ShapeSpec(shape=m.group(3), color=m.group(2), size=m.group(1), position=m.group(4)))
    return tuple(specs)


def shape_polygon(shape: str, box: tuple[float, float, float, float]):
    """The outline of ``shape`` inscribed in ``box`` = (x0, y0, x1, y1): a polygon (list of points) or None
    for a circle (drawn as an ellipse). The checker uses the same geometry for its templates."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if shape == "triangle":  # apex up
        return [(cx, y0), (x1, y1), (x0, y1)]
    if shape == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if shape == "circle":
        return None
    raise InputError(f"shape {shape!r}: expected one of {', '.join(SHAPES)}")


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box, fill) -> None:
    poly = shape_polygon(shape, box)
    if poly is None:
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon(poly, fill=fill)


SIZE_JITTER = 0.08  # a jittered rendering scales each shape's side by up to +-8% (stays on its side of the checker's
# small / large split, 0.725)


def shape_box(spec: ShapeSpec, resolution: int, rng: np.random.Generator | None = None
              ) -> tuple[float, float, float, float]:
    """Pixel box (x0, y0, x1, y1) of a shape: centred in its grid cell, side = size fraction of the cell. With
    ``rng`` (a jittered rendering): the side scaled by up to +-``SIZE_JITTER`` and the centre moved at random
    within the cell, the box staying inside the cell."""
    row, col = spec.cell
    cell = resolution / 3
    frac = SIZES[spec.size]
    if rng is not None:
        frac = min(frac * (1.0 + rng.uniform(-SIZE_JITTER, SIZE_JITTER)), 0.98)
    side = frac * cell
    cx, cy = (col + 0.5) * cell, (row + 0.5) * cell
    if rng is not None:
        slack = (cell - side) / 2
        cx, cy = cx + rng.uniform(-slack, slack), cy + rng.uniform(-slack, slack)
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


def render(scene: Scene, resolution: int = 32, *, jitter_seed: int | Sequence[int] | None = None) -> np.ndarray:
    """The scene as uint8 [resolution, resolution, 3] (drawn 4x larger and box-filtered: anti-aliased). With
    ``jitter_seed``: another rendering of the same scene (same caption and checker verdict, other pixels): each
    shape moved within its cell and resized a little (:func:`shape_box`), deterministic in the seed."""
    rng = None if jitter_seed is None else np.random.default_rng(jitter_seed)
    big = resolution * _SUPERSAMPLE
    img = Image.new("RGB", (big, big), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(img)
    for spec in scene.shapes:
        x0, y0, x1, y1 = shape_box(spec, resolution, rng)
        s = _SUPERSAMPLE
        draw_shape(draw, spec.shape, (x0 * s, y0 * s, x1 * s - 1, y1 * s - 1), PALETTE[spec.color])
    return np.asarray(img.resize((resolution, resolution), Image.Resampling.BOX), np.uint8)


def sample_scene(rng: np.random.Generator, cfg: ShapesConfig = ShapesConfig(), *,
                 allow_heldout: bool = False) -> Scene:
    """A random scene; with ``allow_heldout=False`` no shape is a held-out (colour, shape) combination."""
    n = int(rng.integers(cfg.min_shapes, cfg.max_shapes + 1))
    cells = rng.choice(len(POSITIONS), size=n, replace=False)
    combos = [(c, s) for c in PALETTE for s in SHAPES if allow_heldout or (c, s) not in cfg.holdout]
    shapes = []
    for cell in cells:
        color, shape = combos[int(rng.integers(len(combos)))]
        size = tuple(SIZES)[int(rng.integers(len(SIZES)))]
        shapes.append(ShapeSpec(shape=shape, color=color, size=size, position=POSITIONS[int(cell)]))
    background = cfg.backgrounds[int(rng.integers(len(cfg.backgrounds)))]
    return Scene(tuple(shapes), background)


def enumerate_prompts(cfg: ShapesConfig = ShapesConfig(), *, heldout: bool = False) -> list[tuple[str, Scene]]:
    """Every single-shape (caption, scene) on the first background: the seen combinations, or with
    ``heldout=True`` only the held-out ones."""
    out = []
    for color, shape, size, position in itertools.product(PALETTE, SHAPES, SIZES, POSITIONS):
        spec = ShapeSpec(shape=shape, color=color, size=size, position=position)
        if cfg.is_heldout(spec) == heldout:
            scene = Scene((spec,), cfg.backgrounds[0])
            out.append((scene.caption, scene))
    return out


def seen_prompts(cfg: ShapesConfig = ShapesConfig()) -> list[str]:
    return [c for c, _ in enumerate_prompts(cfg, heldout=False)]


def heldout_prompts(cfg: ShapesConfig = ShapesConfig()) -> list[str]:
    return [c for c, _ in enumerate_prompts(cfg, heldout=True)]


def sample_prompts(n: int, cfg: ShapesConfig = ShapesConfig(), *, heldout: bool = False,
                   seed: int = 0) -> list[tuple[str, Scene]]:
    """``n`` random multi-shape (caption, scene) pairs: seen ones, or ones holding >= 1 held-out shape."""
    if heldout and not cfg.holdout:
        raise InputError("heldout=True but the config holds out no combination")
    rng, out = np.random.default_rng([seed, 99]), []
    while len(out) < n:
        scene = sample_scene(rng, cfg, allow_heldout=heldout)
        if any(cfg.is_heldout(s) for s in scene.shapes) == heldout:
            out.append((scene.caption, scene))
    return out


class ShapesSource:
    """Random-access in-memory Shapes split (``len`` / ``[i]``), rendered on demand; a Grain source.

    Records: ``image`` uint8 [R, R, 3], ``caption`` str, ``scene`` JSON str, ``heldout`` int32 (1 if the
    scene holds a held-out combination: only in the test split); with ``with_condition``, ``condition`` uint8
    [R, R, 3]: a jittered rendering of the same scene (:func:`render`'s ``jitter_seed``; IP-Adapter training).
    """

    def __init__(self, cfg: ShapesConfig = ShapesConfig(), *, num_examples: int = 10_000, seed: int = 0,
                 split: str = "train", with_condition: bool = False):
        if split not in SPLIT_IDS:
            raise InputError(f"split={split!r}: expected one of {', '.join(SPLIT_IDS)}")
        if num_examples < 1:
            raise InputError(f"num_examples={num_examples}: expected >= 1")
        self.cfg, self.num_examples, self.seed, self.split = cfg, num_examples, seed, split
        self.with_condition = with_condition

    def __len__(self) -> int:
        return self.num_examples

    def scene(self, index: int) -> Scene:
        rng = np.random.default_rng([self.seed, SPLIT_IDS[self.split], index])
        return sample_scene(rng, self.cfg, allow_heldout=self.split != "train")

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        scene = self.scene(index)
        out = {"image": render(scene, self.cfg.resolution), "caption": scene.caption, "scene": scene.to_json(),
               "heldout": np.int32(any(self.cfg.is_heldout(s) for s in scene.shapes))}
        if self.with_condition:
            out["condition"] = render(scene, self.cfg.resolution,
                                      jitter_seed=[self.seed, SPLIT_IDS[self.split], index, 1])
        return out

    def __repr__(self) -> str:
        return f"ShapesSource(split={self.split!r}, num_examples={self.num_examples}, seed={self.seed})"


def build_shapes(data_dir: str | os.PathLike, cfg: ShapesConfig = ShapesConfig(), *, train_examples: int = 10_000,
                 test_examples: int = 1_000, seed: int = 0, name: str | None = None,
                 overwrite: bool = False) -> str:
    """Write Shapes train/test as an ArrayRecord TFDS dataset; returns its folder (reused if already built,
    unless ``overwrite``)."""
    import tensorflow_datasets as tfds

    from core_jax import data as data_lib

    recipe = {"kind": "shapes", "config": json.loads(json.dumps(dataclasses.asdict(cfg))), "seed": seed,
              "train_examples": train_examples, "test_examples": test_examples}
    digest = hashlib.sha1(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:8]
    name = name or f"shapes{cfg.resolution}_{train_examples}_{digest}"
    path = os.path.join(os.fspath(data_dir), name, "1.0.0")
    if overwrite and os.path.isdir(os.path.join(os.fspath(data_dir), name)):
        shutil.rmtree(os.path.join(os.fspath(data_dir), name))
    if os.path.exists(os.path.join(path, "dataset_info.json")):
        built = {k: v for k, v in data_lib.dataset_metadata(path).items() if k in recipe}
        if built != recipe:
            raise FileExistsError(f"dataset {path} was built from another Shapes recipe ({built}); "
                                  "pass overwrite=True (--overwrite) or another name")
        return path
    r = cfg.resolution
    features = {"image": tfds.features.Tensor(shape=(r, r, 3), dtype=np.uint8, encoding="zlib"),
                "caption": tfds.features.Text(), "scene": tfds.features.Text(),
                "heldout": tfds.features.Scalar(dtype=np.int32)}

    def split(source):
        def gen():
            for i in range(len(source)):
                yield i, source[i]
        return gen

    splits = {s: split(ShapesSource(cfg, num_examples=n, seed=seed, split=s))
              for s, n in (("train", train_examples), ("test", test_examples)) if n > 0}
    metadata = {**recipe, "heldout_prompts": heldout_prompts(cfg)}
    return data_lib.build_dataset(name, data_dir, features, splits, description="procedural Shapes",
                                  metadata=metadata)
