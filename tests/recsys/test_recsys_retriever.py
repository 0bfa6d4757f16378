"""recsys_jax.Retriever: original ids both ways, history exclusion, unknown ids, padding sides, batches."""

import numpy as np
import pytest

from recsys_jax import Retriever, UnknownItemError
from recsys_jax.data.sequences import IdMap

K = 10


@pytest.fixture(scope="module")
def retriever(recsys_run):
    return Retriever.from_checkpoint(recsys_run.run_dir)


def _history(recsys_run, user=0, n=12):
    """A user's most recent ``n`` items as ORIGINAL ids (with timestamps)."""
    ds = recsys_run.dataset
    rec = ds.sequence(user)
    items = [ds.item_map.to_original(i) for i in rec["items"][-n:]]
    return items, [int(t) for t in rec["timestamps"][-n:]]


def _bruteforce_topk(r: Retriever, history, timestamps, k, exclude=True):
    """Top-k in original ids computed by hand: dense ids -> model -> numpy scores -> original ids."""
    import jax.numpy as jnp
    from flax import nnx

    from recsys_jax.eval.evaluate import user_embeddings

    dense = np.array([r.item_map.to_dense(h) for h in history], np.int32)[-r.max_len:]
    ts = np.array(timestamps, np.int32)[-r.max_len:]
    ids = np.zeros((1, r.max_len), np.int32)
    tss = np.zeros((1, r.max_len), np.int32)
    ids[0, r.max_len - len(dense):], tss[0, r.max_len - len(ts):] = dense, ts
    u = np.asarray(nnx.jit(user_embeddings)(r.model, jnp.asarray(ids), jnp.asarray(tss)))[0]
    scores = np.asarray(r.table) @ u
    scores[0] = -np.inf
    if exclude:
        scores[[r.item_map.to_dense(h) for h in history]] = -np.inf
    order = np.argsort(-scores, kind="stable")[:k]
    return [r.item_map.to_original(i) for i in order], scores[order]


def test_loaded_from_the_run_folder(retriever, recsys_run):
    assert retriever.which == "best" and retriever.num_items == recsys_run.dataset.num_items
    assert retriever.max_len == recsys_run.cfg.data.max_len


def test_recommend_maps_original_ids_both_ways(retriever, recsys_run):
    history, ts = _history(recsys_run)
    assert history[0] != str(recsys_run.dataset.item_map.to_dense(history[0]))  # ids really differ
    items, scores = retriever.recommend(history, ts, k=K)
    want_items, want_scores = _bruteforce_topk(retriever, history, ts, K)
    assert items == want_items
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-6)
    assert scores.dtype == np.float32 and np.all(np.diff(scores) <= 0)
    assert all(i in recsys_run.dataset.item_map for i in items)
    # ints are the same ids as their strings
    items_int, _ = retriever.recommend([int(h) for h in history], ts, k=K)
    assert items_int == items
    # side info follows the original id
    assert retriever.item_info(items[0])["title"].endswith(f"#{(int(items[0]) - 5) // 13}")


def test_history_is_excluded_unless_asked(retriever, recsys_run):
    history, ts = _history(recsys_run, user=3)
    n = retriever.num_items
    items, scores = retriever.recommend(history, ts, k=n)
    assert not set(items) & set(history)
    assert len(items) == n - len(set(history))  # every other item, each once
    all_items, _ = retriever.recommend(history, ts, k=n, exclude_history=False)
    assert sorted(all_items) == sorted(retriever.item_map.keys[1:])
    want, _ = _bruteforce_topk(retriever, history, ts, K, exclude=False)
    assert all_items[:K] == want


def test_unknown_ids_error_or_skip(retriever, recsys_run):
    history, ts = _history(recsys_run, user=5)
    with pytest.raises(UnknownItemError, match="'no-such-item' at position 2"):
        retriever.recommend(history[:2] + ["no-such-item"] + history[2:], ts[:2] + [0] + ts[2:], k=K)
    skipped, s1 = retriever.recommend(history[:2] + ["no-such-item"] + history[2:], ts[:2] + [0] + ts[2:], k=K,
                                      unknown="skip")
    plain, s2 = retriever.recommend(history, ts, k=K)
    assert skipped == plain
    np.testing.assert_allclose(s1, s2, rtol=1e-6)
    with pytest.raises(ValueError, match="empty after skipping"):
        retriever.recommend(["nope"], [0], k=K, unknown="skip")
    with pytest.raises(ValueError, match="unknown must be one of"):
        retriever.recommend(history, ts, unknown="ignore")
    with pytest.raises(ValueError, match=r"k must be in \[1, "):
        retriever.recommend(history, ts, k=retriever.num_items + 1)
    with pytest.raises(ValueError, match="timestamps has 1 values but the history has"):
        retriever.recommend(history, [0], k=K)


def test_left_and_right_padding_agree(retriever, recsys_run):
    right = Retriever(retriever.model, retriever.item_map, max_len=retriever.max_len, padding="right",
                      side_info=retriever.side_info, uses_timestamps=True)
    for user in (1, 7):
        for n in (3, 40):  # shorter and longer than the window
            history, ts = _history(recsys_run, user=user, n=n)
            a_items, a_scores = retriever.recommend(history, ts, k=K)
            b_items, b_scores = right.recommend(history, ts, k=K)
            assert a_items == b_items
            np.testing.assert_allclose(a_scores, b_scores, rtol=1e-5, atol=1e-6)


def test_batch_equals_one_by_one(retriever, recsys_run):
    rows = [_history(recsys_run, user=u, n=n) for u, n in ((0, 5), (2, 16), (4, 9))]
    items, scores = retriever.recommend([h for h, _ in rows], [t for _, t in rows], k=K)
    assert len(items) == len(scores) == 3
    for (h, t), got_items, got_scores in zip(rows, items, scores):
        want_items, want_scores = retriever.recommend(h, t, k=K)
        assert got_items == want_items
        np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-6)


def test_missing_timestamps_warn_for_a_time_aware_model(retriever, recsys_run):
    history, _ = _history(recsys_run)
    fresh = Retriever(retriever.model, retriever.item_map, max_len=retriever.max_len, uses_timestamps=True)
    with pytest.warns(UserWarning, match="trained with timestamps"):
        items, _ = fresh.recommend(history, k=K)
    assert len(items) == K


def test_id_map_must_match_the_model(retriever):
    with pytest.raises(ValueError, match="id map has 2 items"):
        Retriever(retriever.model, IdMap([None, "a", "b"], offset=1), max_len=4)
