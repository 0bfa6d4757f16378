"""The in-project classifier learns an easy synthetic task (the colour of a square) on the shared loop, and its
features separate the classes (classifier Fréchet distance), with save/load and accuracy helpers."""

import numpy as np
import pytest
from flax import nnx

from canvas_jax.eval import (
    ClassifierConfig,
    ClassifierModelConfig,
    SmallCNN,
    accuracy,
    classifier_frechet_distance,
    extract_features,
    load_classifier,
    predict_logits,
    save_classifier,
    train_classifier,
)
from core_jax.loop import TrainConfig
from core_jax.metrics import read_jsonl
from core_jax.optim import OptimConfig

COLOURS = np.array([[220, 40, 40], [40, 200, 60], [50, 70, 230]], np.uint8)  # red, green, blue


def squares(n, seed, size=16):
    """Coloured squares of random size and position on random dark backgrounds; label = colour index."""
    g = np.random.default_rng(seed)
    labels = g.integers(0, len(COLOURS), n)
    images = np.empty((n, size, size, 3), np.uint8)
    for i, label in enumerate(labels):
        images[i] = g.integers(0, 90)
        s = g.integers(4, 9)
        y, x = g.integers(0, size - s, 2)
        images[i, y:y + s, x:x + s] = COLOURS[label]
    noise = g.integers(-15, 16, images.shape)
    return np.clip(images.astype(np.int32) + noise, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("classifier")
    images, labels = squares(512, seed=0)
    eval_images, eval_labels = squares(96, seed=1)
    cfg = ClassifierConfig(
        model=ClassifierModelConfig(num_classes=3, widths=(8, 16), feature_dim=16, groups=4),
        train=TrainConfig(steps=60, batch_size=32, log_every=5, run_dir=str(run_dir), progress=False,
                          tensorboard=False),
        optim=OptimConfig(learning_rate=1e-2))
    model, metrics = train_classifier(images, labels, cfg, eval_images=eval_images, eval_labels=eval_labels)
    return model, metrics, run_dir, (eval_images, eval_labels)


def test_training_loss_decreases_and_reaches_high_accuracy(trained):
    model, metrics, run_dir, (images, labels) = trained
    losses = [r["loss"] for r in read_jsonl(run_dir / "metrics.jsonl", split="train")]
    assert len(losses) >= 10
    print(f"classifier: loss {losses[0]:.3f} -> {losses[-1]:.3f}, eval accuracy {metrics['eval_accuracy']:.3f}")
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:2]), losses
    assert metrics["eval_accuracy"] >= 0.9, metrics
    assert accuracy(model, images, labels, batch_size=40) == pytest.approx(metrics["eval_accuracy"], abs=1e-6)


def test_features_separate_classes(trained):
    model, _, _, (images, labels) = trained
    feats = extract_features(model, images)
    assert feats.shape == (len(images), 16)
    red, blue = images[labels == 0], images[labels == 2]
    half = len(red) // 2
    same = classifier_frechet_distance(model, red[:half], red[half:])
    other = classifier_frechet_distance(model, red, blue)
    print(f"classifier Frechet distance: red vs red {same:.4f}, red vs blue {other:.4f}")
    assert other > 5 * same, (same, other)
    assert classifier_frechet_distance(model, red, red) == pytest.approx(0.0, abs=1e-6)


def test_save_load_round_trip(trained, tmp_path):
    model, _, _, (images, _) = trained
    path = save_classifier(model, tmp_path / "classifier.safetensors")
    back = load_classifier(path)
    np.testing.assert_allclose(predict_logits(back, images[:8]), predict_logits(model, images[:8]), atol=1e-6)


def test_bad_inputs_are_explained(trained):
    model, _, _, _ = trained
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):
        predict_logits(model, np.zeros((2, 16, 16), np.uint8))
    with pytest.raises(ValueError, match="labels must be in"):
        train_classifier(np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 2, 5],
                         ClassifierConfig(model=ClassifierModelConfig(num_classes=3)))
    with pytest.raises(ValueError, match="divisible by groups"):
        SmallCNN(ClassifierModelConfig(widths=(6,), groups=4), rngs=nnx.Rngs(0))
