import numpy as np
import pytest

from recsys_jax.data.events import DEFAULT_ACTIONS, EventLog, Vocab, events_from_interactions, make_event_log
from recsys_jax.data.formats import Interaction


def _log():
    return make_event_log(
        user=["b", "a", "a", "b", "a"], item=["x", "ad1", "y", "ad1", "ad1"], timestamp=[5, 3, 1, 2, 3],
        action=["click", "ad_click", "impression", "ad_click", "conversion"],
        surface=["home", "search", "home", "related", "search"], is_ad=[0, 1, 0, 1, 1],
        advertiser=[None, "acme", None, "acme", "acme"], campaign=[None, "c1", None, "c2", None],
        value=[None, None, None, None, 9.5], category=["toys", "shoes", "toys", "shoes", "shoes"],
        actions=DEFAULT_ACTIONS, surfaces=("home", "search", "related"))


def test_columns_vocabularies_and_item_table():
    log = _log()
    assert len(log) == 5 and log.num_users == 2 and log.num_items == 3
    assert log.action.dtype == np.int16 and log.user.dtype == np.int64 and log.item.dtype == np.int32
    assert [log.actions.names[a] for a in log.action] == ["click", "ad_click", "impression", "ad_click", "conversion"]
    ad1 = log.item_map.to_dense("ad1")
    assert log.item_is_ad[ad1] and not log.item_is_ad[log.item_map.to_dense("x")] and not log.item_is_ad[0]
    assert log.advertisers == ["acme"] and log.item_advertiser[ad1] == 0 and log.item_advertiser[0] == -1
    assert log.categories[log.item_category[ad1]] == "shoes"
    assert log.campaign.tolist() == [-1, 0, -1, 1, -1]
    assert np.isnan(log.value[0]) and log.value[4] == pytest.approx(9.5)
    assert log.action_counts() == {"impression": 1, "click": 1, "save": 0, "ad_click": 2, "conversion": 1,
                                   "purchase": 0}


def test_sorted_per_user_time_order_stable_on_ties():
    log = _log().sorted()
    off = log.user_offsets()
    a = log.user_events(log.user_map.to_dense("a"), off)
    # a: y@1, ad1@3 (ad_click), ad1@3 (conversion): the tie keeps log order
    assert [log.item_map.to_original(i) for i in a["item"]] == ["y", "ad1", "ad1"]
    assert a["timestamp"].tolist() == [1, 3, 3]
    assert [log.actions.names[x] for x in a["action"]] == ["impression", "ad_click", "conversion"]
    assert [log.surfaces.names[x] for x in a["surface"]] == ["home", "search", "search"]
    assert a["is_ad"].tolist() == [False, True, True]
    b = log.user_events(log.user_map.to_dense("b"), off)
    assert b["timestamp"].tolist() == [2, 5]


def test_truncated_keeps_most_recent_and_sequences():
    log = _log().truncated(2)
    assert np.diff(log.user_offsets()).tolist() == [2, 2]
    seqs = log.to_sequences()
    a = seqs.items[log.user_map.to_dense("a")]
    assert [log.item_map.to_original(i) for i in a] == ["ad1", "ad1"]
    assert seqs.num_items == 3 and seqs.stats["interactions"] == 4


def test_bad_names_and_columns_are_errors():
    with pytest.raises(ValueError, match=r"action names \['buy'\] are not in the action vocabulary"):
        make_event_log(user=["a"], item=["x"], timestamp=[1], action=["buy"], actions=("click",))
    with pytest.raises(ValueError, match="column 'item' has 2 values, expected 1"):
        make_event_log(user=["a"], item=["x", "y"], timestamp=[1], action=["click"])
    with pytest.raises(ValueError, match="repeats"):
        Vocab(("a", "a"))
    log = _log()
    with pytest.raises(ValueError, match=r"action codes span \[0, 9\]"):
        EventLog(**{**log.__dict__, "action": np.array([0, 1, 9, 0, 0])})
    with pytest.raises(ValueError, match="sorted by user"):
        log.take(np.array([0, 1])).user_offsets()


