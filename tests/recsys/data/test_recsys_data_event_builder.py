import os

import numpy as np
import pytest

from recsys_jax.data.attribution import AttributionConfig
from recsys_jax.data.event_builder import RATING_BEHAVIOURS, EventSourceSpec, build_events
from recsys_jax.data.loader import load_dataset
from recsys_jax.data.marketplace import MarketplaceConfig

EVENTS_CSV = ("uid,iid,ts,act,where,ad,adv,camp,price,cat\n"
              "u1,i1,10,impression,home,0,,,,toys\n"
              "u1,a1,20,ad_click,search,1,acme,c1,,shoes\n"
              "u1,a1,30,conversion,search,yes,acme,c1,12.5,shoes\n"
              "u2,i1,5,click,related,false,,,,toys\n")
MAPPING = "user=uid,item=iid,time=ts,action=act,surface=where,is_ad=ad,advertiser=adv,campaign=camp,value=price,category=cat"
SIM = MarketplaceConfig(num_users=60, num_categories=5, organic_per_category=10, num_advertisers=4, sessions=(2, 4),
                        seed=1)


@pytest.fixture(scope="module")
def sim_built(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    path = build_events(EventSourceSpec(marketplace=SIM), out, max_seq_len=50, drop_actions=("impression",),
                        verbose=False)
    return path, load_dataset(out)


def test_marketplace_event_dataset(sim_built):
    path, ds = sim_built
    ev = ds.events
    assert ev["actions"][:6] == ["impression", "click", "save", "ad_click", "conversion", "purchase"]
    assert ev["surfaces"] == ["home", "search", "related"] and len(ev["item_is_ad"]) == ds.num_items + 1
    assert set(ev["fields"]) == {"actions", "surfaces", "is_ad", "advertisers", "campaigns", "values", "intents",
                                 "conversions", "conversion_value", "conversions_delay"}
    rep = ds.report
    att = rep["attribution"]
    assert att["rule"] == "last_click" and att["conversions"] == rep["actions_read"]["conversion"] > 0
    assert att["attributed"] + att["outside_window"] + att["no_prior_click"] == att["conversions"]
    assert rep["dropped_actions"]["impression"] == rep["actions_read"]["impression"] > 0
    assert rep["actions_kept"]["impression"] == 0
    assert rep["actions_kept"]["purchase"] == rep["actions_read"]["purchase"] + att["organic_from_unattributed"]
    total_credit = 0.0
    for u in range(ds.num_users):
        r = ds.sequence(u)
        n = len(r["items"])
        assert 0 < n <= 50 and all(len(r[k]) == n for k in ev["fields"])
        assert (np.diff(r["timestamps"]) >= 0).all()
        assert (r["is_ad"] == np.asarray(ev["item_is_ad"], bool)[r["items"]]).all()
        # credit only on ad clicks; ad clicks of an advertiser carry its id
        credit = r["conversions"]
        assert (credit[r["actions"] != 3] == 0).all()
        total_credit += credit.sum()
    assert total_credit == pytest.approx(att["attributed"])  # nothing truncated at max_seq_len=50 here
    truth = np.load(os.path.join(path, "ground_truth.npz"))
    assert truth["user_interest"].shape == (ds.num_users, 5)
    # the existing training path still reads the folder
    batch = next(iter(ds.train_iterator(batch_size=4, max_len=8)))
    assert batch["item_ids"].shape == (4, 8) and batch["mask"].any()


def test_movielens_rating_behaviours(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::10::5::1\n1::11::2::2\n1::12::4::3\n2::10::3::1\n",
                                          encoding="iso-8859-1")
    build_events(EventSourceSpec("movielens", str(tmp_path / "ratings.dat"), rating_actions=RATING_BEHAVIOURS),
                 tmp_path / "out", verbose=False)
    ds = load_dataset(tmp_path / "out")
    assert ds.events["actions"] == ["view", "like"] and ds.report["attribution"] is None
    r = ds.sequence(ds.user_map.to_dense("1"))
    assert [ds.events["actions"][a] for a in r["actions"]] == ["like", "view", "like"]
    assert [ds.item_map.to_original(i) for i in r["items"]] == ["10", "11", "12"]


def test_csv_events_with_attribution_counts(write, tmp_path):
    log = write(tmp_path / "ev.csv", EVENTS_CSV + "u2,a1,40,conversion,home,1,acme,c1,3,shoes\n")
    build_events(EventSourceSpec("csv", log, columns=MAPPING), tmp_path / "out", verbose=False,
                 attribution=AttributionConfig(window="1h"))
    ds = load_dataset(tmp_path / "out")
    att = ds.report["attribution"]
    assert (att["conversions"], att["attributed"], att["no_prior_click"]) == (2, 1, 1)
    u1 = ds.sequence(ds.user_map.to_dense("u1"))
    assert u1["conversions"].tolist() == [0, 1, 0] and u1["conversion_value"][1] == pytest.approx(12.5)
    assert u1["conversions_delay"].tolist() == [np.inf, 10, np.inf]  # the click at 20 converted at 30
    u2 = ds.sequence(ds.user_map.to_dense("u2"))  # u2's conversion had no click: an organic purchase
    assert [ds.events["actions"][a] for a in u2["actions"]] == ["click", "purchase"]
    assert ds.side_info[ds.item_map.to_dense("a1")] == {"is_ad": True, "category": "shoes", "advertiser": "acme"}
    with pytest.raises(FileExistsError, match="already exists"):
        build_events(EventSourceSpec("csv", log, columns=MAPPING), tmp_path / "out", verbose=False)
    with pytest.raises(ValueError, match=r"drop_actions \['views'\] are not in the action vocabulary"):
        build_events(EventSourceSpec("csv", log, columns=MAPPING), tmp_path / "o2", verbose=False,
                     drop_actions=("views",))
