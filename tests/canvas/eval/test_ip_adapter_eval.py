"""The IP-Adapter Shapes evals score what they claim: a pipe that follows the reference (and the text's cell)
gets 1.0, one that ignores it gets 0.0."""

import dataclasses
from types import SimpleNamespace

import numpy as np

from canvas_jax.data import shapes
from canvas_jax.data.checker import detect
from canvas_jax.eval.ip_adapter_eval import composition, evaluate_ip_adapter, image_variation
from canvas_jax.eval.sampling import SamplingOptions

CFG = shapes.ShapesConfig(resolution=32)
OPTS = SamplingOptions(num_steps=2)


class Embedder:  # the "embedding" is the reference image itself
    def embed_images(self, x):
        return np.asarray(x)[None].astype(np.float32)


@dataclasses.dataclass
class Out:
    images: np.ndarray


class FakePipe:
    unet = SimpleNamespace(ip_adapter=SimpleNamespace(plus=False))  # a plain adapter: fed embed_images


class Follower(FakePipe):
    """Re-renders the reference (jitter-free), moved to the prompt's cell when the prompt names one."""

    def __call__(self, prompt, *, ip_adapter_image_embeds, height, **kw):
        specs = [d.spec for d in detect(ip_adapter_image_embeds[0].astype(np.uint8))]
        if prompt:
            specs = [dataclasses.replace(specs[0], position=prompt.removeprefix("at the "))]
        return Out(shapes.render(shapes.Scene(tuple(specs)), height)[None].astype(np.float32) / 255.0)


class Ignorer(FakePipe):
    def __call__(self, prompt, *, height, **kw):
        return Out(np.ones((1, height, height, 3), np.float32))


def test_image_variation_scores_the_reference_caption():
    good = image_variation(Follower(), Embedder(), CFG, num_references=6, opts=OPTS)
    assert good["variation_seen"] == 1.0 and good["variation_heldout"] == 1.0 and good["n_seen"] == 6
    bad = image_variation(Ignorer(), Embedder(), CFG, num_references=6, opts=OPTS)
    assert bad["variation_seen"] == 0.0 and bad["variation_heldout"] == 0.0


def test_composition_needs_the_reference_kind_at_the_text_cell():
    assert composition(Follower(), Embedder(), CFG, num_references=8, opts=OPTS)["composition"] == 1.0
    assert composition(Ignorer(), Embedder(), CFG, num_references=8, opts=OPTS)["composition"] == 0.0

    class Stays(Follower):  # keeps the reference's cell: not composition
        def __call__(self, prompt, **kw):
            return super().__call__("", **kw)

    assert composition(Stays(), Embedder(), CFG, num_references=8, opts=OPTS)["composition"] == 0.0


def test_report_holds_both():
    report = evaluate_ip_adapter(Follower(), Embedder(), CFG, num_references=2, opts=OPTS)
    assert report["image_variation"]["variation_seen"] == 1.0 and report["composition"]["composition"] == 1.0