def test_single_action_data_and_rating_behaviours():
    inter = [Interaction("1", "10", 5, 1, 5.0), Interaction("1", "11", 6, 2, 3.0), Interaction("2", "10", 1, 3, 4.0)]
    one = events_from_interactions(inter)
    assert one.actions.names == ("interaction",) and set(one.action.tolist()) == {0}
    assert one.surfaces.names == ("unknown",) and not one.is_ad.any() and (one.advertiser == -1).all()
    beh = events_from_interactions(inter, rating_actions=(4.0, "like", "view"))
    assert beh.actions.names == ("view", "like")
    assert [beh.actions.names[a] for a in beh.action] == ["like", "view", "like"]
    with pytest.raises(ValueError, match="line 1 has none"):
        events_from_interactions([Interaction("1", "10", 5, 1, None)], rating_actions=(4.0, "like", "view"))


EVENTS_CSV = ("uid,iid,ts,act,where,ad,adv,camp,price,cat\n"
              "u1,i1,10,impression,home,0,,,,toys\n"
              "u1,a1,20,ad_click,search,1,acme,c1,,shoes\n"
              "u1,a1,30,conversion,search,yes,acme,c1,12.5,shoes\n"
              "u2,i1,5,click,related,false,,,,toys\n")
MAPPING = "user=uid,item=iid,time=ts,action=act,surface=where,is_ad=ad,advertiser=adv,campaign=camp,value=price,category=cat"


def _check_events(log):
    assert len(log) == 4 and log.num_users == 2 and log.actions.names == DEFAULT_ACTIONS
    assert [log.actions.names[a] for a in log.action] == ["impression", "ad_click", "conversion", "click"]
    assert [log.surfaces.names[s] for s in log.surface] == ["home", "search", "search", "related"]
    assert log.is_ad.tolist() == [False, True, True, False] and log.advertisers == ["acme"]
    assert log.campaign.tolist() == [-1, 0, 0, -1] and log.value[2] == 12.5 and np.isnan(log.value[0])
    a1 = log.item_map.to_dense("a1")
    assert log.item_is_ad[a1] and log.categories[log.item_category[a1]] == "shoes"
    assert log.timestamp.tolist() == [10, 20, 30, 5]


def test_read_events_csv_and_parquet(write, tmp_path):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    from recsys_jax.data.events import read_events

    path = write(tmp_path / "ev.csv", EVENTS_CSV)
    _check_events(read_events("csv", path, columns=MAPPING, actions=DEFAULT_ACTIONS,
                              surfaces=("home", "search", "related")))
    table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(column_types={"ad": pa.string()}))
    pq.write_table(table, tmp_path / "ev.parquet")
    _check_events(read_events("parquet", str(tmp_path / "ev.parquet"), columns=MAPPING, actions=DEFAULT_ACTIONS,
                              surfaces=("home", "search", "related")))


def test_read_events_errors_and_defaults(write, tmp_path):
    from recsys_jax.data.events import read_events
    from recsys_jax.data.formats import DataFormatError, ReadStats

    path = write(tmp_path / "ev.csv", EVENTS_CSV)
    with pytest.raises(DataFormatError, match=r"no column 'kind' for 'action'; the table has columns \['uid', 'iid'"):
        read_events("csv", path, columns="user=uid,item=iid,action=kind")
    with pytest.raises(ValueError, match=r"unknown key 'color'; expected keys \['user', 'item', 'time', 'action'"):
        read_events("csv", path, columns="user=uid,item=iid,color=cat")
    with pytest.raises(DataFormatError, match=r"ev.csv:3: action 'ad_click' is not in the action vocabulary"):
        read_events("csv", path, columns=MAPPING, actions=("impression", "click", "conversion"))
    stats = ReadStats()
    log = read_events("csv", path, columns=MAPPING, actions=("impression", "click", "conversion"),
                      skip_bad_lines=True, stats=stats)
    assert len(log) == 3 and stats.bad_lines == 1 and "ad_click" in stats.first_bad
    bad = write(tmp_path / "bad.csv", "user,item,is_ad\nu,i,maybe\n")
    with pytest.raises(DataFormatError, match=r"bad.csv:2: expected a boolean .* column 'is_ad', got 'maybe'"):
        read_events("csv", bad)
    # only user and item: one action, surface unknown, vocabularies from the data
    plain = read_events("csv", write(tmp_path / "p.csv", "user,item\nu,i\nu,j\n"))
    assert plain.actions.names == ("interaction",) and plain.surfaces.names == ("unknown",)
    assert not plain.has_timestamps
