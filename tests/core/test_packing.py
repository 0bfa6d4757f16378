"""core_jax.packing: first-fit-decreasing plans, pack / unpack round trips, and the refusals."""

import numpy as np
import pytest

from core_jax import data as data_lib
from core_jax import packing


def _batch(lengths, max_len, padding="left"):
    """Examples whose item at (example e, rank r) is 100 * (e + 1) + r, padded to ``max_len``."""
    items = np.zeros((len(lengths), max_len), np.int32)
    for e, n in enumerate(lengths):
        cols = np.arange(max_len - n, max_len) if padding == "left" else np.arange(n)
        items[e, cols] = 100 * (e + 1) + np.arange(n)
    return {"item_ids": items, "timestamps": items.astype(np.int64) * 7, "mask": items > 0,
            "user": np.arange(len(lengths), dtype=np.int32)}


def test_first_fit_decreasing_fills_rows_longest_first():
    plan = packing.first_fit_decreasing([3, 7, 5, 2, 4, 0], 10)
    # 7 -> row 0 [0, 7); 5 -> row 1 [0, 5); 4 -> row 1 [5, 9); 3 -> row 0 [7, 10); 2 -> row 2; 0 -> row 0
    assert plan.rows.tolist() == [0, 0, 1, 2, 1, 0]
    assert plan.offsets.tolist() == [7, 0, 0, 0, 5, 10]
    assert plan.num_rows == 3
    assert packing.first_fit_decreasing([3, 7, 5, 2, 4], 10, row_multiple=4).num_rows == 4
    assert packing.first_fit_decreasing([], 10).num_rows == 1
    with pytest.raises(ValueError, match=r"within \[0, 10\]"):
        packing.first_fit_decreasing([11], 10)


@pytest.mark.parametrize("padding", ["left", "right"])
def test_pack_then_unpack_gives_the_batch_back(padding):
    lengths = [6, 1, 8, 3, 2, 5, 4, 8]
    batch = _batch(lengths, 8, padding)
    plan = packing.first_fit_decreasing(lengths, 8, row_multiple=2)
    packed = packing.pack_sequences(batch, plan, max_len=8, padding=padding)
    assert packed["item_ids"].shape == (plan.num_rows, 8) and plan.num_rows < len(lengths)
    assert packed["user"].tolist() == batch["user"].tolist()  # per-example fields kept
    # every real position once, nothing else; each segment in order, positions counted from its start
    assert sorted(packed["item_ids"][packed["mask"]].tolist()) == sorted(batch["item_ids"][batch["mask"]].tolist())
    seg, pos, items = packed["segment_ids"], packed["positions"], packed["item_ids"]
    np.testing.assert_array_equal(seg > 0, packed["mask"])
    np.testing.assert_array_equal(items[seg > 0], 100 * seg[seg > 0] + pos[seg > 0])
    back = packing.unpack_sequences(packed, len(lengths), max_len=8, padding=padding)
    assert back.keys() == batch.keys()
    for k in batch:
        np.testing.assert_array_equal(back[k], batch[k])


def test_pack_refuses_what_it_would_lose():
    batch = _batch([3, 2], 4)
    plan = packing.first_fit_decreasing([3, 2], 4)
    with pytest.raises(ValueError, match="example 0 has 3 real positions"):
        packing.pack_sequences(batch, packing.first_fit_decreasing([2, 2], 4), max_len=4)
    with pytest.raises(ValueError, match="not all at the right end"):
        packing.pack_sequences(batch, plan, max_len=4, padding="right")
    bad = {**batch, "timestamps": batch["timestamps"] + 1}
    with pytest.raises(ValueError, match="'timestamps' has values outside the real positions"):
        packing.pack_sequences(bad, plan, max_len=4)
    with pytest.raises(ValueError, match="no 'mask' field"):
        packing.pack_sequences({"item_ids": batch["item_ids"]}, plan, max_len=4)
    with pytest.raises(ValueError, match="needs bucket 0"):
        data_lib.LengthGrouping(np.zeros(2), window=1, bucket=4, max_len=4, pack_rows=8)


def test_every_process_packs_its_slice_to_the_same_row_count():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 41, size=96)
    records = [{"n": int(n)} for n in lengths]

    def example(r):
        return {"mask": np.arange(40) >= 40 - r["n"], "item_ids": np.where(np.arange(40) >= 40 - r["n"], 1, 0)}

    def iterator(shard_index, shard_count, batch_size):
        grouping = data_lib.LengthGrouping(lengths, window=1, bucket=0, max_len=40, pack_rows=4)
        return data_lib.make_iterator(records, batch_size=batch_size, seed=3, transforms=[example],
                                      shard_index=shard_index, shard_count=shard_count, length_grouping=grouping)

    shards = [iterator(i, 2, 8) for i in range(2)]
    whole = iterator(0, 1, 16)
    for _ in range(12):
        a, b, w = next(shards[0]), next(shards[1]), next(whole)
        assert a["item_ids"].shape == b["item_ids"].shape and a["item_ids"].shape[0] % 4 == 0
        # the two slices hold the one-process batch's positions
        assert a["mask"].sum() + b["mask"].sum() == w["mask"].sum()
        assert a["segment_ids"].max() <= 8 and b["segment_ids"].max() <= 8
