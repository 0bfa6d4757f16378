"""Retriever on a unified run: event histories, scenarios and candidate pools (Python and `recsys-jax recommend`)."""

import json

import numpy as np
import pytest

from recsys_jax import Retriever


def test_scenario_switch_changes_the_candidates(unified_served):
    _, r, q, is_ad = unified_served
    out = {s: r.recommend(**q, scenario=s, k=8, exclude_history=False)
           for s in [("conversion", "home"), ("conversion", "search"), ("ad_click", "home"), "engagement:home"]}
    for s in [("conversion", "home"), ("conversion", "search"), ("ad_click", "home")]:
        assert len(out[s][0]) == 8 and all(is_ad[i] for i in out[s][0])  # ad labels: the ads pool by default
    scores = {s: np.asarray(v[1]) for s, v in out.items()}
    assert not np.allclose(scores[("conversion", "home")], scores[("conversion", "search")])
    assert not np.allclose(scores[("conversion", "home")], scores[("ad_click", "home")])
    assert len({tuple(v[0]) for v in out.values()}) > 1
    assert r.candidate_mask(None, r.labels.code("engagement")).all()  # organic labels: every item
    # the candidate pool: ads only, organic only
    ads, _ = r.recommend(**q, scenario="engagement:home", k=10, candidates="ads")
    organic, _ = r.recommend(**q, scenario="engagement:home", k=10, candidates="organic")
    assert all(is_ad[i] for i in ads) and not any(is_ad[i] for i in organic) and len(ads) == len(organic) == 10
    everything, _ = r.recommend(**q, scenario="conversion:home", k=30, candidates="all")
    assert any(not is_ad[i] for i in everything)
    # a batch gives the rows of single requests
    batch, _ = r.recommend([q["history"]] * 2, [q["timestamps"]] * 2, actions=[q["actions"]] * 2,
                           surfaces=[q["surfaces"]] * 2, scenario="conversion:home", k=8, exclude_history=False)
    assert batch[0] == batch[1] == out[("conversion", "home")][0]


def test_bad_scenario_requests_say_what_is_expected(unified_served):
    _, r, q, _ = unified_served
    with pytest.raises(ValueError, match="pass scenario=.*conversion"):
        r.recommend(**q, k=5)
    with pytest.raises(ValueError, match="label 'purchase'"):
        r.recommend(**q, scenario="purchase:home", k=5)
    with pytest.raises(ValueError, match="pass actions"):
        r.recommend(q["history"], q["timestamps"], surfaces=q["surfaces"], scenario="conversion:home", k=5)
    with pytest.raises(ValueError, match=r"actions: \['like'\] not in the vocabulary"):
        r.recommend(**dict(q, actions=["like"] * len(q["history"])), scenario="conversion:home", k=5)
    with pytest.raises(ValueError, match="candidates must be one of"):
        r.recommend(**q, scenario="conversion:home", k=5, candidates="promoted")


def test_cli_recommend_scenario(unified_served, recsys_cli):
    cfg, _, q, is_ad = unified_served
    args = ["recommend", "--checkpoint", cfg.train.run_dir, "--which", "latest", "--history", ",".join(q["history"]),
            "--timestamps", ",".join(map(str, q["timestamps"])), "--actions", ",".join(q["actions"]),
            "--surfaces", ",".join(q["surfaces"]), "--k", "5"]
    rc, out, err = recsys_cli(args + ["--scenario", "conversion:home"])
    assert rc == 0, err[-2000:]
    res = json.loads(out)
    assert res["scenario"] == "conversion:home" and len(res["items"]) == 5
    assert all(is_ad[row["item"]] for row in res["items"])
    rc, out, err = recsys_cli(args + ["--scenario", "conversion:home", "--candidates", "organic"])
    assert rc == 0 and not any(is_ad[row["item"]] for row in json.loads(out)["items"])
    rc, _, err = recsys_cli(args + ["--scenario", "conversion:feed"])
    assert rc == 2 and "surface 'feed'" in err


def test_plain_retriever_refuses_event_arguments(recsys_run):
    r = Retriever.from_checkpoint(recsys_run.run_dir)
    history = [r.item_map.to_original(i) for i in (1, 2, 3)]
    with pytest.raises(ValueError, match="reads item ids only"):
        r.recommend(history, actions=["click"] * 3, k=5)
    with pytest.raises(ValueError, match="needs a unified run"):
        r.recommend(history, scenario="conversion:home", k=5)
