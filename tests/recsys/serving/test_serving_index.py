"""ItemIndex exact search equals brute-force numpy (ids and scores, ties -> lower id) with every filter."""

import numpy as np
import pytest

from recsys_jax.serving import ItemIndex
from serving_reference import brute_force, check_all, int_data


def test_exact_equals_brute_force_all_dtypes_and_filters():
    rng = np.random.default_rng(0)
    # many blocks (the running top-k across blocks) of 8 groups, pruned to 3 groups when possible
    make = lambda x, ids, dt: ItemIndex(x, ids, dtype=dt, block=16, group=2, few=3)  # noqa: E731
    assert check_all(make, rng, dtypes=("float32",)) == 5  # every filter combination
    assert check_all(make, rng, dtypes=("bfloat16", "int8"), combos=("everything",)) == 2


def test_ties_go_to_the_lower_id_whatever_the_row_order():
    x = np.ones((50, 4), np.float32)  # every score ties
    ids = np.arange(50)[::-1] * 3 + 7
    got, scores = ItemIndex(x, ids, block=8).search(np.ones((2, 4)), 5)
    np.testing.assert_array_equal(got, [np.sort(ids)[:5]] * 2)
    assert np.all(scores == 4.0)


def test_group_cap_widens_until_exact():
    # one group owns the 200 best items: the first 2k candidates hold only `cap` usable ones,
    # so the search must widen (several passes) to stay exact
    rng = np.random.default_rng(1)
    n, d = 400, 4
    x = int_data(rng, n, d)
    x[:200] += 20
    groups = np.where(np.arange(n) < 200, 0, np.arange(n))
    q = np.ones((3, d), np.float32)
    got_i, got_s = ItemIndex(x, block=16).search(q, 30, groups=groups, per_group_cap=2)
    ref_i, ref_s = brute_force(x, np.arange(n), q, 30, groups=groups, cap=2)
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_array_equal(got_s, ref_s.astype(np.float32))
    assert np.sum(np.isin(got_i, np.arange(200))) == 2 * 3


def test_fewer_eligible_than_k_pads_with_minus_one():
    x = np.eye(4, dtype=np.float32)
    got, s = ItemIndex(x).search(np.ones((1, 4)), 4, mask=np.array([True, False, True, False]),
                                 exclude=[[2]])
    np.testing.assert_array_equal(got, [[0, -1, -1, -1]])
    assert s[0, 0] == 1.0 and np.all(np.isneginf(s[0, 1:]))


def test_min_exclude_pads_the_exclusion_lists_without_changing_results():
    rng = np.random.default_rng(4)
    x = int_data(rng, 300, 4)
    q = rng.standard_normal((3, 4)).astype(np.float32)
    index = ItemIndex(x, block=16)
    exclude = [[5, 9], [], [1, 2, 3]]
    assert index._exclude_rows(exclude, 3, min_exclude := 50).shape == (3, 64)
    got = index.search(q, 20, exclude=exclude, min_exclude=min_exclude)
    np.testing.assert_array_equal(got[0], index.search(q, 20, exclude=exclude)[0])
    np.testing.assert_array_equal(got[0], brute_force(x, np.arange(300), q, 20, exclude=exclude)[0])


def test_float_data_matches_numpy_within_rounding():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((20000, 16)).astype(np.float32)
    q = rng.standard_normal((7, 16)).astype(np.float32)
    # late blocks take the pruned path (few groups beat the running threshold)
    got_i, got_s = ItemIndex(x, block=1024, group=8, few=16).search(q, 10)
    ref_i, ref_s = brute_force(x, np.arange(20000), q, 10)
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_allclose(got_s, ref_s, rtol=1e-5, atol=1e-5)


def test_int8_and_bf16_storage_round_trip():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((64, 16)).astype(np.float32)
    np.testing.assert_allclose(ItemIndex(x, dtype="int8").stored(), x, atol=np.abs(x).max() / 127)
    np.testing.assert_allclose(ItemIndex(x, dtype="bf16").stored(), x, rtol=1e-2)


@pytest.mark.parametrize("kwargs,match", [
    ({"embeddings": np.zeros((3,))}, r"\[N, D\]"),
    ({"embeddings": np.zeros((3, 2)), "ids": [1, 1, 2]}, "unique"),
    ({"embeddings": np.zeros((3, 2)), "ids": [1.5, 2, 3]}, "integers"),
    ({"embeddings": np.zeros((3, 2)), "dtype": "int4"}, "dtype must be one of"),
])
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ItemIndex(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    ({"queries": np.zeros((2, 3)), "k": 1}, r"queries must be \[B, D=2\]"),
    ({"k": 0}, r"k must be an integer in \[1, N=3\]"),
    ({"k": 4}, r"k must be"),
    ({"k": 1, "mask": np.ones(2, bool)}, r"mask must have shape \[N=3\]"),
    ({"k": 1, "groups": np.zeros(3, int)}, "groups and per_group_cap"),
    ({"k": 1, "groups": np.zeros(3, int), "per_group_cap": 0}, "per_group_cap must be"),
    ({"k": 1, "exclude": [[1]]}, "one list of ids per query"),
])
def test_bad_search(kwargs, match):
    index = ItemIndex(np.ones((3, 2), np.float32))
    kwargs = {"queries": np.ones((2, 2), np.float32), **kwargs}
    with pytest.raises(ValueError, match=match):
        index.search(**kwargs)


class _RowSource:
    """An [N, D] row source that records the largest slice read (no __array__: it cannot be copied whole)."""

    def __init__(self, x):
        self.x, self.shape, self.largest = x, x.shape, 0

    def __getitem__(self, idx):
        rows = self.x[idx]
        self.largest = max(self.largest, len(rows))
        return rows


@pytest.mark.parametrize("dtype", ["bfloat16", "int8"])
def test_memory_stays_near_the_stored_corpus(dtype):
    """Building reads the source in chunks (no full float32 copy), and the search program converts one
    block at a time (with a bfloat16-typed table XLA converted the whole table to float32 per search)."""
    import jax.numpy as jnp

    from recsys_jax.serving import index as index_mod

    rng = np.random.default_rng(4)
    n, d = 6 * index_mod._CHUNK + 5, 64
    x = rng.standard_normal((n, d)).astype(np.float32)
    src = _RowSource(x)
    index = ItemIndex(src, dtype=dtype, block=4096)
    assert 0 < src.largest <= index_mod._CHUNK < n
    stored = index.stored()
    np.testing.assert_array_equal(stored, ItemIndex(x, dtype=dtype, block=4096).stored())
    q = rng.standard_normal((8, d)).astype(np.float32)
    ids, _ = index.search(q, 20)
    ref_ids, _ = brute_force(stored, np.arange(n), q, 20)
    np.testing.assert_array_equal(ids, ref_ids)
    (fn,) = index._programs.values()  # lowered again for a batch of 256 queries
    args = (jnp.zeros((256, d)), jnp.zeros((256, 0), jnp.int32), jnp.zeros(index.shards, jnp.int32),
            index._table, index._scale, index._valid_dev)
    temp = fn.lower(*args).compile().memory_analysis().temp_size_in_bytes
    assert temp < n * d * 4 / 2, f"search temporaries {temp} B: the float32 table is {n * d * 4} B"
