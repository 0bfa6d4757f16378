"""``eval.exclude_history``: a target that repeats a history item, against a brute-force numpy ranking;
and the config error for selecting on the test split."""

import numpy as np
import pytest

from core_jax.config import ConfigError
from recsys_jax.data.builder import SourceSpec, build
from recsys_jax.data.loader import load_dataset
from recsys_jax.eval.baselines import evaluate_most_popular
from recsys_jax.eval.evaluate import targets_in_history
from recsys_jax.train.config import load_config

KS = (1, 3, 10)
NUM_ITEMS = 12
# user -> items in time order (original ids = dense ids here: every item 1..12 appears in order of first use)
SEQUENCES = {
    1: [1, 2, 3, 4, 5, 6, 2],  # test target 2 repeats a history item
    2: [7, 8, 9, 10, 11, 12, 7, 8],  # validation target 7 and test target 8 both repeat
    3: [3, 4, 5, 6],  # no repeats
    4: [9, 1, 10, 9],  # test target 9 repeats
    5: [11, 12, 2, 5, 6],
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("repeats")
    lines = [f"{u} {i}" for u, items in SEQUENCES.items() for i in items]
    (root / "data.txt").write_text("\n".join(lines) + "\n")
    path = build(SourceSpec(format="text", input=str(root / "data.txt")), root / "out", max_seq_len=None,
                 progress=False, verbose=False)
    ds = load_dataset(path)
    assert ds.num_items == NUM_ITEMS
    return ds


def _bruteforce(dataset, split, scores, exclude_history):
    """Exact means in numpy: pessimistic 1-based rank of the target among items 1..N (minus the whole
    earlier history when ``exclude_history``); an excluded target is a miss."""
    rows = []
    for n, user in zip(dataset.lengths, dataset.record_users):
        if n < 3:
            continue
        items = np.asarray(dataset.sequence(int(user))["items"])
        t = n - 2 if split == "validation" else n - 1
        eligible = np.ones(len(scores), bool)
        eligible[0] = False
        if exclude_history:
            eligible[items[:t]] = False
        target = items[t]
        rows.append(float(np.sum(eligible & (scores >= scores[target]))) if eligible[target] else np.inf)
    ranks = np.asarray(rows)
    out = {f"hr@{k}": np.mean(ranks <= k) for k in KS}
    out |= {f"ndcg@{k}": np.mean(np.where(ranks <= k, 1 / np.log2(1 + ranks), 0.0)) for k in KS}
    return out | {"mrr": np.mean(1 / ranks)}


@pytest.mark.parametrize("split", ["validation", "test"])
def test_a_repeated_target_is_a_hit_only_when_history_is_kept(dataset, split):
    ids = dataset.item_map
    scores = np.linspace(0.1, 1.0, NUM_ITEMS + 1)  # a fixed "model": the same scores for every user
    # the repeated targets score highest: rank 1 when history is kept, excluded (a miss) when removed
    top = [2, 7, 8, 9] if split == "test" else [7]
    for rank, original in enumerate(top):
        scores[ids.to_dense(str(original))] = 10.0 - rank
    scores[0] = 0.0
    repeats = targets_in_history(dataset, split)
    assert repeats == pytest.approx(3 / 5 if split == "test" else 1 / 5)
    got = {}
    for exclude in (False, True):
        got[exclude] = evaluate_most_popular(dataset, split, counts=scores, batch_size=2, ks=KS,
                                             exclude_history=exclude)
        expected = _bruteforce(dataset, split, scores, exclude)
        assert got[exclude]["count"] == 5
        for k, v in expected.items():
            assert got[exclude][k] == pytest.approx(v, abs=1e-6), (split, exclude, k)
    # kept: every repeated target is ranked (in the top 4); removed: they are misses, so hr@k <= 1 - repeats
    assert got[False]["hr@10"] >= repeats + 1e-9
    assert got[True]["hr@10"] <= 1 - repeats + 1e-9
    assert got[False]["mrr"] > got[True]["mrr"]


def test_best_metric_on_the_test_split_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train.best_metric.*eval.split.*test split"):
        load_config(None, ["eval.split=test"])  # the default best_metric is ndcg@10
    cfg = load_config(None, ["eval.split=test", "train.best_metric=null"])  # watching test without selecting
    assert cfg.eval.split == "test" and cfg.train.best_metric is None
    assert load_config(None, ["eval.exclude_history=false"]).eval.exclude_history is False
