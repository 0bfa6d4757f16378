import json

import numpy as np
import pytest

from recsys_jax.data.formats import Interaction
from recsys_jax.data.sequences import IdMap, build_sequences, dense_side_info, pad_sequence


def _log(rows):
    return [Interaction(u, i, t, n, r) for n, (u, i, t, r) in enumerate(rows, 1)]


def _orig(seqs, user):
    u = seqs.user_map.to_dense(user)
    return [seqs.item_map.to_original(i) for i in seqs.items[u]], seqs.timestamps[u].tolist()


def test_sort_by_time_is_stable_on_ties():
    rows = [("u", "c", 20, None), ("u", "a", 10, None), ("u", "x", 15, None), ("u", "b", 10, None),
            ("u", "y", 15, None), ("u", "z", 15, None)]
    seqs = build_sequences(_log(rows))
    # ties keep file order: a before b (t=10), x before y before z (t=15)
    assert _orig(seqs, "u") == (["a", "b", "x", "y", "z", "c"], [10, 10, 15, 15, 15, 20])
    assert seqs.has_timestamps


def test_no_timestamps_keep_file_order():
    seqs = build_sequences(_log([("u", "b", None, None), ("v", "a", None, None), ("u", "a", None, None)]))
    assert _orig(seqs, "u") == (["b", "a"], [0, 0])
    assert not seqs.has_timestamps


def test_mixed_timestamps_is_an_error():
    with pytest.raises(ValueError, match="line 2"):
        build_sequences(_log([("u", "a", 1, None), ("u", "b", None, None)]))


def test_truncation_keeps_most_recent_items():
    rows = [("u", str(i), 100 - i, None) for i in range(10)]  # item 9 is the oldest
    seqs = build_sequences(_log(rows), max_seq_len=4)
    assert _orig(seqs, "u")[0] == ["3", "2", "1", "0"]
    assert seqs.stats["truncated_interactions"] == 6
    assert seqs.num_items == 4  # items seen only in the dropped part get no id


def test_dense_ids_natural_order_and_round_trip():
    rows = [("10", "b", 1, None), ("9", "10", 2, None), ("9", "2", 3, None), ("x", "b", 4, None)]
    seqs = build_sequences(_log(rows))
    assert seqs.item_map.keys == [None, "2", "10", "b"]  # numbers by value, then strings; 0 = padding
    assert seqs.user_map.keys == ["9", "10", "x"]
    for m in (seqs.item_map, seqs.user_map):
        back = IdMap.from_json(json.loads(json.dumps(m.to_json())))
        assert back.keys == m.keys and back.offset == m.offset
        for k in m.keys:
            if k is not None:
                assert back.to_original(back.to_dense(k)) == k
        assert back.to_json()["to_dense"] == m.to_json()["to_dense"]
    assert seqs.items[0].dtype == np.int32 and seqs.timestamps[0].dtype == np.int64
    assert seqs.items[seqs.user_map.to_dense("9")].tolist() == [2, 1]
    with pytest.raises(KeyError, match="unknown original id 'zz'"):
        seqs.item_map.to_dense("zz")
    with pytest.raises(KeyError, match="out of range"):
        seqs.item_map.to_original(0)


def test_filters_rating_and_min_user_interactions():
    rows = [("a", "1", 1, 5.0), ("a", "2", 2, 1.0), ("a", "3", 3, 4.0), ("b", "1", 1, 5.0), ("b", "2", 2, 2.0)]
    seqs = build_sequences(_log(rows), min_rating=3.0, min_user_interactions=2)
    assert seqs.user_map.keys == ["a"]
    assert _orig(seqs, "a")[0] == ["1", "3"]
    assert seqs.stats["filtered_rating"] == 2
    assert seqs.stats["filtered_users"] == 1 and seqs.stats["filtered_user_interactions"] == 1
    with pytest.raises(ValueError, match="needs ratings"):
        build_sequences(_log([("a", "1", 1, None)]), min_rating=1)


def test_item_counts_train_part_leaves_out_last_two():
    rows = [("a", i, t, None) for t, i in enumerate("pqrs")] + [("b", "p", 0, None), ("b", "q", 1, None)]
    seqs = build_sequences(_log(rows))
    ids = {k: seqs.item_map.to_dense(k) for k in "pqrs"}
    all_counts, train = seqs.item_counts(), seqs.item_counts(last=2)
    assert [all_counts[ids[k]] for k in "pqrs"] == [2, 2, 1, 1] and all_counts[0] == 0
    # user a (4 items) contributes p, q; user b (2 items: train only) contributes both
    assert [train[ids[k]] for k in "pqrs"] == [2, 2, 0, 0]


def test_side_info_by_dense_id():
    seqs = build_sequences(_log([("u", "a", 1, None), ("u", "b", 2, None)]))
    dense, stats = dense_side_info(seqs.item_map, {"a": {"title": "A"}, "zz": {"title": "unused"}})
    assert dense == [None, {"title": "A"}, None]
    assert stats == {"items_without_side_info": 1, "side_info_without_interactions": 1}


def test_pad_sequence_left_right_and_truncate():
    assert pad_sequence([1, 2, 3], 5).tolist() == [0, 0, 1, 2, 3]
    assert pad_sequence([1, 2, 3], 5, padding="right").tolist() == [1, 2, 3, 0, 0]
    assert pad_sequence([1, 2, 3, 4], 2).tolist() == [3, 4]
    assert pad_sequence([], 2).tolist() == [0, 0]
    with pytest.raises(ValueError, match="padding must be 'left' or 'right'"):
        pad_sequence([1], 2, padding="middle")
