"""The reward functions on rendered Shapes scenes: partial credit, the strict verdict, similarity, diversity."""

import numpy as np
import pytest

from canvas_jax.data.shapes import Scene, ShapeSpec, render
from canvas_jax.errors import InputError
from canvas_jax.rl import CheckerReward, DiversityReward, ImageTextReward, WeightedRewards, partial_credit

RED = ShapeSpec("circle", "red", "large", "top left")
BLUE = ShapeSpec("square", "blue", "small", "center")


def _image(*specs, seed=None):
    return render(Scene(tuple(specs)), 32, jitter_seed=seed)


def test_partial_credit_counts_attributes_and_extra_shapes():
    caption = Scene((RED, BLUE)).caption
    assert partial_credit(_image(RED, BLUE), caption) == 1.0
    wrong_colour = ShapeSpec("square", "green", "small", "center")
    assert partial_credit(_image(RED, wrong_colour), caption) == pytest.approx(7 / 8)  # 4 + (cell, kind, size)
    assert partial_credit(_image(RED), caption) == pytest.approx(4 / 8)  # the blue square is missing
    extra = ShapeSpec("triangle", "yellow", "large", "bottom right")
    assert partial_credit(_image(RED, BLUE, extra), caption) == pytest.approx(8 / 12)  # diluted by the extra
    assert partial_credit(np.full((32, 32, 3), 255, np.uint8), caption) == 0.0
    assert partial_credit(_image(RED, wrong_colour), caption, check_size=False) == pytest.approx(5 / 6)
    # an ill-formed shape (here: no render fits a template perfectly) does not get its kind right
    assert partial_credit(_image(RED), Scene((RED,)).caption, min_fit=1.0) == pytest.approx(3 / 4)


def test_checker_reward_partial_and_strict_agree_on_what_is_right():
    scenes = [(RED, BLUE), (RED,), (BLUE,)]
    prompts = [Scene(s).caption for s in scenes]
    circle = ShapeSpec("circle", "blue", "small", "center")  # the last image draws a circle for the square
    images = np.stack([_image(RED, BLUE), _image(RED), _image(circle)])
    partial, strict = CheckerReward()(images, prompts), CheckerReward(strict=True)(images, prompts)
    assert partial.dtype == np.float32 and strict.tolist() == [1.0, 1.0, 0.0]
    assert partial.tolist() == [1.0, 1.0, 0.75]
    assert CheckerReward().name == "checker" and CheckerReward(strict=True).name == "checker_strict"
    with pytest.raises(InputError, match="one prompt per image"):
        CheckerReward()(images, prompts[:2])
    with pytest.raises(InputError, match="uint8 images"):
        CheckerReward()(images.astype(np.float32), prompts)


class _Embedder:
    """Embeds an image by its mean colour and a caption by the colour it names (both L2-normalised)."""

    COLOURS = {"red": (1.0, 0.0, 0.0), "blue": (0.0, 0.0, 1.0)}

    def embed_images(self, images):
        f = 1.0 - images.astype(np.float32).mean(axis=(1, 2)) / 255.0  # how much of each channel is missing
        f = 1.0 - f / np.maximum(f.max(axis=1, keepdims=True), 1e-6)
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    def embed_texts(self, texts):
        f = np.asarray([self.COLOURS[next(c for c in self.COLOURS if c in t)] for t in texts])
        return f / np.linalg.norm(f, axis=1, keepdims=True)


def test_image_text_reward_is_the_cosine_with_each_prompt():
    images = np.stack([_image(RED), _image(BLUE)])
    prompts = [Scene((RED,)).caption, Scene((BLUE,)).caption]
    right = ImageTextReward(_Embedder())(images, prompts)
    swapped = ImageTextReward(_Embedder())(images, prompts[::-1])
    assert right.shape == (2,) and np.all(right > swapped)
    emb = _Embedder()
    np.testing.assert_allclose(right, np.sum(emb.embed_images(images) * emb.embed_texts(prompts), axis=1), rtol=1e-6)


def test_diversity_reward_is_the_mean_distance_within_each_prompt():
    same = _image(RED)
    images = np.stack([same, same, _image(RED, seed=1), _image(BLUE), _image(BLUE)])
    prompts = ["a"] * 3 + ["b", "b"]
    div = DiversityReward()(images, prompts)
    assert div[3] == div[4] == 0.0  # two identical images of prompt b
    assert div[0] == div[1] > 0.0 and div[2] == pytest.approx(2 * div[0])  # the jittered one differs from both
    assert DiversityReward()(images[:1], ["a"]).tolist() == [0.0]  # a prompt sampled once


def test_weighted_rewards_report_each_part():
    images = np.stack([_image(RED), _image(RED, seed=2)])
    prompts = [Scene((RED,)).caption] * 2
    combined = WeightedRewards([(CheckerReward(), 1.0), (DiversityReward(), 0.5)])
    total, parts = combined.scores(images, prompts)
    assert set(parts) == {"checker", "diversity"}
    np.testing.assert_allclose(total, parts["checker"] + 0.5 * parts["diversity"], rtol=1e-6)
    with pytest.raises(InputError, match="distinct"):
        WeightedRewards([(CheckerReward(), 1.0), (CheckerReward(), 2.0)])
