"""Write the marketplace simulator's engagements (drifting intents, stable long-term interests) as a MovieLens-style
``user::item::1::timestamp`` file, the input of ``recsys-jax longshort train`` (``data.format=movielens``).

    python benchmarks/longshort_sim_data.py --out out/sim_ls.dat.gz --users 2000 --sessions 30 150

Every user's long-term interest distribution over categories is fixed; the short-term intent (a category)
is redrawn at each session start (kept with ``p_keep_intent``) and drifts inside a session
(:mod:`recsys_jax.data.marketplace`). The events written are the engagements: organic clicks and ad clicks
(saves / purchases / conversions follow a click on the same item and are left out). Prints JSON stats.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os

import numpy as np

from recsys_jax.data.marketplace import MarketplaceConfig, generate_marketplace


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output file (.gz: gzipped)")
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--sessions", type=int, nargs=2, default=[30, 150], help="sessions per user (inclusive range)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    sim = generate_marketplace(MarketplaceConfig(num_users=a.users, sessions=tuple(a.sessions),
                                                 record_impressions=False, seed=a.seed))
    log = sim.log
    keep = np.isin(log.action, log.actions.codes(["click", "ad_click"]))
    order = np.lexsort((log.timestamp[keep], log.user[keep]))
    users, items, ts = log.user[keep][order], log.item[keep][order], log.timestamp[keep][order]
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with (gzip.open if a.out.endswith(".gz") else open)(a.out, "wt") as f:
        for u, i, t in zip(users, items, ts):
            f.write(f"{log.user_map.to_original(int(u))}::{log.item_map.to_original(int(i))}::1::{int(t)}\n")
    counts = np.bincount(users)
    counts = counts[counts > 0]
    print(json.dumps({"out": a.out, "users": int(len(counts)), "events": int(len(users)),
                      "items": int(len(np.unique(items))), "history_median": int(np.median(counts)),
                      "history_max": int(counts.max())}))


if __name__ == "__main__":
    main()
