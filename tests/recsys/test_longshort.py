"""Long- and short-term interests: leakage of the long table, the future-window metric, training, serving."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from recsys_jax.cli import main as cli_main
from recsys_jax.data.long_history import history_before, long_inputs, short_train_batch
from recsys_jax.eval.future_window import future_window_sums
from recsys_jax.models.hstu import HSTU, HSTUConfig
from recsys_jax.models.long_short import LongShortConfig, LongShortHSTU
from recsys_jax.models.long_term import LongTermConfig, LongTermEncoder
from recsys_jax.retriever import Retriever
from recsys_jax.serving.long_table import build_long_table, encode_long, load_run
from recsys_jax.train.longshort import load_config, load_sequences, run, train_short

TINY = ["data.window=4", "data.short_len=8", "long.embed_dim=16", "long.max_len=64", "long.hidden_dim=32",
        "long.chunk=8", "hstu.embed_dim=16", "hstu.attention_dim=16", "hstu.linear_dim=16", "hstu.max_seq_len=9",
        "hstu.dropout=0.0", "long.dropout=0.0", "fusion.long_dim=16", "loss.num_negatives=16",
        "long_train.steps=40", "short_train.steps=40", "long_train.batch_size=16", "short_train.batch_size=16",
        "long_train.learning_rate=0.01", "short_train.learning_rate=0.01", "ks=[5,10]"]


def _ratings(path, users=24, items=30, seed=0):
    """Users with a stable taste (a block of items) and 20-70 events, several sharing timestamps."""
    rng = np.random.default_rng(seed)
    lines = []
    for u in range(1, users + 1):
        n = int(rng.integers(20, 70))
        block = (u % 3) * 10
        t = 1_000_000 + u
        for _ in range(n):
            t += int(rng.choice([0, 60, 3600]))  # equal timestamps happen (0)
            item = block + int(rng.integers(1, 11)) if rng.random() < 0.8 else int(rng.integers(1, items + 1))
            lines.append(f"{u}::{item}::5::{t}")
    path.write_text("\n".join(lines) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("longshort")
    cfg = load_config(None, [f"data.input={_ratings(tmp / 'ratings.dat')}", f"run_dir={tmp / 'run'}", *TINY])
    return cfg, run(cfg, log=lambda *_: None)


def _encoder(encoder="pooled", num_items=30):
    return LongTermEncoder(LongTermConfig(encoder=encoder, embed_dim=16, max_len=64, hidden_dim=32, chunk=8,
                                          dropout=0.0), num_items, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("encoder", ["pooled", "chunk_hstu"])
def test_long_table_uses_only_events_strictly_before_as_of(encoder):
    rng = np.random.default_rng(1)
    enc = _encoder(encoder)
    items = [rng.integers(1, 31, n).astype(np.int32) for n in (12, 40, 5)]
    ts = [np.sort(rng.integers(0, 50, len(s))).astype(np.int64) for s in items]
    as_of = np.asarray([ts[0][6], ts[1][30], 10**6])  # the third: every event
    table = build_long_table(enc, ["a", "b", "c"], items, ts, as_of, batch_size=2)
    for u in range(3):
        hist = history_before(items[u], ts[u], int(as_of[u]), 64)
        assert np.all(hist[1] < as_of[u])
        alone = encode_long(enc, long_inputs([hist], as_of[u:u + 1], 64))[0]
        np.testing.assert_allclose(table.embeddings[u], alone, atol=1e-5)
    # events at or after as_of (including ones AT as_of) never change the row; an earlier event does
    changed = [s.copy() for s in items]
    at_or_after = ts[1] >= as_of[1]
    changed[1][at_or_after] = (changed[1][at_or_after] % 30) + 1
    again = build_long_table(enc, ["a", "b", "c"], changed, ts, as_of)
    np.testing.assert_allclose(again.embeddings, table.embeddings, atol=1e-6)
    changed[1][0] = changed[1][0] % 30 + 1
    assert not np.allclose(build_long_table(enc, ["a", "b", "c"], changed, ts, as_of).embeddings[1],
                           table.embeddings[1], atol=1e-6)


def test_skip_recent_leaves_the_most_recent_events_out_of_the_long_input():
    rng = np.random.default_rng(3)
    items = [np.arange(1, n + 1, dtype=np.int32) for n in (3, 20, 45)]  # id = position + 1
    ts = [np.arange(len(s), dtype=np.int64) * 10 for s in items]
    as_of = np.asarray([10**6, 155, 10**6])  # every event; the first 16 of user 1; every event
    for u, expect in enumerate(([], list(range(1, 12)), list(range(1, 41)))):
        assert history_before(items[u], ts[u], int(as_of[u]), 64, skip_recent=5)[0].tolist() == expect
    assert history_before(items[2], ts[2], 10**6, 8, skip_recent=5)[0].tolist() == list(range(33, 41))
    enc = LongTermEncoder(dataclasses.replace(_encoder().cfg, skip_recent=5), 45, rngs=nnx.Rngs(0))
    table = build_long_table(enc, ["a", "b", "c"], items, ts, as_of)
    for u in range(3):
        hist = history_before(items[u], ts[u], int(as_of[u]), 64, skip_recent=5)
        np.testing.assert_allclose(table.embeddings[u], encode_long(enc, long_inputs([hist], as_of[u:u + 1], 64))[0],
                                   atol=1e-5)
    b = short_train_batch(items, ts, np.asarray([3, 20, 45]), np.arange(3), rng, short_len=8, window=3, long_len=64,
                          long_skip_recent=5)
    for r in range(3):
        seen = b["long"]["items"][r][b["long"]["items"][r] > 0]
        before = int(np.searchsorted(ts[r], b["long"]["as_of"][r]))  # events strictly before the cutoff
        assert seen.tolist() == list(range(1, max(0, before - 5) + 1))
    with pytest.raises(ValueError, match="skip_recent"):
        LongTermConfig(skip_recent=-1).validate()


def test_short_training_batches_never_show_a_target_to_the_long_input():
    rng = np.random.default_rng(2)
    # item id = position + 1, so an id names the event; many equal timestamps
    items = [np.arange(1, n + 1, dtype=np.int32) for n in rng.integers(3, 60, 30)]
    ts = [np.sort(rng.integers(0, 30, len(s))).astype(np.int64) for s in items]
    train_end = np.asarray([len(s) for s in items])
    b = short_train_batch(items, ts, train_end, np.arange(30), rng, short_len=8, window=3, long_len=64)
    long = b["long"]
    for r in range(30):
        seen = long["items"][r][long["items"][r] > 0]
        targets = b["targets"][r][b["mask"][r]]
        targets = targets[targets > 0]
        assert len(targets) and np.all(targets <= train_end[r])
        assert np.all(ts[r][seen - 1] < long["as_of"][r])  # strictly before the cutoff
        assert np.all(ts[r][targets - 1] >= long["as_of"][r])  # every counted target is at or after it
        assert not set(seen.tolist()) & set(targets.tolist())


def _brute_force(users, table, future, exclude, ks):
    out = {f"{m}@{k}": [] for k in ks for m in ("recall", "hr")}
    for u in range(len(users)):
        scores = table @ users[u]
        scores[0] = -np.inf
        scores[[e for e in exclude[u] if e > 0]] = -np.inf
        order = np.argsort(-scores, kind="stable")
        fut = [f for f in future[u] if f > 0]
        if not fut:
            continue
        for k in ks:
            top = set(order[:k].tolist())
            out[f"recall@{k}"].append(len(top & set(fut)) / len(set(fut)))
            out[f"hr@{k}"].append(float(fut[0] in top))
    return {k: float(np.mean(v)) for k, v in out.items()}, len(out[f"hr@{ks[0]}"])


def test_future_window_metric_matches_brute_force_numpy():
    rng = np.random.default_rng(3)
    users = rng.normal(size=(40, 8)).astype(np.float32)
    table = rng.normal(size=(51, 8)).astype(np.float32)
    future = rng.integers(0, 51, (40, 6)).astype(np.int32)  # 0: padding; repeats inside a window happen
    future[5] = 0  # an empty window is not counted
    future[7, 3:] = 0  # a short window (right-padded)
    future[9, 0] = 0  # padding first: the next item is the first real entry
    exclude = rng.integers(0, 51, (40, 7)).astype(np.int32)
    ks = (1, 5, 20)
    got = jax.device_get(future_window_sums(jnp.asarray(users), jnp.asarray(table), jnp.asarray(future),
                                            jnp.asarray(exclude), ks))
    want, n = _brute_force(users, table, future, exclude, ks)
    assert int(got["count"]) == n == 39
    for key, value in want.items():
        assert float(got[key]) / n == pytest.approx(value, abs=1e-6), key


def test_long_and_short_models_train_and_lower_the_loss(tiny_run):
    cfg, results = tiny_run
    for name in ("long", "short", "both", "most_popular"):
        assert set(results[name]) >= {"recall@5", "recall@10", "hr@10", "count"}
        assert results[name]["count"] > 0
    assert "relative_gain_recall@50" in json.loads((Path(cfg.run_dir) / "results.json").read_text())
    # gated and prefix fusion both learn: the loss goes down over a few steps
    seqs = load_sequences(cfg.data)
    _, models, _, _ = load_run(cfg.run_dir)
    train_end = np.asarray([len(s) - cfg.data.window for s in seqs.items])
    for fusion in ("gated", "prefix"):
        model = LongShortHSTU(cfg.hstu, LongShortConfig(fusion, 16), seqs.num_items, rngs=nnx.Rngs(0))
        losses = train_short(model, models["long"], seqs, train_end, cfg, fusion, log=lambda *_: None)
        assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.05, (fusion, losses[:8], losses[-8:])


def test_stages_reuse_a_finished_run(tiny_run, tmp_path):
    cfg, results = tiny_run
    other = load_config(None, [f"data.input={cfg.data.input}", f"run_dir={tmp_path / 'prefix'}", *TINY,
                               "stages=[both]", "fusion.fusion=prefix", f"init_from={cfg.run_dir}"])
    again = run(other, log=lambda *_: None)
    assert again["long"] == results["long"] and again["short"] == results["short"]  # loaded, not retrained
    assert again["meta"]["fusion"] == "prefix" and again["both"]["count"] == results["both"]["count"]
    with pytest.raises(Exception, match="init_from"):
        load_config(None, ["stages=[both]"])


def test_bucket_benchmark_agrees_with_the_run_and_partitions_the_users(tiny_run, capsys):
    cfg, results = tiny_run
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "longshort_buckets.py"
    spec = importlib.util.spec_from_file_location("_bench_longshort_buckets", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--run", cfg.run_dir, "--input", cfg.data.input, "--window", str(cfg.data.window),
                "--edges", "30", "50", "--ks", "5", "10"])
    out = json.loads(capsys.readouterr().out)["buckets"]
    for name in ("long", "short", "both"):  # the same protocol as the run's own evaluation
        for m in ("recall@5", "recall@10", "hr@10"):
            assert out["all"][name][m] == pytest.approx(results[name][m], abs=1e-4)
    parts = [v for k, v in out.items() if k != "all"]
    assert len(parts) >= 2 and sum(v["users"] for v in parts) == out["all"]["users"] == results["both"]["count"]
    assert {"score_sum", "both_gain_recall@10", "score_sum_gain_recall@10"} <= set(out["all"])


def test_fusion_none_is_the_plain_hstu():
    cfg = HSTUConfig(embed_dim=16, attention_dim=16, linear_dim=16, max_seq_len=8, dropout=0.0)
    plain = HSTU(cfg, 30, rngs=nnx.Rngs(0))
    short = LongShortHSTU(cfg, LongShortConfig("none", 16), 30, rngs=nnx.Rngs(0))
    ids = jnp.asarray([[0, 0, 3, 4, 5, 9, 1, 2]], jnp.int32)
    ts = jnp.arange(8, dtype=jnp.int32)[None] * 100
    np.testing.assert_array_equal(np.asarray(short(ids, ts, None, deterministic=True)),
                                  np.asarray(plain(ids, ts, deterministic=True)))


def test_prefix_fusion_is_causal_and_uses_the_long_embedding():
    cfg = HSTUConfig(embed_dim=16, attention_dim=16, linear_dim=16, max_seq_len=9, dropout=0.0)
    m = LongShortHSTU(cfg, LongShortConfig("prefix", 16), 30, rngs=nnx.Rngs(0))
    ids = jnp.asarray([[0, 0, 3, 4, 5, 9, 1, 2]], jnp.int32)
    ts = jnp.arange(8, dtype=jnp.int32)[None] * 100
    long = jax.random.normal(jax.random.key(0), (1, 16))
    a = np.asarray(m(ids, ts, long, deterministic=True))
    b = np.asarray(m(ids.at[0, 7].set(11), ts, long, deterministic=True))
    np.testing.assert_allclose(a[0, :7], b[0, :7], atol=1e-6)  # a later item does not change earlier outputs
    assert not np.allclose(a, np.asarray(m(ids, ts, -long, deterministic=True)))


def test_retriever_serves_a_user_id_with_the_recent_events(tiny_run, capsys):
    cfg, _ = tiny_run
    r = Retriever.from_checkpoint(cfg.run_dir)
    assert r.long_table is not None and len(r.long_table.users) == 24
    hist, stamps = ["1", "2", "3"], [1_000_100, 1_000_200, 1_000_300]
    items, scores = r.recommend(hist, stamps, user="4", k=5)
    assert len(items) == 5 and not set(items) & set(hist) and np.all(np.diff(scores) <= 0)
    # the user's row of the stored table is what conditions the model
    _, models, item_map, table = load_run(cfg.run_dir)
    ids = jnp.asarray([[0] * 5 + [item_map.to_dense(i) for i in hist]], jnp.int32)
    u = models["both"](ids, jnp.asarray([[0] * 5 + stamps]), jnp.asarray(table.lookup(["4"])),
                       deterministic=True)[0, -1]
    s = np.array(models["both"].item_embeddings() @ u)
    s[[0] + [item_map.to_dense(i) for i in hist]] = -np.inf
    assert items == [item_map.to_original(j) for j in np.argsort(-s, kind="stable")[:5]]
    other, _ = r.recommend([hist, hist], [stamps, stamps], user=["4", "5"], k=5)
    assert other[0] == items
    with pytest.raises(ValueError, match="pass user="):
        r.recommend(hist, stamps, k=5)
    with pytest.raises(KeyError, match="not in the long-term table"):
        r.recommend(hist, stamps, user="nobody", k=5)
    assert len(r.recommend(hist, stamps, user="nobody", k=5, unknown="skip")[0]) == 5
    short = Retriever.from_longshort(cfg.run_dir, model="short")
    with pytest.raises(ValueError, match="long-term table"):
        short.recommend(hist, stamps, user="4", k=5)
    assert cli_main(["recommend", "--checkpoint", cfg.run_dir, "--user", "4", "--history", "1,2,3",
                     "--timestamps", "1000100,1000200,1000300", "--k", "5"]) == 0
    assert [row["item"] for row in json.loads(capsys.readouterr().out)["items"]] == items


def test_server_serves_a_user_id(tiny_run):
    """`recsys-jax serve` on a long+short run: a request's user id picks its long-term row (the Python API's
    answers); a missing or unknown user is a 400 naming the field, unless unknown ids are skipped."""
    import asyncio

    import aiohttp

    from recsys_jax.serving.server import BackgroundServer, RecommendService

    r = Retriever.from_checkpoint(tiny_run[0].run_dir)
    hist, stamps = ["1", "2", "3"], [1_000_100, 1_000_200, 1_000_300]
    bodies = [{"history": hist, "timestamps": stamps, "user": u, "k": 5} for u in ("4", "5", 6)]
    bodies += [{"history": hist, "timestamps": stamps, "k": 5}, {"history": hist, "user": "nobody"},
               {"history": hist, "timestamps": stamps, "user": "nobody", "unknown": "skip", "k": 5},
               {"history": hist, "user": 1.5}]

    async def post_all(url):
        async with aiohttp.ClientSession() as session:
            async def one(body):
                async with session.post(url + "/recommend", json=body) as resp:
                    return resp.status, await resp.json()
            return await asyncio.gather(*(one(b) for b in bodies))

    srv = BackgroundServer(RecommendService(r, max_batch=8, max_wait_ms=50))
    try:
        answers = asyncio.run(post_all(srv.url))
    finally:
        srv.stop()
    for body, (status, got) in zip(bodies[:3] + bodies[5:6], answers[:3] + answers[5:6]):
        assert status == 200, got
        want, _ = r.recommend(hist, stamps, user=body["user"], k=5, unknown=body.get("unknown", "error"))
        assert got["items"] == want
    assert answers[0][1]["items"] != answers[1][1]["items"] or answers[0][1]["scores"] != answers[1][1]["scores"]
    for status, got in (answers[3], answers[4], answers[6]):
        assert status == 400 and got["field"] == "user", got


def test_config_errors_name_the_key():
    with pytest.raises(Exception, match="hstu.max_seq_len"):
        load_config(None, ["fusion.fusion=prefix", "data.short_len=51", "hstu.max_seq_len=51"])
    with pytest.raises(Exception, match="encoder"):
        load_config(None, ["long.encoder=lstm"])
    assert dataclasses.asdict(load_config(None, []).fusion)["fusion"] == "gated"
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "recsys" / "longshort_ml1m.yaml")
    assert cfg.long.max_len == 4096 and cfg.hstu.max_seq_len > cfg.data.short_len


def _score_model(num_items=30, weight=0.7, long_dim=12):
    cfg = HSTUConfig(embed_dim=16, attention_dim=16, linear_dim=16, max_seq_len=8, dropout=0.0)
    m = LongShortHSTU(cfg, LongShortConfig("score", long_dim, score_weight=weight), num_items, rngs=nnx.Rngs(0))
    return cfg, m


def test_score_fusion_loss_is_the_short_plus_weighted_long_logits():
    """fusion=score: <u, item> = s . e + w * l . e_long, s / e the plain HSTU's (unit) output and item table, and
    the training loss is the full-softmax cross-entropy of those logits at the temperature (hand-computed)."""
    from recsys_jax.train.longshort import short_loss
    from recsys_jax.train.losses import SampledSoftmaxConfig

    cfg, m = _score_model()
    plain = HSTU(cfg, 30, rngs=nnx.Rngs(0))  # same init order: the score model's inner HSTU
    long_items = np.asarray(jax.random.normal(jax.random.key(1), (31, 12)))
    m.set_long_items(jnp.asarray(long_items))
    ids = jnp.asarray([[0, 0, 3, 4, 5, 9, 1, 2], [7, 8, 9, 10, 11, 12, 13, 14]], jnp.int32)
    ts = jnp.broadcast_to(jnp.arange(8, dtype=jnp.int32) * 100, ids.shape)
    long = np.asarray(jax.random.normal(jax.random.key(2), (2, 12)))
    s = np.asarray(plain(ids, ts, deterministic=True))  # [B, L, D], unit rows
    e = np.asarray(plain.item_embeddings())
    want = np.einsum("bld,nd->bln", s, e) + 0.7 * (long @ long_items.T)[:, None, :]
    got = np.einsum("bld,nd->bln", np.asarray(m(ids, ts, jnp.asarray(long), deterministic=True)),
                    np.asarray(m.item_embeddings()))
    np.testing.assert_allclose(got[0, 2:], want[0, 2:], atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], atol=1e-5)
    assert np.all(got[0, :2] == 0)  # padding positions score nothing
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 31, (2, 8, 3)).astype(np.int32)
    mask = np.ones((2, 8), bool)
    mask[0, :3] = False
    batch = {"item_ids": ids, "timestamps": ts, "targets": jnp.asarray(targets), "mask": jnp.asarray(mask)}
    loss_cfg = SampledSoftmaxConfig(temperature=0.05, full_softmax=True, l2_normalize=True)
    loss, _ = short_loss(m, batch, jnp.asarray(long), jax.random.key(0), loss_cfg, deterministic=True)
    logits = want[:, :, 1:] / 0.05  # items 1..N
    logp = logits - np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    terms = [-logp[b, p, t - 1] for b in range(2) for p in range(8) for t in targets[b, p] if mask[b, p] and t > 0]
    assert float(loss) == pytest.approx(float(np.mean(terms)), rel=1e-4)


def test_score_fusion_learns_w_and_keeps_the_long_item_table(tiny_run):
    cfg, _ = tiny_run
    seqs = load_sequences(cfg.data)
    _, models, _, _ = load_run(cfg.run_dir)
    train_end = np.asarray([len(s) - cfg.data.window for s in seqs.items])
    model = LongShortHSTU(cfg.hstu, LongShortConfig("score", 16), seqs.num_items, rngs=nnx.Rngs(0))
    losses = train_short(model, models["long"], seqs, train_end, cfg, "score", log=lambda *_: None)
    assert np.mean(losses[-8:]) < np.mean(losses[:8]) - 0.05, (losses[:8], losses[-8:])
    assert float(model.long_weight[0]) != pytest.approx(1.0, abs=1e-3)  # w is learned
    long_items = np.asarray(models["long"].item_embeddings())
    np.testing.assert_array_equal(np.asarray(model.item_embeddings())[:, 16:], long_items)  # frozen copy
    with pytest.raises(ValueError, match="score"):
        models["both"].set_long_items(long_items)  # the tiny run's both is gated


@pytest.fixture(scope="module")
def score_run(tiny_run, tmp_path_factory):
    cfg, results = tiny_run
    other = load_config(None, [f"data.input={cfg.data.input}", f"run_dir={tmp_path_factory.mktemp('score')}",
                               *TINY, "stages=[both]", "fusion.fusion=score", f"init_from={cfg.run_dir}"])
    return other, run(other, log=lambda *_: None)


def test_score_fusion_run_serves_the_eval_paths_scores(score_run, capsys):
    """A fusion=score run: the stored model keeps the long encoder's item table; `Retriever(user=...)` and
    `recommend --user` give the eval path's top items and scores (its user vector . its item table)."""
    from recsys_jax.train.longshort import eval_inputs, short_user_vectors

    cfg, results = score_run
    assert results["meta"]["fusion"] == "score" and "score_weight" in results["meta"]
    _, models, item_map, table = load_run(cfg.run_dir)
    both = models["both"]
    assert both.fusion == "score" and float(both.long_weight[0]) == pytest.approx(results["meta"]["score_weight"])
    np.testing.assert_array_equal(np.asarray(both.item_embeddings())[:, 16:], np.asarray(models["long"].item_embeddings()))
    seqs = load_sequences(cfg.data)
    users, query, _, _ = eval_inputs(seqs, cfg.data.window)
    r = Retriever.from_checkpoint(cfg.run_dir)
    for u in users[:3]:
        ids = seqs.items[u][:query[u]][-cfg.data.short_len:]
        stamps = seqs.timestamps[u][:query[u]][-cfg.data.short_len:]
        user_id = seqs.user_map.to_original(u)
        vec = short_user_vectors(both, seqs, np.asarray([u]), query, cfg.data.short_len,
                                 table.lookup([user_id]))[0]
        s = np.asarray(both.item_embeddings()) @ vec
        s[[0, *ids]] = -np.inf
        want = np.argsort(-s, kind="stable")[:5]
        hist = [item_map.to_original(int(i)) for i in ids]
        items, scores = r.recommend(hist, [int(t) for t in stamps], user=user_id, k=5)
        assert items == [item_map.to_original(int(j)) for j in want]
        np.testing.assert_allclose(scores, s[want], atol=1e-4)
    assert cli_main(["recommend", "--checkpoint", cfg.run_dir, "--user", user_id, "--history", ",".join(hist),
                     "--timestamps", ",".join(str(int(t)) for t in stamps), "--k", "5"]) == 0
    assert [row["item"] for row in json.loads(capsys.readouterr().out)["items"]] == items


