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
