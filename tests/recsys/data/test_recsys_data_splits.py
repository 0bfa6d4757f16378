import numpy as np
import pytest

from recsys_jax.data.splits import RecordSubset, eval_example, in_split, split_indices, train_example, train_window

# user 7: items 11..16 at times 100..600
EX = {"user": 7, "items": np.array([11, 12, 13, 14, 15, 16], np.int32),
      "timestamps": np.arange(1, 7, dtype=np.int64) * 100}


def test_leave_one_out_on_a_hand_example():
    tr = train_example(EX, max_len=6)
    # train on 11..14 (all but the last two): inputs 11,12,13 -> targets 12,13,14
    assert tr["item_ids"].tolist() == [0, 0, 0, 11, 12, 13]
    assert tr["target_ids"].tolist() == [0, 0, 0, 12, 13, 14]
    assert tr["timestamps"].tolist() == [0, 0, 0, 100, 200, 300]
    assert tr["target_timestamps"].tolist() == [0, 0, 0, 200, 300, 400]
    assert tr["mask"].tolist() == [False] * 3 + [True] * 3
    assert int(tr["user"]) == 7

    va = eval_example(EX, split="validation", max_len=6)
    assert va["item_ids"].tolist() == [0, 0, 11, 12, 13, 14] and int(va["target_id"]) == 15
    assert int(va["target_timestamp"]) == 500 and int(va["length"]) == 4 and bool(va["valid"])
    te = eval_example(EX, split="test", max_len=6)
    assert te["item_ids"].tolist() == [0, 11, 12, 13, 14, 15] and int(te["target_id"]) == 16
    assert te["timestamps"].tolist() == [0, 100, 200, 300, 400, 500]


def test_right_padding_and_history_truncation():
    te = eval_example(EX, split="test", max_len=3, padding="right")
    assert te["item_ids"].tolist() == [13, 14, 15] and int(te["length"]) == 3
    va = eval_example(EX, split="validation", max_len=6, padding="right")
    assert va["item_ids"].tolist() == [11, 12, 13, 14, 0, 0]
    tr = train_example(EX, max_len=5, padding="right")
    assert tr["item_ids"].tolist() == [11, 12, 13, 0, 0] and tr["target_ids"].tolist() == [12, 13, 14, 0, 0]
    tr = train_example(EX, max_len=2)  # most recent window of the training prefix
    assert tr["item_ids"].tolist() == [12, 13] and tr["target_ids"].tolist() == [13, 14]


def test_random_windows_cover_the_prefix_and_never_leak_eval_items():
    ex = {"user": 0, "items": np.arange(1, 23, dtype=np.int32), "timestamps": np.zeros(22, np.int64)}
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(200):
        tr = train_example(ex, max_len=5, rng=rng)
        assert tr["mask"].all() and (tr["target_ids"] == tr["item_ids"] + 1).all()
        assert tr["target_ids"].max() <= 20  # 21 and 22 are the validation and test targets
        starts.add(int(tr["item_ids"][0]))
    assert starts == set(range(1, 16))  # every window of the 20-item prefix
    assert train_window(22, 5) == (14, 20)


def test_short_users():
    assert [in_split(n, "train") for n in range(1, 6)] == [False, True, False, True, True]
    assert [in_split(n, "test") for n in range(1, 6)] == [False, False, True, True, True]
    two = {"user": 1, "items": np.array([5, 6], np.int32), "timestamps": np.array([1, 2])}
    tr = train_example(two, max_len=3)
    assert tr["item_ids"].tolist() == [0, 0, 5] and tr["target_ids"].tolist() == [0, 0, 6]
    with pytest.raises(ValueError, match="user 1 has 2 items; test needs at least 3"):
        eval_example(two, split="test", max_len=3)
    with pytest.raises(ValueError, match="split must be 'validation' or 'test'"):
        eval_example(EX, split="train", max_len=3)


def test_split_indices_and_padding_records():
    lengths = [1, 2, 3, 4, 5]
    assert split_indices(lengths, "train").tolist() == [1, 3, 4]
    assert split_indices(lengths, "test", pad_to_multiple=4).tolist() == [2, 3, 4, -1]
    sub = RecordSubset([EX] * 5, split_indices(lengths, "test", pad_to_multiple=4))
    pad = eval_example(sub[3], split="test", max_len=4)
    assert not bool(pad["valid"]) and int(pad["target_id"]) == 0 and pad["item_ids"].tolist() == [0] * 4