def test_score_fusion_from_the_short_model_untrained_is_the_score_sum(tiny_run, tmp_path, capsys):
    """both_from_short with 0 fine-tuning steps and w = 1: both's HSTU is the short model's, so both ranks as the
    bucket benchmark's score_sum diagnostic (short scores + long scores)."""
    cfg, results = tiny_run
    other = load_config(None, [f"data.input={cfg.data.input}", f"run_dir={tmp_path / 'warm'}", *TINY, "stages=[both]",
                               "fusion.fusion=score", "both_from_short=true", "both_steps=0",
                               f"init_from={cfg.run_dir}"])
    got = run(other, log=lambda *_: None)
    _, models, _, _ = load_run(other.run_dir)
    short, both = nnx.state(models["short"].hstu, nnx.Param), nnx.state(models["both"].hstu, nnx.Param)
    for a, b in zip(jax.tree.leaves(short), jax.tree.leaves(both)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "longshort_buckets.py"
    spec = importlib.util.spec_from_file_location("_bench_longshort_buckets2", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--run", other.run_dir, "--input", cfg.data.input, "--window", str(cfg.data.window), "--edges", "30", "--ks", "5", "10",
                "--weights", "1", "0"])
    out = json.loads(capsys.readouterr().out)["buckets"]["all"]
    for m in ("recall@5", "recall@10", "hr@10"):
        assert got["both"][m] == pytest.approx(out["score_sum"][m], abs=1e-4)
        assert out["score_sum_w0"][m] == pytest.approx(results["short"][m], abs=1e-4)  # w = 0: the short model
    assert got["both"] != results["short"]


