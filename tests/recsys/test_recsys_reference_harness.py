"""benchmarks/reference/: the side-by-side HSTU train-step harness keeps running (ours on a tiny config),
and hands the reference the same training pairs as ours."""

import importlib.util
import json
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HARNESS = os.path.join(ROOT, "benchmarks", "reference")


def _load(name):
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", os.path.join(HARNESS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lines(out):
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_dry_run_times_our_train_step_and_skips_the_reference_without_a_checkout(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GR_PATH", raising=False)
    harness = _load("hstu_train_step")
    assert harness.main(["--dry-run", "--steps", "2", "--warmup", "1", "--work-dir", str(tmp_path)]) == 0
    rows = _lines(capsys.readouterr().out)
    assert [r["side"] for r in rows] == ["ours", "reference"]  # no ratio without both sides
    ours, ref = rows
    assert ours["measured_steps"] == 2 and ours["train_sequences_per_s"] > 0
    assert np.isfinite(ours["first_loss"]) and np.isfinite(ours["last_loss"])
    assert ours["batch_size"] == 8 and ours["max_len"] == 16 and ours["num_negatives"] == 16
    assert "--gr-path" in ref["skipped"]


def test_harness_uses_length_grouping_when_the_config_sets_it(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GR_PATH", raising=False)
    harness = _load("hstu_train_step")
    assert harness.main(["--dry-run", "--steps", "6", "--warmup", "1", "--work-dir", str(tmp_path), "--override",
                         "data.length_grouping=2", "--override", "data.length_bucket=4", "--override",
                         "data.pack_rows=0"]) == 0
    ours = _lines(capsys.readouterr().out)[0]
    assert ours["length_grouping"] == 2 and ours["measured_steps"] == 6
    # batches cut to multiples of 4 (of L=16): fewer padded positions, one compiled program per width
    assert ours["padded_positions_per_batch"] < 8 * 16
    assert len(ours["compile_s"]) > 1 and all(k.startswith("[8, ") for k in ours["compile_s"])


def test_harness_packs_our_batches_and_unpacks_the_references(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GR_PATH", raising=False)
    harness = _load("hstu_train_step")
    assert harness.main(["--dry-run", "--steps", "3", "--warmup", "1", "--work-dir", str(tmp_path), "--override",
                         "data.pack_rows=2"]) == 0
    ours = _lines(capsys.readouterr().out)[0]
    assert ours["pack_rows"] == 2 and ours["rows_per_batch"] < 8 and ours["train_sequences_per_s"] > 0
    assert ours["padded_positions_per_batch"] == ours["rows_per_batch"] * 16
    cfg, _ = harness.load_run_config(harness_args(harness, tmp_path, ["data.pack_rows=2"]))
    dataset = harness.load_dataset(harness.resolve_dataset(cfg.data, verbose=False))
    packed = harness.make_batches(dataset, cfg, 1)[0]
    rows = harness.padded(packed, cfg)  # the reference's batch: 8 users, one a row, left-padded
    assert rows["item_ids"].shape == (8, 16) and rows["mask"].sum() == packed["mask"].sum()
    assert rows["mask"][:, -1].all()


def harness_args(harness, tmp_path, overrides):
    return harness.argparse.Namespace(dry_run=True, data="", work_dir=str(tmp_path), cache_dir=None,
                                      config=harness.os.path.join(harness.ROOT, "configs/recsys/hstu_ml1m.yaml"),
                                      override=overrides)


def test_reference_rows_hold_the_same_training_pairs_as_our_batch():
    pytest.importorskip("torch")
    side = _load("reference_side")
    # two users, left-padded to L=5: inputs and next-item targets as our train_example makes them
    seqs = [[3, 1, 4, 1], [2, 7, 1, 8, 2, 8]]
    L = 5
    batch = {k: np.zeros((2, L), np.int64) for k in ("item_ids", "timestamps", "target_ids", "target_timestamps")}
    batch["mask"] = np.zeros((2, L), bool)
    for r, s in enumerate(seqs):
        s = s[-(L + 1):]
        n = len(s) - 1
        batch["item_ids"][r, L - n:], batch["target_ids"][r, L - n:] = s[:-1], s[1:]
        batch["timestamps"][r, L - n:] = 100 * np.arange(n)
        batch["target_timestamps"][r, L - n:] = 100 * np.arange(1, n + 1)
        batch["mask"][r, L - n:] = True
    rows = side.rows_from_batch(batch, L)
    for r, s in enumerate(seqs):
        s = s[-(L + 1):]
        m = int(rows["history_lengths"][r])
        full = [*rows["historical_ids"][r, :m].tolist(), int(rows["target_ids"][r])]
        assert full == s and m == int(batch["mask"][r].sum())  # the same m input/target pairs
        assert rows["historical_ids"][r, m:].sum() == 0  # right-padded, as their dataset
        assert rows["historical_timestamps"][r, :m].tolist() == (100 * np.arange(m)).tolist()
        assert int(rows["target_timestamps"][r]) == 100 * m


def test_reference_side_runs_on_a_checkout(tmp_path):
    gr_path, python = os.environ.get("GR_PATH"), os.environ.get("GR_PYTHON")
    if not gr_path or not python:
        pytest.skip("reference side not run: set GR_PATH to a facebookresearch/generative-recommenders checkout "
                    "and GR_PYTHON to a python with the 'reference' extra (torch + fbgemm-gpu-cpu + gin-config)")
    harness = _load("hstu_train_step")
    rng = np.random.default_rng(0)
    L, B, n = 8, 4, 3
    batches = []
    for _ in range(n):
        mask = np.arange(L)[None, :] >= rng.integers(0, L - 1, size=(B, 1))
        items = np.where(mask, rng.integers(1, 31, size=(B, L)), 0)
        ts = np.where(mask, np.cumsum(rng.integers(1, 1000, size=(B, L)), axis=1), 0)
        targets = np.where(mask, rng.integers(1, 31, (B, L)), 0)
        batches.append({"item_ids": items, "timestamps": ts, "target_ids": targets,
                        "target_timestamps": np.where(mask, ts + 5, 0), "mask": mask})
    spec = {"num_items": 30, "embed_dim": 8, "num_blocks": 1, "num_heads": 1, "max_len": L, "dropout": 0.2,
            "num_negatives": 4, "temperature": 0.05, "learning_rate": 1e-3, "weight_decay": 0.0, "batch_size": B}
    args = type("Args", (), {"gr_path": gr_path, "ref_python": python, "work_dir": str(tmp_path), "ref_threads": 1})
    row = harness.time_reference(args, spec, batches, warmup=1)
    assert row["side"] == "reference" and row["measured_steps"] == n - 1 and row["train_sequences_per_s"] > 0
    assert np.isfinite(row["first_loss"])
