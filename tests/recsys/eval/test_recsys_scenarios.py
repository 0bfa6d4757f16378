"""Per-scenario evaluation: examples of both protocols on hand-made logs, metrics against brute-force numpy,
no future event in any input, and `recsys-jax eval` on a unified run."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from recsys_jax.data.attribution import parse_window
from recsys_jax.data.event_examples import DEFAULT_LABELS, compile_labels, event_train_example
from recsys_jax.eval.scenarios import (
    evaluate_run,
    evaluate_scenarios,
    parse_scenario,
    pool_top_k,
    scenario_examples,
    scenario_user_embeddings,
    topk_metrics,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
ACTIONS = ["impression", "click", "save", "ad_click", "conversion", "purchase"]
SURFACES = ["home", "search", "related"]
IMP, CLICK, SAVE, AD_CLICK, CONV, PURCHASE = range(6)
HOME, SEARCH, RELATED = range(3)
ENG, AD, CONVERSION = range(3)  # label codes of DEFAULT_LABELS
ITEM_IS_AD = [0, 0, 0, 0, 0, 1, 1]  # items 1-4 organic, 5-6 ads


def _events(is_ad=ITEM_IS_AD):
    return {"actions": ACTIONS, "surfaces": SURFACES, "item_is_ad": list(is_ad), "fields": ["conversions"]}


def _record(user, items, actions, surfaces, ts, conversions=None):
    n = len(items)
    return {"user": user, "items": np.asarray(items, np.int32), "timestamps": np.asarray(ts, np.int64),
            "actions": np.asarray(actions, np.int16), "surfaces": np.asarray(surfaces, np.int16),
            "is_ad": np.asarray([ITEM_IS_AD[i] for i in items], bool),
            "conversions": np.asarray(conversions if conversions is not None else [0] * n, np.float32)}


RECORDS = [
    _record(0, [1, 2, 5, 3, 6, 4, 5], [CLICK, CLICK, AD_CLICK, SAVE, AD_CLICK, CLICK, AD_CLICK],
            [HOME, SEARCH, HOME, HOME, RELATED, HOME, HOME], [10, 20, 30, 40, 50, 60, 70], [0, 0, 1, 0, 0, 0, 1]),
    _record(1, [1, 2], [CLICK, CLICK], [HOME, HOME], [50, 60]),
    _record(2, [3, 6, 6], [CLICK, AD_CLICK, AD_CLICK], [SEARCH] * 3, [5, 15, 100]),
    _record(3, [1, 2, 3, 4], [CLICK] * 4, [HOME] * 4, [40, 50, 55, 64]),
]


def _by_user(ex):
    """scenario -> {user: sorted relevant items}"""
    return {key: {int(ex.users[r]): sorted(rel.tolist()) for r, rel in zip(rows, rels)}
            for key, (rows, rels) in ex.targets.items()}


def test_leave_one_out_examples_of_a_hand_made_log():
    tables = compile_labels(DEFAULT_LABELS, _events())
    kw = dict(num_surfaces=3, num_items=6, max_len=4)
    ex = scenario_examples(RECORDS, tables, **kw)
    # user 0's last event: an ad click on home that converted; user 2's an ad click on search; user 3's a click
    assert _by_user(ex) == {(ENG, HOME): {3: [4]}, (AD, HOME): {0: [5]}, (AD, SEARCH): {2: [6]},
                            (CONVERSION, HOME): {0: [5]}}
    assert ex.users.tolist() == [0, 2, 3]  # user 1 (2 events) has no test example
    row = 0
    np.testing.assert_array_equal(ex.inputs["item_ids"][row], [5, 3, 6, 4])  # the last max_len=4 of the history
    np.testing.assert_array_equal(ex.inputs["actions"][row], [AD_CLICK, SAVE, AD_CLICK, CLICK])
    np.testing.assert_array_equal(ex.inputs["surfaces"][row], [HOME, HOME, RELATED, HOME])
    np.testing.assert_array_equal(ex.inputs["is_ad"][row], [True, False, True, False])
    np.testing.assert_array_equal(ex.inputs["item_ids"][1], [0, 0, 3, 6])  # left padding
    np.testing.assert_array_equal(ex.history[row], [1, 2, 5, 3, 6, 4])  # the WHOLE history, for exclusion
    # popularity: training targets (events 1..n-3) per label and surface
    c = ex.train_counts
    assert c[ENG, SEARCH, 2] == 1 and c[ENG, HOME, 3] == 1 and c[AD, HOME, 5] == 1 and c[CONVERSION, HOME, 5] == 1
    # user 0: events 1-4 (5 label-events), users 1 and 3: their event 1; user 2's prefix is one event
    assert c[AD, RELATED, 6] == 1 and c[ENG, HOME, 2] == 2 and c.sum() == 7
    val = scenario_examples(RECORDS, tables, split="validation", **kw)
    assert _by_user(val) == {(ENG, HOME): {0: [4], 3: [3]}, (AD, SEARCH): {2: [6]}}


def test_time_split_examples_of_a_hand_made_log():
    tables = compile_labels(DEFAULT_LABELS, _events())
    ex = scenario_examples(RECORDS, tables, num_surfaces=3, num_items=6, max_len=8, protocol="time", cutoff=45,
                           window=20)
    # history before T=45, targets in [45, 65): several relevant items for user 3
    assert _by_user(ex) == {(ENG, HOME): {0: [4], 3: [2, 3, 4]}, (AD, RELATED): {0: [6]}}
    assert ex.users.tolist() == [0, 3]  # user 1 has no history before T, user 2 no event in the window
    np.testing.assert_array_equal(ex.history[0], [1, 2, 5, 3])
    np.testing.assert_array_equal(ex.history[1], [1, 0, 0, 0])
    assert ex.inputs["timestamps"][ex.inputs["item_ids"] > 0].max() < 45
    # training targets: events 1.. before T only
    assert ex.train_counts.sum() == 5 and ex.train_counts[CONVERSION, HOME, 5] == 1
    with pytest.raises(ValueError, match="one test window"):
        scenario_examples(RECORDS, tables, num_surfaces=3, num_items=6, max_len=8, protocol="time", cutoff=45,
                          window=20, split="validation")


AD_ITEMS = np.asarray([0] + [0, 0, 0, 0, 0, 1] * 2, bool)  # 12 items, every 6th an ad


def _random_records(rng, n_users=30):
    recs = []
    for u in range(n_users):
        n = int(rng.integers(1, 16))
        items = rng.integers(1, len(AD_ITEMS), n)
        acts = np.where(AD_ITEMS[items], AD_CLICK, rng.choice([CLICK, SAVE, PURCHASE], n))
        recs.append({"user": u, "items": items.astype(np.int32),
                     "timestamps": np.sort(rng.integers(0, 1000, n)).astype(np.int64),
                     "actions": acts.astype(np.int16), "surfaces": rng.integers(0, 3, n).astype(np.int16),
                     "is_ad": AD_ITEMS[items], "conversions": (rng.random(n) < 0.5).astype(np.float32)})
    return recs


def _future_changed(rng, rec, start, append_at=None):
    """``rec`` with its events from ``start`` on changed (and one more event at time ``append_at``)."""
    out = {k: (np.asarray(v).copy() if k != "user" else v) for k, v in rec.items()}
    out["items"][start:] = rng.integers(1, len(AD_ITEMS), len(out["items"]) - start)
    out["actions"][start:] = (out["actions"][start:] + 1) % 6
    out["surfaces"][start:] = (out["surfaces"][start:] + 1) % 3
    out["is_ad"][start:] = ~out["is_ad"][start:]
    out["conversions"][start:] = rng.random(len(out["items"]) - start)  # a label, never an input
    if append_at is not None:
        for k in out:
            if k != "user":
                out[k] = np.concatenate([out[k], [append_at] if k == "timestamps" else out[k][-1:]])
    return out


def _same_inputs(a, b):
    common = np.intersect1d(a.users, b.users)
    assert len(common) >= 5
    for k in a.inputs:
        np.testing.assert_array_equal(a.inputs[k][np.searchsorted(a.users, common)],
                                      b.inputs[k][np.searchsorted(b.users, common)])
    for ra, rb in zip(a.history[np.searchsorted(a.users, common)], b.history[np.searchsorted(b.users, common)]):
        np.testing.assert_array_equal(np.trim_zeros(ra, "b"), np.trim_zeros(rb, "b"))


def test_no_future_event_in_any_input():
    """Changing (or adding) events at or after the target / T changes no model input, history or training input."""
    rng = np.random.default_rng(0)
    tables = compile_labels(DEFAULT_LABELS, _events(is_ad=AD_ITEMS.astype(int).tolist()))
    recs = _random_records(rng)
    cutoff, window = 600, 200
    kw = dict(num_surfaces=3, num_items=len(AD_ITEMS) - 1, max_len=6)
    # leave-one-out: the target is the last event; changing it leaves every input alone
    base = scenario_examples(recs, tables, **kw)
    other = scenario_examples([_future_changed(rng, r, len(r["items"]) - 1) for r in recs], tables, **kw)
    _same_inputs(base, other)
    np.testing.assert_array_equal(base.train_counts, other.train_counts)
    # time: every input event is before T; changing the events after T (and adding one) changes nothing
    base = scenario_examples(recs, tables, protocol="time", cutoff=cutoff, window=window, **kw)
    assert base.inputs["timestamps"][base.inputs["item_ids"] > 0].max() < cutoff
    later = [_future_changed(rng, r, int(np.searchsorted(r["timestamps"], cutoff)),
                             max(int(r["timestamps"][-1]), cutoff) + 5) for r in recs]
    other = scenario_examples(later, tables, protocol="time", cutoff=cutoff, window=window, **kw)
    _same_inputs(base, other)
    np.testing.assert_array_equal(base.train_counts, other.train_counts)
    # the training examples of a time split hold no event at or after T either
    for r, r_later in zip(recs, later):
        ex = event_train_example(r, max_len=6, labels=tables, cutoff=cutoff)
        assert np.all(ex["timestamps"][ex["mask"]] < cutoff)
        again = event_train_example(r_later, max_len=6, labels=tables, cutoff=cutoff)
        for k in ("item_ids", "timestamps", "actions", "surfaces", "is_ad", "target_ids", "mask"):
            np.testing.assert_array_equal(ex[k], again[k])


def _brute_force(user, table, allowed, exclude, relevant, ks):
    out = {f"{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg", "hr")}
    for b in range(len(user)):
        scores = table.astype(np.float64) @ user[b].astype(np.float64)
        eligible = [i for i in range(len(table)) if allowed[i] and (exclude is None or i not in exclude[b])]
        ranked = sorted(eligible, key=lambda i: (-scores[i], i))
        rel = set(relevant[b].tolist())
        for k in ks:
            hits = [j for j, i in enumerate(ranked[:k]) if i in rel]
            out[f"recall@{k}"] += len(hits) / len(rel)
            out[f"hr@{k}"] += float(bool(hits))
            ideal = sum(1 / np.log2(j + 2) for j in range(min(k, len(rel))))
            out[f"ndcg@{k}"] += sum(1 / np.log2(j + 2) for j in hits) / ideal
    return out


@pytest.mark.parametrize("excluded", [True, False])
def test_metrics_match_brute_force_numpy(excluded):
    rng = np.random.default_rng(1)
    b, d, n = 9, 5, 40
    user = rng.normal(size=(b, d)).astype(np.float32)
    table = rng.normal(size=(n + 1, d)).astype(np.float32)
    allowed = rng.random(n + 1) < 0.6
    allowed[0] = False
    pool = np.flatnonzero(allowed)
    relevant = [rng.choice(pool, size=int(rng.integers(1, 5)), replace=False) for _ in range(b)]
    exclude = rng.integers(0, n + 1, (b, 6)).astype(np.int32)
    exclude[0, 0] = relevant[0][0]  # a relevant item in the history: a miss when excluded
    exclude[1, :] = 0  # no history
    ks = (1, 3, 10, 100)  # 100 > the pool: every eligible item ranked
    k = min(max(ks), n)
    top = np.asarray(pool_top_k(jnp.asarray(user), jnp.asarray(table), jnp.asarray(allowed),
                                jnp.asarray(exclude) if excluded else None, k))
    assert set(top[top >= 0].tolist()) <= set(pool.tolist())
    got = topk_metrics(top, relevant, ks)
    want = _brute_force(user, table, allowed, exclude if excluded else None, relevant, ks)
    assert got["count"] == b
    for key, v in want.items():
        assert got[key] == pytest.approx(v, abs=1e-9), key
    assert want["recall@100"] < b if excluded else want["recall@100"] == pytest.approx(b)


def test_parse_scenario_names_what_exists():
    assert parse_scenario("conversion:home", ["engagement", "conversion"], SURFACES) == (1, 0)
    assert parse_scenario(("engagement", "related"), ["engagement", "conversion"], SURFACES) == (0, 2)
    with pytest.raises(ValueError, match="label 'buy'.*engagement"):
        parse_scenario("buy:home", ["engagement"], SURFACES)
    with pytest.raises(ValueError, match="surface 'feed'"):
        parse_scenario(("engagement", "feed"), ["engagement"], SURFACES)
    with pytest.raises(ValueError, match="label:surface"):
        parse_scenario("engagement", ["engagement"], SURFACES)


def test_evaluate_scenarios_of_a_trained_model_match_numpy(unified_run):
    """The glue (trunk, scenario tower, pools, exclusion) against numpy on the tiny run's model."""
    from recsys_jax.train.restore import restore_run

    cfg = unified_run[0]
    run = restore_run(cfg.train.run_dir, which="latest")
    model, task = run.model(), run.task
    ds = task.dataset
    ex = scenario_examples(ds.source, task.labels, num_surfaces=3, num_items=task.num_items, max_len=12,
                           protocol="time", cutoff=task.cutoff, window=7 * 86400)
    ks = (5, 20)
    res = evaluate_scenarios(model, ex, task.labels, ds.events["surfaces"], ks=ks, exclude_history=True,
                             batch_size=16)
    assert set(res) == {"scenarios", "popularity"} and res["scenarios"]
    table = np.asarray(model.item_embeddings())
    for (l, s), (rows, relevant) in list(ex.targets.items())[:3]:
        name = f"{task.labels.names[l]}:{ds.events['surfaces'][s]}"
        batch = {k: jnp.asarray(v[rows]) for k, v in ex.inputs.items()}
        user = np.asarray(scenario_user_embeddings(model, batch, jnp.int32(l), jnp.int32(s)))
        want = _brute_force(user, table, task.labels.pool[l], ex.history[rows], relevant, ks)
        for key, v in want.items():
            assert res["scenarios"][name][key] == pytest.approx(v / len(rows), abs=1e-5), (name, key)
        pop = ex.train_counts[l, s].astype(np.float64)[:, None]
        want = _brute_force(np.ones((len(rows), 1)), pop, task.labels.pool[l], ex.history[rows], relevant, ks)
        for key, v in want.items():
            assert res["popularity"][name][key] == pytest.approx(v / len(rows), abs=1e-6), (name, key)


