"""The repeat prior: model score + w * log1p(history count), in the per-scenario evaluation, its weight chosen on the
validation window, `recsys-jax eval --repeat`, and served by Retriever.recommend / `recsys-jax recommend`."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from recsys_jax.eval.repeat_prior import REPEAT_GRID, choose_repeat_weights, validation_examples
from recsys_jax.eval.scenarios import evaluate_run, pool_top_k


def _fused_top(user, table, allowed, history, w, k):
    """Brute force: ids by (-(<u, i> + w log1p(count)), id) over the allowed items."""
    out = []
    for u, h in zip(user, history):
        counts = np.bincount(h[h > 0], minlength=len(table))
        s = table.astype(np.float64) @ u.astype(np.float64) + w * np.log1p(counts)
        ids = sorted(np.flatnonzero(allowed), key=lambda i: (-s[i], i))
        out.append(ids[:k])
    return np.asarray(out)


@pytest.mark.parametrize("w", [0.0, 0.3, 100.0])
def test_pool_top_k_with_the_repeat_prior_matches_brute_force(w):
    rng = np.random.default_rng(0)
    b, d, n, k = 7, 4, 30, 12
    user = rng.normal(size=(b, d)).astype(np.float32)
    table = rng.normal(size=(n + 1, d)).astype(np.float32)
    allowed = rng.random(n + 1) < 0.7
    allowed[0] = False
    history = rng.integers(0, n + 1, (b, 9)).astype(np.int32)
    history[0, :5] = history[0, 0]  # one item five times
    history[1] = 0  # no history
    top = np.asarray(pool_top_k(jnp.asarray(user), jnp.asarray(table), jnp.asarray(allowed), None, k,
                                jnp.asarray(history), jnp.float32(w)))
    np.testing.assert_array_equal(top, _fused_top(user, table, allowed, history, w, k))
    grid = np.asarray(pool_top_k(jnp.asarray(user), jnp.asarray(table), jnp.asarray(allowed), None, k,
                                 jnp.asarray(history), jnp.asarray([0.1, w], jnp.float32)))  # one ranking per weight
    np.testing.assert_array_equal(grid[1], top)
    np.testing.assert_array_equal(grid[0], _fused_top(user, table, allowed, history, 0.1, k))
    plain = np.asarray(pool_top_k(jnp.asarray(user), jnp.asarray(table), jnp.asarray(allowed), None, k))
    if w == 0:
        np.testing.assert_array_equal(top, plain)
    else:  # the repeated item moves up; a user without history keeps the model's ranking
        np.testing.assert_array_equal(top[1], plain[1])
        if allowed[history[0, 0]]:
            assert list(top[0]).index(history[0, 0]) <= (list(plain[0]) + [k]).index(history[0, 0])
    if w == 100.0:  # the allowed history items first, the most frequent first
        own = [i for i in np.unique(history[0][history[0] > 0]) if allowed[i]]
        assert set(top[0][:len(own)].tolist()) == set(own) and top[0][0] == history[0, 0]


def test_weights_are_chosen_on_the_validation_window_and_applied_to_the_test_window(unified_run):
    from recsys_jax.train.restore import restore_run

    run = restore_run(unified_run[0].train.run_dir, which="latest", eval_split="test")
    task, model = run.task, run.model()
    val = validation_examples(task)
    window = val.window
    assert val.cutoff == task.cutoff - window  # [T - window, T): before the test window, never in it
    chosen = choose_repeat_weights(task, model)
    assert chosen and set(chosen) <= {f"{lab}:{s}" for lab in task.labels.names
                                      for s in task.dataset.events["surfaces"]}
    for name, c in chosen.items():
        assert c["weight"] in REPEAT_GRID and c["count"] > 0
        scores = {float(w): v for w, v in c["validation"].items()}
        assert scores[c["weight"]] == max(scores.values())  # the best, the smallest among ties
        assert all(w > c["weight"] for w, v in scores.items() if v == max(scores.values()) and w != c["weight"])
    res = evaluate_run(task, model, repeat_weights={n: c["weight"] for n, c in chosen.items()})
    assert set(res["repeat"]) == set(chosen) and all(res["repeat"][n]["weight"] == chosen[n]["weight"] for n in chosen)
    # weight 0 is the model alone (history kept in the ranking)
    zero = evaluate_run(task, model, repeat_weights=0.0, popularity=False)
    for name, m in zero["scenarios"].items():
        for key, v in m.items():
            assert zero["repeat"][name][key] == pytest.approx(v, abs=1e-9), (name, key)
    with pytest.raises(ValueError, match="exclude_history=False"):
        evaluate_run(task, model, repeat_weights=0.1, exclude_history=True)


def test_cli_eval_repeat(unified_run, recsys_cli):
    run_dir = unified_run[0].train.run_dir
    rc, out, err = recsys_cli(["eval", "--checkpoint", run_dir, "--which", "latest", "--repeat", "auto",
                               "--no-baseline"])
    assert rc == 0, err[-2000:]
    res = json.loads(out)
    assert res["repeat"] and all("validation" in m and m["weight"] in REPEAT_GRID for m in res["repeat"].values())
    rc, out, _ = recsys_cli(["eval", "--checkpoint", run_dir, "--which", "latest", "--repeat", "0.5", "--no-baseline"])
    assert rc == 0 and {m["weight"] for m in json.loads(out)["repeat"].values()} == {0.5}
    for bad, msg in ((["--repeat", "-1"], "'auto' or a weight >= 0"), (["--repeat", "auto", "--split", "validation"],
                     "evaluate --split test"), (["--repeat", "0.5", "eval.exclude_history=true"], "exclude_history")):
        rc, _, err = recsys_cli(["eval", "--checkpoint", run_dir, "--which", "latest", *bad])
        assert rc == 2 and msg in err, bad


def test_retriever_serves_the_fused_score_exactly(unified_served, recsys_cli):
    cfg, r, q, is_ad = unified_served
    # the history with two items again: counts 2 and 3
    extra = [0, 0, 1]
    query = {key: list(v) + [v[i] for i in extra] for key, v in q.items()}
    scenario, w, k = "engagement:home", 0.2, 8  # every item eligible: the history's too
    items, scores = r.recommend(**query, scenario=scenario, k=k, exclude_history=False, repeat_weight=w)
    plain, plain_scores = r.recommend(**query, scenario=scenario, k=k, exclude_history=False)
    # brute force from the model's user vector and item rows over the ads pool
    row = r.prepare(query["history"], query["timestamps"], actions=query["actions"], surfaces=query["surfaces"])
    user = r.user_vectors([row], r.scenario_code(scenario))[0]
    mask = r.candidate_mask(None, r.scenario_code(scenario)[0])
    counts = np.bincount(row[0], minlength=r.num_items + 1)[1:]
    fused = r._rows.astype(np.float64) @ user + w * np.log1p(counts)
    want = sorted(np.flatnonzero(mask) + 1, key=lambda i: (-fused[i - 1], i))[:k]
    assert items == [r.item_map.to_original(i) for i in want]
    np.testing.assert_allclose(scores, fused[np.asarray(want) - 1], atol=1e-5)
    assert items != plain and query["history"][0] in items  # the item seen three times moved in
    ads, _ = r.recommend(**query, scenario=scenario, k=k, exclude_history=False, repeat_weight=w, candidates="ads")
    assert all(is_ad[i] for i in ads)
    same, _ = r.recommend(**query, scenario=scenario, k=k, exclude_history=False, repeat_weight=0.0)
    assert same == plain
    with pytest.raises(ValueError, match="exclude_history=False"):
        r.recommend(**query, scenario=scenario, k=k, repeat_weight=w)
    with pytest.raises(ValueError, match="repeat_weight must be >= 0"):
        r.recommend(**query, scenario=scenario, k=k, exclude_history=False, repeat_weight=-1)
    args = ["recommend", "--checkpoint", cfg.train.run_dir, "--which", "latest",
            "--history", ",".join(query["history"]),
            "--timestamps", ",".join(map(str, query["timestamps"])), "--actions", ",".join(query["actions"]),
            "--surfaces", ",".join(query["surfaces"]), "--k", str(k), "--scenario", scenario, "--include-history",
            "--repeat-weight", str(w)]
    rc, out, err = recsys_cli(args)
    assert rc == 0, err[-2000:]
    assert [row["item"] for row in json.loads(out)["items"]] == items


def test_backtest_run_chooses_the_weights_on_the_runs_validation_window(unified_run, unified_tiny, tmp_path,
                                                                        recsys_cli):
    """unified.split.backtest=1 moves T back one window; `eval --repeat auto --repeat-model` chooses with that run
    on its test window (the run's validation window) and refuses a run that does not test that window."""
    from recsys_jax.eval.repeat_prior import backtest_examples
    from recsys_jax.train.config import load_config
    from recsys_jax.train.restore import restore_run
    from recsys_jax.train.task import train

    cfg = unified_run[0]
    back_dir = tmp_path / "back"
    overrides = unified_tiny.overrides + [f"data.cache_dir={cfg.data.cache_dir}", f"train.run_dir={back_dir}",
                                          "unified.split.backtest=1"]
    train(load_config(unified_tiny.config, overrides))
    run = restore_run(cfg.train.run_dir, which="latest", eval_split="test")
    back = restore_run(str(back_dir), which="latest", eval_split="test")
    val = validation_examples(run.task)
    ex = backtest_examples(run.task, back.task)
    assert back.task.cutoff == run.task.cutoff - ex.window == val.cutoff
    assert set(ex.targets) == set(val.targets)
    for key in ex.targets:  # the same examples (the same users, targets and histories)
        np.testing.assert_array_equal(ex.users[ex.targets[key][0]], val.users[val.targets[key][0]])
    rc, out, err = recsys_cli(["eval", "--checkpoint", cfg.train.run_dir, "--which", "latest", "--repeat", "auto",
                               "--repeat-model", str(back_dir), "--no-baseline"])
    assert rc == 0, err[-2000:]
    res = json.loads(out)
    assert res["repeat"] and res["repeat_chosen_with"] == str(back_dir)
    with pytest.raises(ValueError, match="does not test the run's validation window.*backtest 0: expected 1"):
        backtest_examples(run.task, run.task)
    rc, _, err = recsys_cli(["eval", "--checkpoint", str(back_dir), "--which", "latest", "--repeat", "auto",
                             "--repeat-model", str(back_dir)])
    assert rc == 2 and "expected 2" in err
    for bad, msg in (("unified.split.backtest=-1", "a number of windows >= 0"),
                     ("unified.split.protocol=leave_one_out", "moves a time split's T")):
        extra = [bad] if "protocol" not in bad else [bad, "unified.split.backtest=1"]
        with pytest.raises(Exception, match=msg):
            load_config(unified_tiny.config, unified_tiny.overrides + extra)
