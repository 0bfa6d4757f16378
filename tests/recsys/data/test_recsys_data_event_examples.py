"""Per-label training examples from event records: alignment, masks, no leakage, label counts."""

import dataclasses

import numpy as np
import pytest

from recsys_jax.data.event_builder import EventSourceSpec, build_events
from recsys_jax.data.event_examples import (DEFAULT_LABELS, LabelConfig, compile_labels, event_train_example,
                                            label_target_counts)
from recsys_jax.data.events import DEFAULT_ACTIONS
from recsys_jax.data.loader import load_dataset
from recsys_jax.data.marketplace import MarketplaceConfig

IMP, CLICK, SAVE, AD_CLICK, CONV, PURCHASE = range(6)
# items 1-4 organic, 5-6 ads
EVENTS = {"actions": list(DEFAULT_ACTIONS), "surfaces": ["home", "search", "related"],
          "item_is_ad": [0, 0, 0, 0, 0, 1, 1], "fields": ["actions", "surfaces", "is_ad", "conversions"]}


def _record():
    actions = [CLICK, AD_CLICK, SAVE, AD_CLICK, PURCHASE, CONV, CLICK, AD_CLICK, CLICK]
    items = [1, 5, 2, 6, 6, 6, 3, 5, 4]  # a purchase of ad item 6 (an unattributed conversion): not organic
    conv = [0, 0, 0, 1, 0, 0, 0, 0, 0]
    n = len(items)
    return {"user": 7, "items": np.array(items, np.int32), "timestamps": np.arange(n, dtype=np.int64) * 10 + 100,
            "actions": np.array(actions, np.int16), "surfaces": np.array([0, 1, 2, 0, 1, 2, 0, 1, 2], np.int16),
            "is_ad": np.array([i >= 5 for i in items]), "conversions": np.array(conv, np.float32)}


LABELS = (LabelConfig("engagement", ["click", "save", "purchase"], None, "organic", 1.0),) + DEFAULT_LABELS[1:]


@pytest.mark.parametrize("padding", ["left", "right"])
def test_hand_made_record_targets_and_label_masks(padding):
    tables = compile_labels(LABELS, EVENTS)
    rec = _record()
    ex = event_train_example(rec, max_len=10, labels=tables, padding=padding)
    m = ex["mask"]
    assert m.sum() == 6  # the training prefix is the first 7 events (the last two: validation, test)
    real = lambda k: ex[k][m]  # noqa: E731
    np.testing.assert_array_equal(real("item_ids"), rec["items"][:6])
    np.testing.assert_array_equal(real("target_ids"), rec["items"][1:7])
    np.testing.assert_array_equal(real("actions"), rec["actions"][:6])
    np.testing.assert_array_equal(real("surfaces"), rec["surfaces"][:6])
    np.testing.assert_array_equal(real("is_ad"), rec["is_ad"][:6])
    np.testing.assert_array_equal(real("target_surfaces"), rec["surfaces"][1:7])
    # targets: ad_click(5), save(2), ad_click(6, converted), purchase(6: an ad item), conversion, click(3)
    expected = np.array([[0, 1, 0], [1, 0, 0], [0, 1, 1], [0, 0, 0], [0, 0, 0], [1, 0, 0]], bool)
    np.testing.assert_array_equal(real("label_mask"), expected)
    assert not ex["label_mask"][~m].any() and (ex["item_ids"][~m] == 0).all()
    if padding == "left":
        assert m[-6:].all()


def test_no_future_event_in_any_input_of_simulated_records(tmp_path):
    sim = MarketplaceConfig(num_users=40, num_categories=4, organic_per_category=8, num_advertisers=4, sessions=(2, 4),
                            seed=2)
    build_events(EventSourceSpec(marketplace=sim), tmp_path, max_seq_len=60, drop_actions=("impression",),
                 verbose=False)
    ds = load_dataset(tmp_path)
    tables = compile_labels(DEFAULT_LABELS, ds.events)
    rng = np.random.default_rng(0)
    checked = 0
    for u in range(ds.num_users):
        rec = dict(ds.sequence(u))
        n = len(rec["items"])
        ex = event_train_example(rec, max_len=12, labels=tables, padding="right", rng=np.random.default_rng(u))
        k = int(ex["mask"].sum())
        if k == 0:
            continue
        m = n - 2 if n >= 3 else n  # the training prefix (see recsys_jax.data.splits)
        # find the window: inputs are k consecutive events of the training prefix, targets the next ones
        starts = [s for s in range(m - k) if (rec["items"][s:s + k] == ex["item_ids"][:k]).all()
                  and (rec["timestamps"][s:s + k] == ex["timestamps"][:k]).all()
                  and (rec["items"][s + 1:s + k + 1] == ex["target_ids"][:k]).all()]
        assert starts, u
        s = starts[0]
        assert s + k + 1 <= m  # never the validation or test event
        for p in range(k):  # position p: input is event s+p, target event s+p+1, nothing later
            assert ex["actions"][p] == rec["actions"][s + p] and ex["surfaces"][p] == rec["surfaces"][s + p]
            assert ex["timestamps"][p] <= rec["timestamps"][s + p + 1]
        # rewriting every future event (and every label field) changes no input
        for cut in range(1, k):
            fut = {key: (np.asarray(v).copy() if hasattr(v, "__len__") else v) for key, v in rec.items()}
            for key in ("items", "actions", "surfaces", "is_ad", "conversions", "timestamps"):
                col = fut[key]
                col[s + cut + 1:] = rng.permutation(col[s + cut + 1:]) if key != "items" else 1
            fut["conversions"][:] = rng.random(n)
            win = lambda r: event_train_example(r, max_len=12, labels=tables, padding="right",  # noqa: E731
                                                rng=np.random.default_rng(u))
            ex2 = win(fut)
            for key in ("item_ids", "timestamps", "actions", "surfaces", "is_ad"):
                np.testing.assert_array_equal(ex2[key][:cut + 1], ex[key][:cut + 1])
            checked += 1
    assert checked > 20


