"""The captioned image grid: captions are word-wrapped to the tile width, not cut off."""

import numpy as np
from PIL import Image

from canvas_jax.images import make_grid


def test_grid_wraps_long_captions():
    tiles = [Image.new("RGB", (64, 64), (200, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 200))]
    short = make_grid(tiles, cols=2, captions=["red", "blue"], caption_height=12)
    long = make_grid(tiles, cols=2, captions=["a small red circle at the top left and a blue square", "blue"],
                     caption_height=12)
    assert short.size == (128, 64 + 12 + 2)
    assert long.size[0] == 128 and long.size[1] > short.size[1] + 12  # several lines of text
    strip = np.asarray(long)[64 + 12 * 4:, :64]  # the fifth line of the first caption has ink
    assert (strip < 128).any()
    assert make_grid(tiles).size == (128, 64)  # no captions: no strip
