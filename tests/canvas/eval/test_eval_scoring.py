"""The eval suites' scoring on known answers (no model): true Shapes renders are all accepted, seen and held
out; an untouched unmasked region has the top PSNR while erasing the masked shape fails adherence."""

import dataclasses

import numpy as np
import pytest

from canvas_jax.data import checker, shapes
from canvas_jax.eval.inpaint_eval import MAX_PSNR_DB, inpaint_cases, score_inpaint
from canvas_jax.eval.shapes_eval import ShapesSamples, adherence, shapes_config_for, shapes_prompts, vae_ceiling
from canvas_jax.config import CanvasTrainConfig
from core_jax import config as config_lib


@pytest.mark.parametrize("kind", ["scenes", "single"])
def test_perfect_generator_has_full_adherence(kind):
    cfg = shapes.ShapesConfig(resolution=32)
    seen = shapes_prompts(6, cfg, kind=kind, seed=3)
    held = shapes_prompts(4, cfg, heldout=True, kind=kind, seed=3)
    assert not set(seen) & set(held)
    assert all("green triangle" in c for c in held) and not any("green triangle" in c for c in seen)
    assert shapes_prompts(6, cfg, kind=kind, seed=3) == seen  # deterministic from the seed
    captions = seen + held
    images = np.stack([shapes.render(shapes.Scene(shapes.parse_caption(c)), 32) for c in captions])
    samples = ShapesSamples(captions, np.array([False] * 6 + [True] * 4), images)
    report, results = adherence(samples)
    assert report == {"adherence": 1.0, "adherence_seen": 1.0, "adherence_heldout": 1.0, "n_seen": 6,
                      "n_heldout": 4, "checker_min_fit": checker.MIN_FIT, "failures": {}}
    # a blank image answers no prompt, and a swapped image answers another prompt, not its own
    samples.images[0] = 245
    samples.images[6] = images[7] if captions[6] != captions[7] else 245
    report, results = adherence(samples)
    assert not results[0] and not results[6] and report["adherence_seen"] == pytest.approx(5 / 6)
    assert sum(report["failures"].values()) == 2 and "count" in report["failures"]


class _Posterior:
    def __init__(self, z):
        self.z = z

    def mode(self):
        return self.z


class _PixelVAE:
    """encode/decode as identities, or, with ``blank_rows``, decoding a white band over those rows."""

    def __init__(self, blank_rows=slice(0, 0)):
        self.blank_rows = blank_rows

    def encode(self, x):
        return _Posterior(x)

    def decode(self, z):
        out = np.array(z)
        out[:, self.blank_rows] = 0.92  # the white background, in [-1, 1]
        return out


def test_vae_ceiling_scores_reconstructions_of_the_ground_truth():
    cfg = shapes.ShapesConfig(resolution=32)
    captions = shapes_prompts(4, cfg, seed=1) + shapes_prompts(4, cfg, heldout=True, seed=1)
    samples = ShapesSamples(captions, np.array([False] * 4 + [True] * 4), np.zeros((8, 32, 32, 3), np.uint8))
    assert vae_ceiling(_PixelVAE(), samples, cfg) == {"vae_ceiling_seen": 1.0, "vae_ceiling_heldout": 1.0}
    wiped = vae_ceiling(_PixelVAE(blank_rows=slice(None)), samples, cfg)  # every shape erased
    assert wiped == {"vae_ceiling_seen": 0.0, "vae_ceiling_heldout": 0.0}


def test_single_prompts_are_capped_at_those_that_exist():
    cfg = shapes.ShapesConfig()
    assert len(shapes_prompts(1000, cfg, heldout=True, kind="single")) == len(shapes.heldout_prompts(cfg))


def test_inpaint_scoring_on_known_outputs():
    cases = inpaint_cases(6, shapes.ShapesConfig(resolution=32), masks="shape", seed=1)
    assert cases.masks.shape == (6, 32, 32, 1) and 0 < cases.masks.mean() < 0.5
    perfect = score_inpaint(cases.images, cases)
    assert perfect["unmasked_psnr_db"] == MAX_PSNR_DB
    assert perfect["adherence_in_mask"] == 1.0 == perfect["adherence_input"]
    # erase the masked region (the background colour): the outside is untouched, but a shape is missing
    erased = np.where(cases.masks > 0.5, np.uint8(245), cases.images)
    out = score_inpaint(erased, cases)
    assert out["unmasked_psnr_db"] == MAX_PSNR_DB and out["adherence_in_mask"] == 0.0
    # noise outside the mask lowers the PSNR to what that noise gives
    noisy = np.clip(cases.images.astype(int) + np.where(cases.masks > 0.5, 0, 8), 0, 255).astype(np.uint8)
    db = score_inpaint(noisy, cases)["unmasked_psnr_db"]
    assert 25 < db < 40  # 8/255 everywhere outside (less where clipped): about 30 dB


def test_random_masks_are_seeded():
    a = inpaint_cases(4, masks="random", seed=5)
    b = inpaint_cases(4, masks="random", seed=5)
    np.testing.assert_array_equal(a.masks, b.masks)
    assert a.captions == b.captions and not np.array_equal(a.masks, inpaint_cases(4, masks="random", seed=6).masks)


def test_shapes_config_comes_from_a_run_folder(tmp_path):
    cfg = config_lib.from_dict(CanvasTrainConfig, {"data": {"options": {"holdout": [["red", "circle"]]}}})
    config_lib.save(cfg, str(tmp_path / "config.yaml"))
    (tmp_path / "checkpoints").mkdir()
    got = shapes_config_for(tmp_path, 48)
    assert got.holdout == (("red", "circle"),) and got.resolution == 48
    assert shapes_config_for(tmp_path / "nothing", 32) == dataclasses.replace(shapes.ShapesConfig(), resolution=32)