def test_cli_eval_prints_scenarios_of_a_unified_run(unified_run, recsys_cli):
    cfg = unified_run[0]
    rc, out, err = recsys_cli(["eval", "--checkpoint", cfg.train.run_dir, "--which", "latest"])
    assert rc == 0, err[-2000:]
    res = json.loads(out)
    assert res["protocol"] == "time" and res["exclude_history"] is False and res["step"] == 3
    assert res["pools"] == {"engagement": "all", "ad_click": "ads", "conversion": "ads"}
    assert res["scenarios"] and set(res["popularity"]) == set(res["scenarios"])
    for name, m in res["scenarios"].items():
        label, surface = name.split(":")
        assert label in res["pools"] and surface in ("home", "search", "related")
        assert m["count"] > 0 and 0 <= m["recall@10"] <= m["recall@100"] <= 1 and 0 <= m["ndcg@10"] <= 1
        assert set(m) == {f"{x}@{k}" for x in ("recall", "ndcg", "hr") for k in (10, 50, 100)} | {"count"}


def _unified_targets_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("unified_targets", os.path.join(ROOT, "benchmarks",
                                                                                  "unified_targets.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_same_users_evaluates_a_run_on_another_runs_scenario_users(unified_run, capsys):
    """benchmarks/unified_targets.py same_users (here a run against itself): only the scenario's test users are
    kept, so that scenario's count is the same and its metrics equal the full evaluation's."""
    bench = _unified_targets_module()
    from recsys_jax.train.restore import restore_run

    run_dir = unified_run[0].train.run_dir
    run = restore_run(run_dir, which="latest", eval_split="test")
    full = evaluate_run(run.task, run.model())
    name = min(full["scenarios"], key=lambda n: full["scenarios"][n]["count"])  # a scenario of few users
    assert bench.main(["same_users", "--run", run_dir, "--users-of", run_dir, "--scenario", name]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < res["users"] < full["users"]
    assert res["scenarios"][name]["count"] == full["scenarios"][name]["count"] == res["users"]
    for k, v in full["scenarios"][name].items():
        assert res["scenarios"][name][k] == pytest.approx(v, abs=1e-6), k
    with pytest.raises(SystemExit, match="no test example"):
        bench.main(["same_users", "--run", run_dir, "--users-of", run_dir, "--scenario", "engagement:nowhere"])


def test_repeat_baseline_matches_the_evaluation_and_a_brute_force(unified_run, unified_tiny, tmp_path, capsys):
    """benchmarks/unified_targets.py repeat: its popularity column is recsys-jax eval's; its repeat column ranks the
    user's own history items by count, then the rest by popularity."""
    bench = _unified_targets_module()
    cfg = unified_run[0]
    overrides = unified_tiny.overrides + [f"data.cache_dir={cfg.data.cache_dir}"]
    args = ["repeat", "--config", unified_tiny.config, "--out", str(tmp_path)]
    assert bench.main(args + [x for o in overrides for x in ("--override", o)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["scenarios"]
    from recsys_jax.train.restore import restore_run

    run = restore_run(cfg.train.run_dir, which="latest", eval_split="test")
    full = evaluate_run(run.task, run.model())
    assert set(res) == set(full["popularity"])
    for name, m in full["popularity"].items():
        assert res[name]["count"] == m["count"]
        for k in (10, 50, 100):
            assert res[name][f"popularity@{k}"] == pytest.approx(m[f"recall@{k}"], abs=1e-6), (name, k)
    # brute force on one scenario: own-history counts first (ties and the rest by popularity), recall@10
    task, ds, sp = run.task, run.task.dataset, cfg.unified.split
    ex = scenario_examples(ds.source, task.labels, num_surfaces=3, num_items=task.num_items, max_len=cfg.data.max_len,
                           protocol="time", cutoff=task.cutoff, window=parse_window(sp.window))
    (lab, surf), (rows, relevant) = next(iter(ex.targets.items()))
    pool, pop = task.labels.pool[lab], ex.train_counts[lab, surf]
    recalls = []
    for r, rel in zip(rows, relevant):
        own = {i: int((ex.history[r] == i).sum()) for i in range(1, task.num_items + 1) if pool[i]}
        ranked = sorted(own, key=lambda i: (-own[i], -pop[i], i))[:10]
        recalls.append(np.isin(rel, ranked).mean())
    name = f"{task.labels.names[lab]}:{ds.events['surfaces'][surf]}"
    assert res[name]["repeat@10"] == pytest.approx(np.mean(recalls), abs=1e-6)


def test_targets_verdicts_from_compare_rows(tmp_path, capsys):
    bench = _unified_targets_module()

    def row(variant, conversion, engagement):
        return {"mode": "compare", "variant": variant, "scenarios": {
            "conversion:home": {"recall@100": conversion}, "engagement:home": {"recall@100": engagement}}}

    path = tmp_path / "compare.jsonl"
    rows = [row("unified", 0.5, 0.54), row("ads_only", 0.4, 0.1), row("per_label:ad_click", 0.45, 0.1),
            row("per_label:engagement", 0.2, 0.56)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert bench.main(["targets", str(path)]) == 0
    res = json.loads(capsys.readouterr().out)
    conv = res["scenarios"]["conversion:home"]
    assert conv["ratio_over_ads_only"] == 1.25 and conv["best_per_label"] == "per_label:ad_click" and conv["met"]
    assert res["scenarios"]["engagement:home"]["relative"] == pytest.approx(0.54 / 0.56 - 1, abs=1e-4)
    assert res["all_met"]
    path.write_text("".join(json.dumps(r) + "\n" for r in [row("unified", 0.45, 0.5), *rows[1:]]))
    assert bench.main(["targets", str(path)]) == 0
    res = json.loads(capsys.readouterr().out)
    assert not res["scenarios"]["conversion:home"]["met"] and not res["scenarios"]["engagement:home"]["met"]
    path.write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(SystemExit, match="lack"):
        bench.main(["targets", str(path)])


def test_ads_data_variant_keeps_only_the_ad_labels_events(unified_tiny, tmp_path):
    """compare's ads_data baseline: the organic labels' weights 0 and their actions dropped from the built data."""
    from recsys_jax.data.loader import load_dataset
    from recsys_jax.train.config import load_config
    from recsys_jax.train.dataset_cache import resolve_dataset

    bench = _unified_targets_module()
    base = load_config(unified_tiny.config, unified_tiny.overrides)
    ((name, extra),) = bench._variants(base, ["ads_data"])
    assert name == "ads_data" and "unified.label_weights.engagement=0" in extra
    cfg = load_config(unified_tiny.config, unified_tiny.overrides + extra + [f"data.cache_dir={tmp_path}"])
    assert set(cfg.data.build.drop_actions) == {"impression", "click", "save", "purchase"}
    ds = load_dataset(resolve_dataset(cfg.data, verbose=False))
    seen = set()
    for i in range(len(ds.source)):
        seen |= {ds.events["actions"][a] for a in ds.source[i]["actions"]}
    assert "ad_click" in seen and not seen & {"impression", "click", "save", "purchase"}  # conversions are ad data