def test_label_target_counts_equal_a_loop():
    tables = compile_labels(LABELS, EVENTS)
    recs = [_record(), {**_record(), "items": np.array([2, 6, 6, 1, 5, 5, 5, 2, 3], np.int32)}]
    counts = label_target_counts(recs, tables, 6)
    want = np.zeros((3, 7), np.int64)
    for rec in recs:
        m = len(rec["items"]) - 2
        has = tables.target_labels(rec, slice(0, len(rec["items"])))
        for j in range(1, m):
            for lab in range(3):
                want[lab, rec["items"][j]] += has[j, lab]
    np.testing.assert_array_equal(counts, want)
    assert counts[1:, 1:5].sum() == 0  # ad labels never target organic items


def test_label_errors_name_the_problem():
    with pytest.raises(ValueError, match="not in the dataset's action vocabulary"):
        compile_labels([LabelConfig("x", ["like"])], EVENTS)
    with pytest.raises(ValueError, match="field 'conversion_value' is not a record field"):
        compile_labels([LabelConfig("x", ["ad_click"], "conversion_value")], EVENTS)
    with pytest.raises(ValueError, match="need an event dataset"):
        compile_labels(DEFAULT_LABELS, None)
    with pytest.raises(ValueError, match="unique"):
        compile_labels([DEFAULT_LABELS[0], DEFAULT_LABELS[0]], EVENTS)
    with pytest.raises(ValueError, match="has no 'ads' items"):
        compile_labels(DEFAULT_LABELS, {**EVENTS, "item_is_ad": [0] * 7})
    with pytest.raises(ValueError, match="lacks the event fields"):
        event_train_example({"items": np.arange(1, 6), "timestamps": np.zeros(5)}, max_len=4,
                            labels=compile_labels(DEFAULT_LABELS, EVENTS))
    assert dataclasses.asdict(DEFAULT_LABELS[2])["field"] == "conversions"


def test_future_window_targets_are_later_training_events_within_the_window():
    tables = compile_labels(LABELS, EVENTS)
    rec = _record()  # timestamps 100, 110, ..., 180; training prefix: the first 7 events
    ts, prefix = rec["timestamps"], 7
    seen = set()
    for seed in range(40):
        ex = event_train_example(rec, max_len=10, labels=tables, padding="right", target_window=25,
                                 rng=np.random.default_rng(seed))
        k = int(ex["mask"].sum())
        assert k == 6
        np.testing.assert_array_equal(ex["item_ids"][:k], rec["items"][:k])  # inputs unchanged
        for p in range(k):
            # the target of input event p: one of p+1 .. (last event before ts[p] + 25), inside the prefix
            cands = [j for j in range(p + 1, prefix) if ts[j] < ts[p] + 25] or [p + 1]
            j = [c for c in cands if rec["items"][c] == ex["target_ids"][p]
                 and rec["surfaces"][c] == ex["target_surfaces"][p]]
            assert j, (seed, p)
            np.testing.assert_array_equal(ex["label_mask"][p], tables.target_labels(rec, np.asarray(j[:1]))[0])
            seen.add((p, j[0]))
    # both candidates of a window of two are drawn (not always the next event), never past the prefix
    assert {(0, 1), (0, 2), (4, 5), (4, 6)} <= seen and not any(j >= prefix for _, j in seen)
    # no window: the next event, as before
    a = event_train_example(rec, max_len=10, labels=tables, padding="right")
    b = event_train_example(rec, max_len=10, labels=tables, padding="right", target_window=None)
    np.testing.assert_array_equal(a["target_ids"], b["target_ids"])
    np.testing.assert_array_equal(a["target_ids"][:6], rec["items"][1:7])


def test_a_conversion_after_the_cutoff_is_not_a_training_label():
    """Time split at T: the ad click at t=130 converted at t=155 (conversions_delay 25); trained before T=150 it is
    a plain ad click, before T=170 a conversion too; label counts (logQ) follow; a record without the delay field
    (an older dataset) keeps its label."""
    tables = compile_labels(LABELS, {**EVENTS, "fields": EVENTS["fields"] + ["conversions_delay"]})
    conv = tables.code("conversion")
    rec = {**_record(), "conversions_delay": np.where(_record()["conversions"] > 0, 25.0, np.inf).astype(np.float32)}
    for cutoff, converted in ((150, False), (170, True)):
        ex = event_train_example(rec, max_len=10, labels=tables, padding="right", cutoff=cutoff)
        at = list(ex["target_ids"][ex["mask"]]).index(6)  # the target at row 3: the converted ad click on item 6
        assert ex["label_mask"][at, tables.code("ad_click")] and ex["label_mask"][at, conv] == converted, cutoff
        assert label_target_counts([rec], tables, 6, cutoff=cutoff)[conv, 6] == int(converted)
    old = event_train_example(_record(), max_len=10, labels=tables, padding="right", cutoff=150)
    assert old["label_mask"][list(old["target_ids"][old["mask"]]).index(6), conv]
