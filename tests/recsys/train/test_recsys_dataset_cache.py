"""The dataset cache: keyed on the input's content (not its path or mtime), built on process 0, one barrier
on every process."""

import json
import os
import shutil

import numpy as np

from recsys_jax.data.builder import dataset_dir
from recsys_jax.train import dataset_cache
from recsys_jax.train.config import BuildConfig, DataConfig


def _ratings(path, n=50_000, seed=0):
    rng = np.random.default_rng(seed)
    lines = [f"{u}::{i}::{r}::{t}" for u, i, r, t in zip(rng.integers(1, 500, n), rng.integers(1, 900, n),
                                                          rng.integers(1, 6, n), rng.integers(10**9, 2 * 10**9, n))]
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _data_cfg(tmp_path, input_path):
    return DataConfig(cache_dir=str(tmp_path / "cache"),
                      build=BuildConfig(format="movielens", input=input_path, items=""))


def test_key_is_the_content_not_the_path_or_mtime(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    a = _ratings(tmp_path / "a" / "ratings.dat")
    b = tmp_path / "b" / "ratings.dat"
    b.write_bytes(open(a, "rb").read())
    os.utime(b, (1, 1))  # another host: another mount point, another mtime
    assert dataset_cache.cached_dataset_dir(_data_cfg(tmp_path, a)) == dataset_cache.cached_dataset_dir(
        _data_cfg(tmp_path, str(b)))
    for offset in (0, os.path.getsize(a) // 2, os.path.getsize(a) - 2):  # an edit anywhere sampled changes it
        data = bytearray(open(a, "rb").read())
        data[offset] = ord("7") if data[offset] != ord("7") else ord("8")
        b.write_bytes(bytes(data))
        assert dataset_cache.content_key(str(b)) != dataset_cache.content_key(a), offset
    assert os.path.getsize(a) > dataset_cache.SAMPLES * dataset_cache.SAMPLE_BYTES // 4


def test_every_process_meets_at_the_barrier_and_process_0_builds(tmp_path, monkeypatch):
    cfg = _data_cfg(tmp_path, _ratings(tmp_path / "ratings.dat", n=100))
    out = dataset_cache.cached_dataset_dir(cfg)
    calls = []

    def fake_build(b, out_dir, verbose):
        calls.append(("build", jax_index()))
        os.makedirs(dataset_dir(out_dir, dataset_cache.NAME), exist_ok=True)
        with open(os.path.join(dataset_dir(out_dir, dataset_cache.NAME), "build_report.json"), "w") as f:
            json.dump({}, f)

    index = [0]

    def jax_index():
        return index[0]

    monkeypatch.setattr(dataset_cache, "_build_atomically", fake_build)
    monkeypatch.setattr(dataset_cache.multihost_utils, "sync_global_devices", lambda name: calls.append(("barrier",)))
    monkeypatch.setattr(dataset_cache.jax, "process_count", lambda: 2)
    monkeypatch.setattr(dataset_cache.jax, "process_index", jax_index)

    dataset_cache.resolve_dataset(cfg, verbose=False)  # process 0, nothing built yet: builds, then the barrier
    assert calls == [("build", 0), ("barrier",)]
    calls.clear()
    index[0] = 1  # process 1 already sees the dataset: it still meets process 0 at the barrier
    dataset_cache.resolve_dataset(cfg, verbose=False)
    assert calls == [("barrier",)]
    calls.clear()
    shutil.rmtree(out)  # a host without the shared file system: after the barrier it builds its own copy
    dataset_cache.resolve_dataset(cfg, verbose=False)
    assert calls == [("barrier",), ("build", 1)]
