"""task=dpo on the tiny run: a preference dataset -> Diffusion-DPO (LoRA and full weights). (`rl collect` -> the
same dataset kind is tested in test_rl_collect.py.)"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_config
from flax import nnx

import canvas_jax
from canvas_jax.models.lora import lora_layers
from canvas_jax.data.preferences import build_preferences
from canvas_jax.runs import restore_run
from canvas_jax.train.run import train

PROMPTS = ["a small red square at the top left", "a large blue circle at the center"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Four pairs: chosen = a bright image, rejected = a dark one, of random pixels."""
    from PIL import Image

    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(4):
        for kind, lo in (("chosen", 128), ("rejected", 0)):
            Image.fromarray(rng.integers(lo, lo + 128, (16, 16, 3), dtype=np.uint8)).save(root / f"{i}_{kind}.png")
        lines.append(json.dumps({"prompt": PROMPTS[i % 2], "chosen": f"{i}_chosen.png", "rejected": f"{i}_rejected.png"}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return build_preferences(root / "pairs.jsonl", root / "data", verbose=False)[0]


def _rows(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("rank", [2, 0])
def test_dpo_starts_at_log2_and_moves(tmp_path, t2i_run, pairs, rank):
    run_dir = tmp_path / f"dpo_{rank}"
    cfg = tiny_config(run_dir, task="dpo", **{"init_from": t2i_run, "data.dataset": pairs, "lora.rank": rank,
                                             "dpo.beta": 5000.0, "train.steps": 3, "train.batch_size": 2,
                                             "optim.learning_rate": 1e-2, "sampling.prompts": []})
    train(cfg)
    rows = [r for r in _rows(run_dir) if r.get("split") == "train"]
    # step 1 is evaluated before any update: the policy is the reference, so the loss is log 2 and no pair
    # is ranked either way
    # (up to float noise between the two forward passes, times beta / 2)
    assert rows[0]["dpo_loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert rows[0]["reward_margin"] == pytest.approx(0.0, abs=1e-2)
    assert abs(rows[-1]["reward_margin"]) > 0.1  # the policy moved away from the reference
    run = restore_run(run_dir, ema=False)
    if rank:
        assert run.model.reference is None  # the reference is the policy with its adapters off
        assert all(float(layer.scale[...]) == 1.0 for layer in lora_layers(run.model.unet).values())
        assert (Path(run_dir) / "lora" / "pytorch_lora_weights.safetensors").is_file()
    else:
        base = restore_run(t2i_run, ema=True).model.unet
        ref = run.model.reference  # checkpointed frozen copy of the base UNet, unchanged by training
        x = np.random.default_rng(0).standard_normal((1, 8, 8, 4)).astype(np.float32)
        ctx = np.random.default_rng(1).standard_normal((1, 12, 384)).astype(np.float32)
        forward = nnx.jit(lambda unet: unet(x, np.array([10]), ctx))  # one compiled program, not op by op
        np.testing.assert_allclose(forward(ref), forward(base), atol=1e-6)
    image = canvas_jax.Pipeline.from_pretrained(run_dir)(PROMPTS[0], num_steps=2, output_type="np").images
    assert image.shape == (1, 16, 16, 3)
