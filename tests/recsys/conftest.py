"""A tiny trained run shared by the task, retriever and CLI tests (trained once per session).

The data is the synthetic generator written out as MovieLens files with renamed items (original id
``13 * i + 5``, titles in movies.dat), so original and dense ids differ and side info exists.
"""

import contextlib
import io
import json
import os
import types

import pytest
import yaml

import recsys_jax  # noqa: F401

ITEM_OFFSET, ITEM_STRIDE = 5, 13
TINY_CONFIG = {
    "data": {"build": {"format": "movielens", "max_seq_len": 40}, "max_len": 16},
    "model": {"name": "hstu", "hstu": {"embed_dim": 32, "num_layers": 1, "num_heads": 1, "attention_dim": 16,
                                       "linear_dim": 16, "max_seq_len": 16, "dropout": 0.1}},
    "loss": {"num_negatives": 32, "temperature": 0.05},
    "eval": {"ks": [10, 50, 200], "batch_size": 64},
    "train": {"steps": 90, "batch_size": 32, "log_every": 10, "eval_every": 30, "best_metric": "ndcg@10",
              "progress": False, "tensorboard": False, "checkpoint": {"every": 30, "keep": 5}},
    "optim": {"learning_rate": 3.0e-3},
}


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UNIFIED_CONFIG = os.path.join(ROOT, "configs", "recsys", "unified_tiny.yaml")
# configs/recsys/unified_tiny.yaml shrunk: 80 users, 40 organic items, 16 ads of 4 advertisers, 3 steps
UNIFIED_TINY = ["data.build.marketplace.num_users=80", "data.build.marketplace.num_categories=4",
                "data.build.marketplace.organic_per_category=10", "data.build.marketplace.num_advertisers=4",
                "data.max_len=12", "model.hstu.max_seq_len=12", "model.hstu.embed_dim=16", "model.hstu.attention_dim=8",
                "model.hstu.linear_dim=8", "model.hstu.num_layers=1", "model.hstu.scenario_hidden_dim=16",
                "unified.loss.num_negatives=16", "train.steps=3", "train.batch_size=8", "train.log_every=1",
                "train.progress=false", "train.tensorboard=false"]


def original_item(dense_synthetic: str) -> str:
    return str(ITEM_STRIDE * int(dense_synthetic) + ITEM_OFFSET)


@pytest.fixture(scope="session")
def movielens_files(tmp_path_factory):
    """ratings.dat + movies.dat from the synthetic generator (300 users, 150 items)."""
    from recsys_jax.data.synthetic import SyntheticConfig, generate

    data = generate(SyntheticConfig(num_users=300, num_items=150, num_categories=6, min_len=10, max_len=30, seed=3))
    folder = tmp_path_factory.mktemp("ml_files")
    with open(folder / "ratings.dat", "w", encoding="iso-8859-1") as f:
        for x in data.interactions:
            f.write(f"{x.user}::{original_item(x.item)}::5::{x.timestamp}\n")
    with open(folder / "movies.dat", "w", encoding="iso-8859-1") as f:
        for item, info in data.items.items():
            f.write(f"{original_item(item)}::{info['title']}::{info['category']}\n")
    return folder


def run_cli(argv) -> tuple[int, str, str]:
    """``recsys-jax argv`` in this process: (exit code, stdout, stderr)."""
    from recsys_jax.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="session")
def recsys_run(tmp_path_factory, movielens_files):
    """``recsys-jax train`` of a tiny HSTU on the MovieLens-format synthetic data (once per session)."""
    root = tmp_path_factory.mktemp("recsys_run")
    config = dict(TINY_CONFIG)
    config_path = root / "tiny.yaml"
    with open(config_path, "w") as f:
        yaml.safe_dump(config, f)
    run_dir = root / "run"
    overrides = [f"data.build.input={movielens_files / 'ratings.dat'}", f"data.cache_dir={root / 'cache'}",
                 f"train.run_dir={run_dir}"]
    rc, out, err = run_cli(["train", "--config", str(config_path), *overrides])
    assert rc == 0, err[-3000:]
    final = json.loads(out.strip().splitlines()[-1])
    from recsys_jax.data.loader import load_dataset
    from recsys_jax.train.config import load_config
    from recsys_jax.train.dataset_cache import resolve_dataset

    cfg = load_config(str(config_path), overrides)
    dataset = load_dataset(resolve_dataset(cfg.data, verbose=False))
    return types.SimpleNamespace(run_dir=str(run_dir), config_path=str(config_path), overrides=overrides,
                                 final=final, dataset=dataset, cfg=cfg, root=root)


@pytest.fixture(scope="session")
def recsys_cli():
    return run_cli


@pytest.fixture(scope="session")
def restored_best(recsys_run):
    from recsys_jax.train.restore import restore_run

    return restore_run(recsys_run.run_dir, which="best")



@pytest.fixture(scope="session")
def unified_tiny():
    """The unified test config: ``(config path, overrides)`` of a 3-step run on 80 simulated users."""
    return types.SimpleNamespace(config=UNIFIED_CONFIG, overrides=list(UNIFIED_TINY))


@pytest.fixture(scope="session")
def unified_run(tmp_path_factory, unified_tiny):
    """``(cfg, state, metrics, root)`` of the tiny unified run, trained once per session."""
    from recsys_jax.train.config import load_config
    from recsys_jax.train.task import train

    root = tmp_path_factory.mktemp("unified")
    overrides = unified_tiny.overrides + [f"data.cache_dir={root / 'cache'}", f"train.run_dir={root / 'run'}"]
    cfg = load_config(unified_tiny.config, overrides)
    state, metrics = train(cfg)
    return cfg, state, metrics, root


@pytest.fixture(scope="session")
def unified_served(unified_run):
    """``(cfg, Retriever, query, is_ad)`` over the tiny unified run; ``query``: the recommend kwargs of user 3's
    last six events."""
    from recsys_jax import Retriever
    from recsys_jax.data.loader import load_dataset
    from recsys_jax.train.dataset_cache import resolve_dataset

    cfg = unified_run[0]
    r = Retriever.from_checkpoint(cfg.train.run_dir, which="latest")
    ds = load_dataset(resolve_dataset(cfg.data, verbose=False))
    rec = ds.sequence(3)
    last = slice(-6, None)
    query = dict(history=[ds.item_map.to_original(i) for i in rec["items"][last]],
                 timestamps=[int(t) for t in rec["timestamps"][last]],
                 actions=[ds.events["actions"][a] for a in rec["actions"][last]],
                 surfaces=[ds.events["surfaces"][s] for s in rec["surfaces"][last]])
    is_ad = {ds.item_map.to_original(i): bool(ds.events["item_is_ad"][i]) for i in range(1, ds.num_items + 1)}
    return cfg, r, query, is_ad
