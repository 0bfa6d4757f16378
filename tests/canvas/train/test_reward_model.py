"""task=reward_model: a Bradley-Terry reward model learns a toy preference (redder images win) to a high held-out
pair accuracy, and the trained run serves as a reward (``learned:RUN``)."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import clip_config

from canvas_jax.data.preferences import build_preferences
from canvas_jax.errors import InputError
from canvas_jax.rl.rewards import parse_rewards
from canvas_jax.train.run import train

PROMPTS = ["a small red square at the top left", "a large blue circle at the center"]


def _tinted(rng, n, size=16):
    """``n`` noisy images, each of one random colour; returns (images uint8, redness = mean red - mean blue)."""
    base = rng.integers(30, 226, (n, 1, 1, 3))
    images = np.clip(base + rng.integers(-25, 26, (n, size, size, 3)), 0, 255).astype(np.uint8)
    return images, images[..., 0].mean((1, 2)) - images[..., 2].mean((1, 2))


@pytest.fixture(scope="module")
def red_pairs(tmp_path_factory):
    """80 train and 32 test pairs: the redder image of two (by >= 20 levels) is chosen."""
    from PIL import Image

    root = tmp_path_factory.mktemp("red_pairs")
    rng = np.random.default_rng(0)
    lines, i = [], 0
    for split, n in (("train", 80), ("test", 32)):
        k = 0
        while k < n:
            (a, b), (ra, rb) = _tinted(rng, 2)
            if abs(ra - rb) < 20:
                continue
            chosen, rejected = (a, b) if ra > rb else (b, a)
            Image.fromarray(chosen).save(root / f"{i}_w.png")
            Image.fromarray(rejected).save(root / f"{i}_l.png")
            lines.append(json.dumps({"prompt": PROMPTS[i % 2], "chosen": f"{i}_w.png", "rejected": f"{i}_l.png",
                                     "split": split}))
            i, k = i + 1, k + 1
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return build_preferences(root / "pairs.jsonl", root / "data", verbose=False)[0]


def test_reward_model_learns_a_toy_preference(tmp_path, red_pairs):
    run_dir = tmp_path / "rm"
    cfg = clip_config(run_dir, task="reward_model", **{"data.dataset": red_pairs, "train.steps": 60,
                                                     "train.batch_size": 16, "train.eval_every": 30,
                                                     "train.log_every": 10, "optim.learning_rate": 3e-3,
                                                     "sampling.prompts": []})
    _, last = train(cfg)
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["split"] == "eval"]
    assert [r["step"] for r in evals] == [30, 60] and {"pair_acc", "loss"} <= set(evals[-1])
    assert last["eval_pair_acc"] >= 0.9, evals  # held-out pairs ranked right
    train_rows = [r for r in rows if r["split"] == "train"]
    assert train_rows[-1]["bt_loss"] < train_rows[0]["bt_loss"] and "pair_acc" in train_rows[-1]

    # the run as a reward, on fresh images: redder scores higher
    reward = parse_rewards(f"learned:{run_dir}=2,diversity=0")
    images, redness = _tinted(np.random.default_rng(7), 64)
    total, parts = reward.scores(images, [PROMPTS[0]] * 64)
    assert set(parts) == {"learned", "diversity"}
    np.testing.assert_allclose(total, 2 * parts["learned"], rtol=1e-6)
    order = np.argsort(redness)
    low, high = parts["learned"][order[:16]], parts["learned"][order[-16:]]
    assert high.mean() > low.mean() and np.mean(high[:, None] > low[None, :]) > 0.9
    with pytest.raises(InputError, match="learned:RUN"):
        parse_rewards("learned")
    with pytest.raises(FileNotFoundError, match="not a training run folder"):
        parse_rewards(f"learned:{tmp_path}")
