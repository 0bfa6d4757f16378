"""Retrieval recall@k: perfect embeddings give 1, shuffled ones chance; identical captions count as hits."""

import numpy as np
import pytest

from canvas_jax.errors import InputError
from canvas_jax.eval.retrieval import evaluate_retrieval, recall_at_k, retrieval_metrics, same_captions


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_aligned_embeddings_give_recall_one_and_shuffled_ones_chance():
    rng = np.random.default_rng(0)
    n = 400
    emb = _unit(rng.normal(size=(n, 64)))
    same = np.eye(n, dtype=bool)
    perfect = retrieval_metrics(emb, emb, same)
    assert all(float(v) == 1.0 for v in perfect.values()), perfect
    shuffled = retrieval_metrics(emb, emb[rng.permutation(n)], same)
    for key, chance in (("caption_to_image_recall@1", 1 / n), ("image_to_caption_recall@5", 5 / n)):
        assert float(shuffled[key]) <= chance + 3 * np.sqrt(chance / n) + 1e-9, (key, shuffled[key])


def test_recall_at_k_counts_a_positive_within_the_first_k():
    scores = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.1], [0.5, 0.6, 0.7]])
    positives = np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0]], bool)
    r = recall_at_k(scores, positives, ks=(1, 2, 3))
    # query 0: rank 1; query 1: rank 2; query 2: rank 3
    assert [float(r[k]) for k in (1, 2, 3)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    r = recall_at_k(scores, positives, ks=(1,), query_mask=np.array([0, 1, 1]))
    assert float(r[1]) == 0.0
    with pytest.raises(InputError, match="one shape"):
        recall_at_k(scores, positives[:2])


def test_identical_captions_are_hits_and_held_out_queries_are_reported_apart():
    captions = ["a red circle", "a red circle", "a blue square", "a green triangle"]
    same = same_captions(captions)
    assert same[0, 1] and not same[0, 2] and same.sum() == 6
    # image 1 is closest to caption 0 (the same text): a hit both ways
    img = _unit(np.array([[1.0, 0, 0], [1.0, 0.01, 0], [0, 1.0, 0], [0, 0, 1.0]]))
    txt = _unit(np.array([[1.0, 0, 0], [1.0, 0, 0], [0, 1.0, 0], [0, 0.2, 1.0]]))
    m = retrieval_metrics(img, txt, same, heldout=np.array([0, 0, 0, 1]))
    assert float(m["caption_to_image_recall@1"]) == 1.0 and float(m["image_to_caption_recall@1"]) == 1.0
    assert float(m["caption_to_image_recall@1_heldout"]) == 1.0
    # the held-out image now looks like the blue square: its query misses, the seen ones still hit
    img[3] = _unit(np.array([[0, 1.0, 0.1]]))[0]
    m = retrieval_metrics(img, txt, same, heldout=np.array([0, 0, 0, 1]))
    assert float(m["image_to_caption_recall@1_heldout"]) == 0.0
    assert float(m["image_to_caption_recall@1_seen"]) == 1.0


class _Lookup:
    """An embedder whose images are looked up by their first pixel and captions by their text."""

    def __init__(self, table):
        self.table = table

    def embed_images(self, images):
        return np.stack([self.table[int(im[0, 0, 0])] for im in images])

    def embed_texts(self, texts):
        return np.stack([self.table[int(t.split()[-1])] for t in texts])


def test_evaluate_retrieval_report():
    table = _unit(np.random.default_rng(1).normal(size=(8, 16)))
    images = np.zeros((8, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(8)
    captions = [f"caption {i}" for i in range(8)]
    report = evaluate_retrieval(_Lookup(table), images, captions, heldout=np.array([0] * 6 + [1] * 2))
    assert report["caption_to_image_recall@1"] == 1.0 and report["image_to_caption_recall@1_heldout"] == 1.0
    assert report["n"] == 8 and report["n_heldout"] == 2 and report["chance_recall@1"] == pytest.approx(1 / 8)
    with pytest.raises(InputError, match="8 images but 7 captions"):
        evaluate_retrieval(_Lookup(table), images, captions[:7])
