import numpy as np
import pytest

from recsys_jax.data.sequences import build_sequences
from recsys_jax.data.synthetic import SyntheticConfig, generate

SMALL = SyntheticConfig(num_users=300, num_items=400, num_categories=10, seed=3)


@pytest.fixture(scope="module")
def small():
    return generate(SMALL)


def test_deterministic_for_a_seed(small):
    again = generate(SMALL)
    assert again.interactions == small.interactions and again.items == small.items
    other = generate(SyntheticConfig(num_users=300, num_items=400, num_categories=10, seed=4))
    assert other.interactions != small.interactions


def test_basic_statistics(small):
    seqs = build_sequences(small.interactions)
    lengths = np.array([len(s) for s in seqs.items])
    assert seqs.num_users == 300 and lengths.min() >= 20 and lengths.max() <= 100
    assert all(len(set(s.tolist())) == len(s) for s in seqs.items)  # no repeats
    # the log is in global time order; each user's times strictly increase
    ts = [x.timestamp for x in small.interactions]
    assert ts == sorted(ts)
    assert all((np.diff(t) > 0).all() for t in seqs.timestamps)
    gaps = np.concatenate([np.diff(t) for t in seqs.timestamps])
    assert np.mean(gaps < 3600) > 0.5 and np.mean(gaps > 3600) > 0.05  # sessions and breaks
    # popularity skew: the top 10% of items take far more than 10% of the interactions
    counts = np.sort(seqs.item_counts()[1:])[::-1]
    assert counts[: len(counts) // 10].sum() / counts.sum() > 0.25
    # side info: every item has a text that names its category
    info = small.items["1"]
    assert info["text"].startswith(info["category"] + " ") and len(info["tags"]) >= 2
    assert int(info["category"].split("-")[1]) == small.item_category[1]


def test_next_item_is_learnable_beyond_most_popular(small):
    """A simple sequence-aware rule (popular items of the last item's category) must beat most-popular."""
    seqs = build_sequences(small.interactions)
    cat = small.item_category[[int(seqs.item_map.to_original(i)) if i else 0 for i in range(seqs.num_items + 1)]]
    train = seqs.item_counts(last=2)
    top_pop = set((np.argsort(-train[1:])[:10] + 1).tolist())
    by_cat = {c: np.flatnonzero(cat == c)[np.argsort(-train[cat == c])] for c in np.unique(cat[1:])}
    hit_pop = hit_seq = 0
    for s in seqs.items:
        hist, target = set(s[:-1].tolist()), int(s[-1])
        hit_pop += target in top_pop
        hit_seq += target in [i for i in by_cat[cat[s[-2]]].tolist() if i not in hist][:10]
    n = seqs.num_users
    assert hit_seq / n > 2 * hit_pop / n and hit_seq / n > 0.15


def test_size_knob_and_validation():
    cfg = SyntheticConfig(num_users=100, num_items=200, scale=0.5)
    assert (cfg.users, cfg.items) == (50, 100)
    with pytest.raises(ValueError, match="max_len=100 exceeds num_items"):
        SyntheticConfig(num_items=50, num_categories=5).validate()
    with pytest.raises(ValueError, match="p_drift must be in"):
        SyntheticConfig(p_drift=2.0).validate()
