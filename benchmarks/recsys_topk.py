"""Exact and approximate top-k of recsys_jax.serving.ItemIndex against faiss-cpu IndexFlatIP, same run.

    python benchmarks/recsys_topk.py                       # 1M x 64 f32, 256 queries, top-100
    python benchmarks/recsys_topk.py --items 100000 --repeats 2
    python benchmarks/recsys_topk.py --items 10000000 --dtype bfloat16 --lazy-corpus --no-faiss --no-ivf

``--lazy-corpus`` makes the corpus rows on demand (page by page, from the seed), so the only copy of the
corpus is the index's stored table: with it, the ``memory`` line compares the process's peak resident
memory above its level before the corpus (``ru_maxrss`` minus the RSS just before) with the stored
corpus bytes (``N x D x itemsize``, plus the per-row scale for int8).

The corpus is a mixture of ``--clusters`` Gaussian clusters (unit-normal centres, ``--noise`` per
dimension around them; trained item embeddings are clustered, and on structureless random vectors no
partitioned index reaches a high recall cheaply); the queries are drawn the same way. Prints one JSON
line per measurement: faiss flat, our exact (with the agreement of its ids with faiss), then the IVF
approximate path at several probe budgets (recall@k against our exact result, QPS, ratio to faiss
flat). QPS = queries / best wall time of ``--repeats`` searches of the whole batch
(after a warm-up search that compiles). The 1-minute load average is printed with each line: on a
shared machine the ratios are the meaningful numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from recsys_jax.serving import ItemIndex  # noqa: E402


def emit(**kw):
    kw["load_avg_1m"] = round(os.getloadavg()[0], 2)
    print(json.dumps(kw), flush=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


class ClusteredCorpus:
    """``[items, dim]`` float32 rows of the Gaussian-cluster corpus, made on demand page by page (the same
    rows whatever slices are read), so the corpus is never held whole outside the index."""

    PAGE = 1 << 15

    def __init__(self, centers, items, noise, seed):
        self.centers, self.noise, self.seed = centers, noise, seed
        self.shape = (items, centers.shape[1])

    def _page(self, p):
        rng = np.random.default_rng((self.seed, p))
        n = min(self.PAGE, self.shape[0] - p * self.PAGE)
        c = self.centers[rng.integers(0, len(self.centers), n)]
        return c + self.noise * rng.standard_normal(c.shape, np.float32)

    def __getitem__(self, idx):
        start, stop, step = idx.indices(self.shape[0])
        if step != 1:
            raise IndexError("ClusteredCorpus reads contiguous row slices only")
        pages = range(start // self.PAGE, -(-stop // self.PAGE))
        rows = np.concatenate([self._page(p) for p in pages]) if stop > start else np.zeros((0, self.shape[1]))
        off = pages.start * self.PAGE
        return rows[start - off:stop - off].astype(np.float32)


def best_time(fn, repeats):
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=256)
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--clusters", type=int, default=1024)
    p.add_argument("--noise", type=float, default=1.0, help="per-dimension noise around a cluster centre")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--lists", type=int, default=None, help="IVF lists (default ~sqrt(N))")
    p.add_argument("--probes", default="32,64,128", help="IVF probe budgets, as fractions 1/x of the chunks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lazy-corpus", action="store_true",
                   help="make corpus rows on demand (no full float32 copy; see the memory line)")
    p.add_argument("--no-faiss", action="store_true", help="skip faiss IndexFlatIP (it needs the float32 corpus)")
    p.add_argument("--no-ivf", action="store_true", help="skip the approximate (IVF) path")
    a = p.parse_args(argv)

    ItemIndex(np.eye(8, a.dim, dtype=np.float32), dtype=a.dtype).search(np.ones((1, a.dim), np.float32), 1)
    rss_before = rss_bytes()  # the runtime is up; the corpus does not exist yet
    rng = np.random.default_rng(a.seed)
    centers = rng.standard_normal((a.clusters, a.dim)).astype(np.float32)
    q = centers[rng.integers(0, a.clusters, a.queries)] + a.noise * rng.standard_normal((a.queries, a.dim), np.float32)
    if a.lazy_corpus:
        x = ClusteredCorpus(centers, a.items, a.noise, a.seed)
    else:
        x = centers[rng.integers(0, a.clusters, a.items)] + a.noise * rng.standard_normal((a.items, a.dim), np.float32)
    common = dict(items=a.items, dim=a.dim, clusters=a.clusters, noise=a.noise, queries=a.queries, k=a.k,
                  cpu_count=os.cpu_count())

    t_faiss = faiss_ids = None
    if not a.no_faiss:
        import faiss

        xf = x if isinstance(x, np.ndarray) else x[0:a.items]
        flat = faiss.IndexFlatIP(a.dim)
        flat.add(xf)
        flat.search(q[:8], a.k)
        t_faiss, (_, faiss_ids) = best_time(lambda: flat.search(q, a.k), a.repeats)
        faiss_qps = a.queries / t_faiss
        emit(method="faiss IndexFlatIP", threads=faiss.omp_get_max_threads(), qps=round(faiss_qps, 1), **common)

    t0 = time.perf_counter()
    index = ItemIndex(x, dtype=a.dtype)
    build = time.perf_counter() - t0
    index.search(q, a.k)  # compile
    t_exact, (exact_ids, _) = best_time(lambda: index.search(q, a.k), a.repeats)
    vs_faiss = {}
    if faiss_ids is not None:
        agree = float(np.mean([len(set(e) & set(f)) / a.k for e, f in zip(exact_ids, faiss_ids)]))
        vs_faiss = dict(ratio_to_faiss=round(t_faiss / t_exact, 2), overlap_with_faiss=round(agree, 5))
    emit(method="ItemIndex exact", dtype=a.dtype, qps=round(a.queries / t_exact, 1), **vs_faiss,
         build_s=round(build, 2), **common)
    itemsize = {"float32": 4, "bfloat16": 2, "int8": 1}[index.dtype]
    stored = a.items * a.dim * itemsize + (4 * a.items if index.dtype == "int8" else 0)
    peak = peak_rss_bytes() - rss_before
    emit(method="memory", dtype=index.dtype, lazy_corpus=a.lazy_corpus, faiss=not a.no_faiss,
         stored_corpus_mb=round(stored / 2**20, 1), peak_rss_above_start_mb=round(peak / 2**20, 1),
         peak_over_stored=round(peak / stored, 3), rss_at_start_mb=round(rss_before / 2**20, 1), **common)
    if a.no_ivf:
        return

    t0 = time.perf_counter()
    index.build_ivf(a.lists)
    ivf_build = time.perf_counter() - t0
    chunks = index._ivf["chunks"]
    for frac in (int(v) for v in a.probes.split(",")):
        probe = max(1, chunks // frac)
        index.search(q, a.k, approximate=True, probe=probe)  # compile
        t_ap, (ap_ids, _) = best_time(lambda: index.search(q, a.k, approximate=True, probe=probe), a.repeats)
        recall = float(np.mean([len(set(g) & set(e)) / a.k for g, e in zip(ap_ids, exact_ids)]))
        emit(method="ItemIndex IVF", dtype=a.dtype, lists=index._ivf["n_lists"], chunk=index._ivf["chunk"],
             probe_chunks=probe, scanned_fraction=round(probe * index._ivf["chunk"] / a.items, 4),
             recall_at_k=round(recall, 4), qps=round(a.queries / t_ap, 1),
             **({"ratio_to_faiss_flat": round(t_faiss / t_ap, 2)} if t_faiss else {}),
             ivf_build_s=round(ivf_build, 1), **common)


if __name__ == "__main__":
    main()
