"""Future-window metrics of a finished ``recsys-jax longshort train`` run, per history-length bucket.

    python benchmarks/longshort_buckets.py --run out/ls_base --input $ML1M [--window 10]

Loads the run folder (its three models and its long-term table), rebuilds the same test protocol as
:func:`recsys_jax.train.longshort.evaluate_all` (last ``window`` events of each user, query just before them,
earlier events excluded), and prints JSON: recall@k / hr@k of long only, short only, both, for all users
and for users bucketed by the number of events before the query (``--edges``). Also a diagnostic,
``score_sum``: the sum of the short and long models' scores (both are cosines at the same temperature,
so this is their log-linear pool with a fixed weight 1, nothing tuned on the test): it says whether the
long vector carries information the short model lacks, whatever the fusion makes of it. ``--weights``: the
same with the long scores weighted (to pick ``fusion.score_weight`` on a validation run).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from recsys_jax.eval.future_window import evaluate_vectors
from recsys_jax.models.embeddings import l2_normalize
from recsys_jax.serving.long_table import load_run
from recsys_jax.train.longshort import LongShortData, eval_inputs, load_sequences, short_user_vectors


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="run folder of recsys-jax longshort train")
    p.add_argument("--input", required=True, help="the interaction file the run was trained on")
    p.add_argument("--format", default="movielens")
    p.add_argument("--window", type=int, default=10)
    p.add_argument("--edges", type=int, nargs="+", default=[50, 100, 200, 400],
                   help="bucket edges on the events before the query (a bucket is (lo, hi])")
    p.add_argument("--ks", type=int, nargs="+", default=[10, 50, 200])
    p.add_argument("--weights", type=float, nargs="+", default=[1.0],
                   help="weights w of the long scores in score_sum (short + w x long; 'score_sum' is w = 1, the "
                        "others 'score_sum_w<w>'): pick w on a validation run, never on the test window")
    a = p.parse_args(argv)
    cfg, models, _, table = load_run(a.run)
    seqs = load_sequences(LongShortData(input=a.input, format=a.format, window=a.window))
    if len(table.embeddings) != len(seqs.items):
        raise ValueError(f"--input: {len(seqs.items)} users, the run's long table has {len(table.embeddings)}: "
                         "not the file the run was trained on")
    users, query, future, exclude = eval_inputs(seqs, a.window)
    short_len = cfg["short_len"]
    long_rows = table.embeddings[users]
    vecs = {"long": long_rows,
            "short": short_user_vectors(models["short"], seqs, users, query, short_len, None),
            "both": short_user_vectors(models["both"], seqs, users, query, short_len, long_rows)}
    tables = {k: np.asarray(models[k].item_embeddings()) for k in vecs}
    # score_sum: [s; l] . [e_short; e_long] = s . e_short + l . e_long (each side unit-norm, as trained)
    for w in a.weights:
        key = "score_sum" if w == 1 else f"score_sum_w{w:g}"
        vecs[key] = np.concatenate([np.asarray(l2_normalize(vecs["short"])), w * long_rows], axis=1)
        tables[key] = np.concatenate([tables["short"], tables["long"]], axis=1)
    hist = query[users]
    edges = [0, *a.edges, int(hist.max())]
    buckets = {"all": np.ones(len(users), bool)}
    for lo, hi in zip(edges[:-1], edges[1:]):
        if hi > lo:
            buckets[f"({lo},{hi}]"] = (hist > lo) & (hist <= hi)
    gain = f"recall@{50 if 50 in a.ks else a.ks[-1]}"  # gain over the better single model
    out = {"run": a.run, "short_len": short_len, "fusion": cfg["fusion"]["fusion"], "buckets": {}}
    for b, sel in buckets.items():
        res = {k: evaluate_vectors(v[sel], tables[k], future[sel], exclude[sel], a.ks) for k, v in vecs.items()}
        best = max(res["long"][gain], res["short"][gain])
        out["buckets"][b] = {"users": int(sel.sum()), **{k: {m: round(x, 4) for m, x in r.items() if m != "count"}
                                                         for k, r in res.items()},
                             f"both_gain_{gain}": round(res["both"][gain] / best - 1, 4),
                             **{f"{k}_gain_{gain}": round(res[k][gain] / best - 1, 4)
                                for k in res if k.startswith("score_sum")}}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