def test_residual_long_encoder_trains_through_the_frozen_short_scores(tiny_run, tmp_path):
    """long_residual: the long step's loss is the full-softmax loss of short + w x long scores, the short model's
    unit vector at the cutoff (its last ``short_len`` events before it) and item table held constant; at w = 0 it is
    the short model's own loss (numpy); a run trains only the long encoder and leaves the short model as loaded."""
    import optax
    from recsys_jax.data.long_history import long_train_batch
    from recsys_jax.eval.evaluate import last_real
    from recsys_jax.train.longshort import _long_residual_step
    from recsys_jax.train.losses import SampledSoftmaxConfig

    cfg, _ = tiny_run
    seqs = load_sequences(cfg.data)
    _, models, _, _ = load_run(cfg.run_dir)
    short, long = models["short"], models["long"]
    train_end = np.asarray([len(s) - cfg.data.window for s in seqs.items])
    b = long_train_batch(seqs.items, seqs.timestamps, train_end, np.arange(6), np.random.default_rng(0),
                         max_len=cfg.long.max_len, window=cfg.data.window, short_len=cfg.data.short_len)
    assert b["short_ids"].shape == (6, cfg.data.short_len)
    rng = np.random.default_rng(0)  # the same draws: one cutoff per user
    for u in range(6):  # the short input: the last short_len events before the cutoff, the first target's
        c = int(rng.integers(1, train_end[u]))
        want_ids = seqs.items[u][max(0, c - cfg.data.short_len):c]
        np.testing.assert_array_equal(b["short_ids"][u][-len(want_ids):], want_ids)
        assert b["targets"][u, 0] == seqs.items[u][c] and not b["short_ids"][u][:-len(want_ids)].any()
    b = {k: jnp.asarray(v) for k, v in b.items()}
    s = np.array(last_real(short(b["short_ids"], b["short_ts"], None, deterministic=True), b["short_ids"] > 0))
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    e = np.asarray(short.item_embeddings())
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-6)
    lv = np.asarray(long(b["items"], b["timestamps"], b["as_of"], deterministic=True))  # unit rows (dropout 0)
    t = np.asarray(b["targets"])

    def want(w):  # full-softmax cross-entropy of (s . e + w l . e_long) / T over items 1..N, per target
        logits = ((s @ e.T) + w * (lv @ np.asarray(long.item_embeddings()).T))[:, 1:] / 0.05
        logp = logits - logits.max(1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(1, keepdims=True))
        return np.mean([-logp[i, j - 1] for i in range(6) for j in t[i] if j > 0])
    opt = nnx.Optimizer(long, optax.sgd(0.0), wrt=nnx.Param)  # lr 0: the step leaves the encoder as it is
    loss_cfg = SampledSoftmaxConfig(temperature=0.05, full_softmax=True)
    for w in (0.0, 1.0):  # w = 0: the short model's own loss
        got = _long_residual_step(long, opt, b, short, jax.random.key(0), loss_cfg, w)
        assert float(got) == pytest.approx(float(want(w)), rel=1e-4)
    assert abs(want(1.0) - want(0.0)) > 1e-3

    other = load_config(None, [f"data.input={cfg.data.input}", f"run_dir={tmp_path / 'res'}", *TINY,
                               "stages=[long,both]", f"init_from={cfg.run_dir}", "fusion.fusion=score",
                               "long_residual=true", "both_from_short=true", "both_steps=0"])
    got = run(other, log=lambda *_: None)
    assert got["meta"]["long_residual"] and got["meta"]["final_loss"]["long"] > 0
    _, res, _, _ = load_run(other.run_dir)
    for a, c in zip(jax.tree.leaves(nnx.state(short, nnx.Param)), jax.tree.leaves(nnx.state(res["short"], nnx.Param))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(c))
    assert not np.allclose(np.asarray(res["long"].item_embeddings()), np.asarray(long.item_embeddings()))
    np.testing.assert_array_equal(np.asarray(res["both"].item_embeddings())[:, 16:], np.asarray(res["long"].item_embeddings()))
    with pytest.raises(Exception, match="long_residual"):
        load_config(None, [f"data.input={cfg.data.input}", *TINY, "long_residual=true"])
