import json
import os

import numpy as np
import pytest

from core_jax import data as data_lib
from recsys_jax.data.builder import SourceSpec, build
from recsys_jax.data.loader import load_dataset
from recsys_jax.data.synthetic import SyntheticConfig

# user "b" has a tie at t=5 (file order: y then x); user "c" has 2 items (train only)
LOG = ("b::y::4::5\nb::x::5::5\na::p::5::1\na::q::1::2\na::r::4::3\nb::z::3::1\nc::p::5::9\n"
       "a::s::5::4\nc::q::5::8\nb::w::5::9\n")
MOVIES = "p::P (1990)::Drama\nx::X::Comedy|Drama\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("ml")
    (d / "ratings.dat").write_text(LOG, encoding="iso-8859-1")
    (d / "movies.dat").write_text(MOVIES, encoding="iso-8859-1")
    path = build(SourceSpec("movielens", str(d / "ratings.dat")), d / "out", max_seq_len=3, progress=False,
                 verbose=False)
    return path, d


def test_round_trip_through_array_record(built):
    path, _ = built
    assert path.endswith(os.path.join("out", "sequences", "1.0.0"))
    maps = json.load(open(os.path.join(path, "id_maps.json")))
    items, users = maps["items"]["to_original"], maps["users"]["to_original"]
    src = data_lib.open_split(path, "users")
    got = {users[int(r["user"])]: ([items[i] for i in r["items"]], r["timestamps"].tolist())
           for r in (src[i] for i in range(len(src)))}
    # sorted by time (stable on ties), most recent 3 kept
    assert got == {"a": (["q", "r", "s"], [2, 3, 4]), "b": (["y", "x", "w"], [5, 5, 9]),
                   "c": (["q", "p"], [8, 9])}
    assert maps["items"]["to_dense"] == {k: i for i, k in enumerate(items) if k is not None}


def test_json_files_and_report(built):
    path, _ = built
    ds = load_dataset(os.path.dirname(os.path.dirname(path)))  # the --out folder works too
    assert ds.path == path and ds.num_users == 3 and ds.num_items == len(ds.item_map) == 7
    assert ds.item_counts_all.sum() == 8 and ds.item_counts_all[0] == 0
    # train part: a -> q; b -> y; c (2 items) -> q, p
    want = {"q": 2, "y": 1, "p": 1}
    assert {ds.item_map.to_original(i): int(c) for i, c in enumerate(ds.item_counts) if c} == want
    assert ds.side_info[ds.item_map.to_dense("x")] == {"title": "X", "genres": ["Comedy", "Drama"]}
    assert ds.side_info[ds.item_map.to_dense("q")] is None
    assert ds.item_texts()[ds.item_map.to_dense("x")] == "X. Comedy, Drama"
    r = ds.report
    assert (r["users"], r["interactions"], r["truncated_interactions"]) == (3, 8, 2)
    assert r["split_users"] == {"train": 1, "validation": 2, "test": 2, "users_in_no_split": 0}
    assert r == json.load(open(os.path.join(path, "build_report.json")))
    assert ds.sequence(ds.user_map.to_dense("c"))["items"].tolist() == [ds.item_map.to_dense(k) for k in "qp"]
    on_disk = load_dataset(path, in_memory=False)
    assert ds.in_memory and not on_disk.in_memory
    for u in range(ds.num_users):
        a, b = ds.sequence(u), on_disk.sequence(u)
        assert a["items"].tolist() == b["items"].tolist() and a["timestamps"].tolist() == b["timestamps"].tolist()


def test_iterators(built):
    path, _ = built
    ds = load_dataset(path)
    batch = next(ds.train_iterator(batch_size=2, max_len=4, seed=0, shard_index=0, shard_count=1))
    assert batch["item_ids"].shape == (2, 4) and batch["target_ids"].dtype == np.int32
    assert set(batch["user"].tolist()) == {ds.user_map.to_dense("c")}  # the only train user
    got = list(ds.eval_iterator("test", batch_size=3, max_len=4, shard_index=0, shard_count=1))
    assert len(got) == 1 and got[0]["valid"].tolist().count(True) == 2
    tgt = {int(u): ds.item_map.to_original(int(t)) for u, t, v in
           zip(got[0]["user"], got[0]["target_id"], got[0]["valid"]) if v}
    assert tgt == {ds.user_map.to_dense("a"): "s", ds.user_map.to_dense("b"): "w"}
    # two processes: each gets the same number of whole batches
    parts = [list(ds.eval_iterator("validation", batch_size=1, max_len=4, shard_index=i, shard_count=2))
             for i in range(2)]
    assert [len(p) for p in parts] == [1, 1]


def test_existing_folder_needs_overwrite(built):
    _, d = built
    with pytest.raises(FileExistsError, match="--overwrite"):
        build(SourceSpec("movielens", str(d / "ratings.dat")), d / "out", progress=False, verbose=False)


def test_synthetic_build_and_train_batches(tmp_path):
    cfg = SyntheticConfig(num_users=40, num_items=200, num_categories=5, seed=1)
    path = build(SourceSpec("synthetic", synthetic=cfg), tmp_path, max_seq_len=50, progress=False, verbose=False)
    ds = load_dataset(path)
    assert ds.num_users == 40 and ds.side_info is not None and ds.item_texts()[1].startswith("category-")
    it = ds.train_iterator(batch_size=8, max_len=16, seed=0, shard_index=0, shard_count=1)
    b = next(it)
    assert b["item_ids"].shape == (8, 16) and b["mask"].dtype == bool
    real = b["mask"]
    assert (b["target_ids"][real] > 0).all() and (b["item_ids"][~real] == 0).all()
    assert b["item_ids"].max() <= ds.num_items
    state = it.get_state()  # checkpointable and resumable to the same batches
    nxt = next(it)
    it.set_state(state)
    np.testing.assert_array_equal(next(it)["item_ids"], nxt["item_ids"])


def test_real_ml100k_counts(real_data, tmp_path):
    path = build(SourceSpec("recbole", os.path.join(real_data, "ml-100k", "ml-100k.inter")), tmp_path,
                 max_seq_len=None, progress=False, verbose=False)
    ds = load_dataset(path)
    assert (ds.num_users, ds.num_items, ds.report["interactions"]) == (943, 1682, 100_000)
    assert ds.item_counts_all.sum() == 100_000 and ds.side_info[1]["title"] == "Toy Story"
