"""recsys-jax train / eval / recommend end to end (in process) on the session's tiny run."""

import json

import pytest

METRICS = ("hr@10", "hr@50", "hr@200", "ndcg@10", "ndcg@50", "ndcg@200", "mrr")


def test_train_prints_the_final_metrics(recsys_run):
    final = recsys_run.final
    assert final["step"] == recsys_run.cfg.train.steps and final["run_dir"] == recsys_run.run_dir
    for m in METRICS:
        assert 0.0 <= final[f"eval_{m}"] <= 1.0


def test_eval_prints_all_metrics_and_the_baseline(recsys_run, recsys_cli, restored_best):
    from recsys_jax.eval.evaluate import evaluate_model, targets_in_history

    rc, out, err = recsys_cli(["eval", "--checkpoint", recsys_run.run_dir, "--split", "test"])
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["split"] == "test" and res["checkpoint"] == "best" and res["model"] == "hstu"
    assert res["users"] == 300 and res["step"] == restored_best.step
    # the protocol is part of the result: history excluded (the config's), and how many targets repeat it
    assert res["exclude_history"] is True and res["ties"] == "pessimistic"
    assert res["targets_in_history"] == pytest.approx(targets_in_history(recsys_run.dataset, "test"), abs=1e-6)
    for m in METRICS:
        assert 0.0 <= res["metrics"][m] <= 1.0 and 0.0 <= res["most_popular"][m] <= 1.0
    cfg = recsys_run.cfg
    direct = evaluate_model(restored_best.model(), recsys_run.dataset, "test", batch_size=cfg.eval.batch_size,
                            max_len=cfg.data.max_len)
    for m in METRICS:
        assert res["metrics"][m] == pytest.approx(direct[m], abs=1e-6)
    assert res["metrics"]["ndcg@10"] > res["most_popular"]["ndcg@10"]

    rc, out, err = recsys_cli(["eval", "--checkpoint", recsys_run.run_dir, "--split", "validation", "--which",
                               "latest", "--no-baseline", "eval.batch_size=128", "eval.exclude_history=false"])
    assert rc == 0, err
    res = json.loads(out.strip().splitlines()[-1])
    assert res["checkpoint"] == "latest" and res["step"] == recsys_run.cfg.train.steps
    assert res["exclude_history"] is False
    assert "most_popular" not in res and set(METRICS) <= set(res["metrics"])


def test_recommend_prints_original_ids_scores_and_titles(recsys_run, recsys_cli):
    ds = recsys_run.dataset
    rec = ds.sequence(0)
    history = [ds.item_map.to_original(i) for i in rec["items"][-6:]]
    stamps = [str(int(t)) for t in rec["timestamps"][-6:]]
    rc, out, err = recsys_cli(["recommend", "--checkpoint", recsys_run.run_dir, "--history", ",".join(history),
                               "--timestamps", ",".join(stamps), "--k", "5"])
    assert rc == 0, err
    res = json.loads(out)
    assert len(res["items"]) == 5
    for row in res["items"]:
        assert row["item"] in ds.item_map and row["item"] not in history
        assert isinstance(row["score"], float) and row["title"]
    scores = [row["score"] for row in res["items"]]
    assert scores == sorted(scores, reverse=True)


def test_cli_errors_are_one_line_with_exit_code_2(recsys_run, recsys_cli, tmp_path):
    rc, _, err = recsys_cli(["recommend", "--checkpoint", recsys_run.run_dir, "--history", "18,zzz"])
    assert rc == 2 and "unknown item id 'zzz'" in err and len(err.strip().splitlines()) == 1
    rc, _, err = recsys_cli(["recommend", "--checkpoint", recsys_run.run_dir, "--history", "18,31", "--timestamps",
                             "1,x"])
    assert rc == 2 and "--timestamps must be comma-separated integers" in err
    rc, _, err = recsys_cli(["train", "train.stepz=3"])
    assert rc == 2 and "did you mean 'train.steps'" in err
    rc, _, err = recsys_cli(["eval", "--checkpoint", str(tmp_path / "nothing")])
    assert rc == 2 and "not found" in err
    rc, _, err = recsys_cli(["eval", "--checkpoint", recsys_run.run_dir, "--which", "best", "mesh.tensor=7"])
    assert rc == 2 and "mesh" in err
    rc, _, err = recsys_cli(["eval", "--checkpoint", recsys_run.run_dir, "--repeat", "auto"])
    assert rc == 2 and "not a unified run" in err
