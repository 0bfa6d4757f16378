"""Brute-force numpy references and integer-valued test data (every float32 score is exact, so
results compare with ==, ties included)."""

import numpy as np


def int_data(rng, n, d, dtype="float32", lo=-3, hi=3):
    """Integer embeddings exactly representable in ``dtype`` (int8: each row's max |value| is 127, so
    the per-row scale is 1) and many exact score ties."""
    x = rng.integers(lo, hi + 1, size=(n, d)).astype(np.float32)
    if dtype == "int8":
        x = rng.integers(-127, 128, size=(n, d)).astype(np.float32)
        x[:, 0] = 127
    return x


def brute_force(stored, ids, queries, k, exclude=None, mask=None, groups=None, cap=None):
    """Walk the items by (score desc, id asc), skip ineligible/excluded ones and items whose group
    already has ``cap`` taken; pad with (-1, -inf)."""
    scores = queries.astype(np.float64) @ stored.astype(np.float64).T
    out_ids = np.full((len(queries), k), -1, np.int64)
    out_s = np.full((len(queries), k), -np.inf, np.float64)
    for b in range(len(queries)):
        order = np.lexsort((ids, -scores[b]))
        taken, per = 0, {}
        for j in order:
            if mask is not None and not mask[j]:
                continue
            if exclude is not None and ids[j] in set(exclude[b]):
                continue
            if groups is not None and groups[j] >= 0:
                if per.get(groups[j], 0) >= cap:
                    continue
                per[groups[j]] = per.get(groups[j], 0) + 1
            out_ids[b, taken], out_s[b, taken] = ids[j], scores[b, j]
            taken += 1
            if taken == k:
                break
    return out_ids, out_s


def random_case(rng, n, d, b, dtype="float32"):
    """Data plus random filters for one comparison."""
    x = int_data(rng, n, d, dtype)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    q = rng.integers(-2, 3, size=(b, d)).astype(np.float32)
    exclude = [list(rng.choice(ids, size=rng.integers(0, 12), replace=False)) + [-5] for _ in range(b)]
    mask = rng.random(n) < 0.8
    groups = rng.integers(-1, 6, size=n)
    return x, ids, q, exclude, mask, groups


ALL = ("none", "exclude", "mask", "groups", "everything")


def check_all(index_factory, rng, n=300, d=8, b=5, k=20, dtypes=("float32", "bfloat16", "int8"), combos=ALL):
    """Compare ItemIndex with brute force for the filter ``combos``; returns the number of checks."""
    checks = 0
    for dtype in dtypes:
        x, ids, q, exclude, mask, groups = random_case(rng, n, d, b, dtype)
        index = index_factory(x, ids, dtype)
        table = {"none": {}, "exclude": {"exclude": exclude}, "mask": {"mask": mask},
                 "groups": {"groups": groups, "per_group_cap": 2},
                 "everything": {"exclude": exclude, "mask": mask, "groups": groups, "per_group_cap": 1}}
        for kw in (table[c] for c in combos):
            got_i, got_s = index.search(q, k, **kw)
            ref_i, ref_s = brute_force(x, ids, q, k, kw.get("exclude"), kw.get("mask"), kw.get("groups"),
                                       kw.get("per_group_cap"))
            np.testing.assert_array_equal(got_i, ref_i, err_msg=f"{dtype} {sorted(kw)}")
            np.testing.assert_array_equal(got_s, ref_s.astype(np.float32), err_msg=f"{dtype} {sorted(kw)}")
            checks += 1
    return checks
