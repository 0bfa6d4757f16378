"""recsys-jax convert from/to-generative-recommenders against fixtures made once by GR's own code.

``tests/recsys/fixtures/gr/`` (see its README and ``make_gr_fixtures.py``): a tiny random research
HSTU saved as GR saves it, its gin file, a few histories with timestamps, GR's encoder outputs and its
MIPS top-k. Our import must reproduce them (1e-4, same top-k); the export must give back GR's keys,
shapes and the identical tensors.
"""

import dataclasses
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gin")

from recsys_jax.cli import main  # noqa: E402
from recsys_jax.convert import load_state_dict, model_from_state_dict, read_gin  # noqa: E402
from recsys_jax.retriever import Retriever  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "gr")
CKPT, GIN = os.path.join(FIXTURES, "hstu_tiny.pt"), os.path.join(FIXTURES, "hstu_tiny.gin")
TOL = 1e-4


@pytest.fixture(scope="module")
def cases():
    with np.load(os.path.join(FIXTURES, "cases.npz")) as f:
        return dict(f)


@pytest.fixture(scope="module")
def reference():
    with open(os.path.join(FIXTURES, "reference.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """The fixture checkpoint through ``recsys-jax convert from-generative-recommenders``."""
    run = tmp_path_factory.mktemp("gr_import") / "run"
    assert main(["convert", "from-generative-recommenders", "--checkpoint", CKPT, "--gin", GIN,
                 "--out", str(run)]) == 0
    return run


def _encode(model, ids, ts):
    return np.asarray(model(np.asarray(ids, np.int32), np.asarray(ts, np.int32), deterministic=True))


def test_import_reproduces_gr_encoder_outputs_left_and_right_padded(imported, cases):
    r = Retriever.from_checkpoint(imported)
    assert r.model.cfg.time_bias_from == "next" and r.max_len == 8 and r.num_items == 40
    lengths, ref = cases["history_lengths"], cases["encoder_outputs"]
    # GR's own right-padded [B, max_sequence_length + gr_output_length + 1] inputs (request time at the pad)
    ours = _encode(r.model, cases["padded_ids"], cases["padded_timestamps"])
    np.testing.assert_allclose(ours, ref, atol=TOL)
    # the same histories left-padded to our window, as Retriever and eval feed them
    L = r.max_len
    ids, ts = np.zeros((len(lengths), L), np.int64), np.zeros((len(lengths), L), np.int64)
    for b, n in enumerate(lengths):
        ids[b, L - n:], ts[b, L - n:] = cases["historical_ids"][b, :n], cases["historical_timestamps"][b, :n]
    left = _encode(r.model, ids, ts)
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(left[b, L - n:], ref[b, :n], atol=TOL)
        np.testing.assert_allclose(left[b, -1], cases["current_embeddings"][b], atol=TOL)


def test_import_gives_gr_top_k_through_retriever(imported, cases):
    r = Retriever.from_checkpoint(imported)
    k = cases["top_ids"].shape[1]
    histories = [[str(i) for i in cases["historical_ids"][b, :n]] for b, n in enumerate(cases["history_lengths"])]
    stamps = [cases["historical_timestamps"][b, :n].tolist() for b, n in enumerate(cases["history_lengths"])]
    items, scores = r.recommend(histories, stamps, k=k, exclude_history=False)
    assert [[int(i) for i in row] for row in items] == cases["top_ids"].tolist()
    np.testing.assert_allclose(np.asarray(scores, np.float32), cases["top_scores"], atol=TOL)


def test_the_time_bias_option_is_what_makes_parity(cases):
    """With our default (gaps from the query's own timestamp) the same weights do not reproduce GR."""
    cfg = read_gin(GIN).hstu_config()
    model = model_from_state_dict(load_state_dict(CKPT), dataclasses.replace(cfg, time_bias_from="query"))
    ours = _encode(model, cases["padded_ids"], cases["padded_timestamps"])
    assert np.abs(ours - cases["encoder_outputs"]).max() > 1e-2


def test_export_round_trips_to_gr_keys_shapes_and_tensors(imported, reference, tmp_path, capsys):
    out, gin_out = tmp_path / "back.pt", tmp_path / "back.gin"
    assert main(["convert", "to-generative-recommenders", "--checkpoint", str(imported), "--out", str(out),
                 "--gin", str(gin_out)]) == 0
    assert json.loads(capsys.readouterr().out)["tensors"] == len(reference["state_dict"])
    back = torch.load(out, weights_only=True)["model_state_dict"]
    original = torch.load(CKPT, weights_only=True)["model_state_dict"]
    assert {k: list(v.shape) for k, v in back.items()} == reference["state_dict"]
    for key, value in original.items():
        assert back[key].dtype == value.dtype and torch.equal(back[key], value), key
    assert read_gin(gin_out).hstu_config() == read_gin(GIN).hstu_config()


def _write_gin(path, **changes):
    text = open(GIN).read()
    for key, value in changes.items():
        text += f"{key} = {value}\n"
    path.write_text(text)
    return str(path)


def test_bad_inputs_are_errors_that_name_the_problem(tmp_path, capsys):
    run = str(tmp_path / "run")
    gin = _write_gin(tmp_path / "ua.gin", **{"hstu_encoder.concat_ua": "True"})
    assert main(["convert", "from-generative-recommenders", "--checkpoint", CKPT, "--gin", gin, "--out", run]) == 2
    assert "hstu_encoder.concat_ua" in capsys.readouterr().err
    gin = _write_gin(tmp_path / "heads.gin", **{"hstu_encoder.num_heads": "4"})
    assert main(["convert", "from-generative-recommenders", "--checkpoint", CKPT, "--gin", gin, "--out", run]) == 2
    assert "_hstu._attention_layers.0._uvqk" in capsys.readouterr().err
    bad = tmp_path / "not_a_checkpoint.pt"
    bad.write_bytes(b"not a torch file")
    assert main(["convert", "from-generative-recommenders", "--checkpoint", str(bad), "--gin", GIN, "--out", run]) == 2
    assert "weights_only=True" in capsys.readouterr().err
    assert not os.path.exists(run)


def test_export_refuses_a_model_gr_cannot_express(tmp_path):
    from recsys_jax.convert import state_dict_from_model

    cfg = read_gin(GIN).hstu_config()
    model = model_from_state_dict(load_state_dict(CKPT), dataclasses.replace(cfg, time_bias_from="query"))
    with pytest.raises(ValueError, match="time_bias_from='query'"):
        state_dict_from_model(model)


def test_import_into_a_dataset_reorders_the_table_and_evaluates(tmp_path, cases, capsys):
    """--dataset: our dense ids follow the dataset's id map (here a subset of GR's items, renumbered), so
    ``recsys-jax eval`` runs on it; Retriever gives GR's ranking restricted to those items."""
    rng = np.random.default_rng(0)
    b = 3  # a full-length history: its items are in the dataset, with 22 more of GR's 40
    n = cases["history_lengths"][b]
    history = set(cases["historical_ids"][b, :n].tolist())
    others = rng.permutation(sorted(set(range(1, 41)) - history))[:22]
    kept = sorted(history | set(others.tolist()))
    with open(tmp_path / "ratings.dat", "w") as f:
        for user in range(1, 13):
            for t, item in enumerate(kept[(6 * user + j) % len(kept)] for j in range(6)):  # every kept item
                f.write(f"{user}::{item}::5::{1_600_000_000 + 1000 * t}\n")
    data = tmp_path / "data"
    assert main(["data", "build", "--format", "movielens", "--input", str(tmp_path / "ratings.dat"), "--no-items",
                 "--out", str(data), "--quiet"]) == 0
    dataset = next(p for p in data.rglob("id_maps.json")).parent
    run = tmp_path / "run"
    assert main(["convert", "from-generative-recommenders", "--checkpoint", CKPT, "--gin", GIN, "--out", str(run),
                 "--dataset", str(dataset)]) == 0
    capsys.readouterr()
    r = Retriever.from_checkpoint(run)
    assert sorted(int(i) for i in r.item_map.keys[1:]) == kept and r.num_items == len(kept)
    hist = [str(i) for i in cases["historical_ids"][b, :n]]
    gr_rank = [str(i) for i in cases["top_ids"][b] if i in kept]  # GR's ranking restricted to the dataset
    items, _ = r.recommend(hist, cases["historical_timestamps"][b, :n].tolist(), k=len(gr_rank),
                           exclude_history=False)
    assert list(items) == gr_rank
    assert main(["eval", "--checkpoint", str(run), "--no-baseline", "eval.batch_size=4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["model"] == "hstu" and out["users"] > 0 and "ndcg@10" in out["metrics"]
