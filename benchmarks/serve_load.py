"""Load test of ``recsys-jax serve`` on localhost: QPS and p50/p99 latency at concurrency 1, 4, 16, 64.

    python benchmarks/serve_load.py                 # 1M items, 20 s per concurrency level (~3 min)
    python benchmarks/serve_load.py --quick         # 10k items, 3 s per level (a smoke run)

The served model is an HSTU of width ``--dim`` (2 layers, 50-item window) with RANDOM weights over
``--items`` items: the item embeddings are random rows of the model's width (no training data of
that size here), which is what the top-k cost depends on. The server runs in a subprocess (the same
``RecommendService`` and aiohttp app as ``recsys-jax serve``, warmed up, ``--max-batch`` 64); the
client keeps ``c`` requests in flight (each of ``c`` workers posts its next request when the last is
answered), histories of 20 random items with timestamps, ``k`` = ``--k``, history excluded. Prints
one JSON line per level: requests answered per second, p50/p99/max latency in ms, 503s, the mean
batch size and the 1-minute load average (on a shared machine the absolute numbers move with it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def serve_random(a) -> None:
    """Child process: a random-weight HSTU over ``a.items`` items behind the real server."""
    from flax import nnx

    from recsys_jax.data.sequences import IdMap
    from recsys_jax.models import build_model
    from recsys_jax.retriever import Retriever
    from recsys_jax.serving.server import RecommendService, serve

    t0 = time.perf_counter()
    cfg = {"embed_dim": a.dim, "num_layers": 2, "num_heads": 1, "attention_dim": a.dim, "linear_dim": a.dim,
           "max_seq_len": 50, "dropout": 0.0}
    model = build_model("hstu", cfg, a.items, nnx.Rngs(0))
    r = Retriever(model, IdMap([None] + [str(i) for i in range(a.items)], offset=1), max_len=50,
                  uses_timestamps=True, index_dtype=a.dtype)
    service = RecommendService(r, default_k=a.k, max_batch=a.max_batch, max_wait_ms=a.max_wait_ms,
                               max_queue=a.max_queue)
    print(json.dumps({"server_ready_s": round(time.perf_counter() - t0, 1)}), flush=True)
    serve(service, host="127.0.0.1", port=a.port)


async def load_level(url: str, concurrency: int, seconds: float, warmup: float, items: int, k: int, seed: int):
    import aiohttp
    import numpy as np

    rng = np.random.default_rng(seed)
    now = 1_700_000_000
    bodies = [json.dumps({"history": [str(i) for i in rng.integers(0, items, 20)],
                          "timestamps": [now - 3600 * (20 - j) for j in range(20)], "k": k}) for _ in range(256)]
    lat, codes = [], {}
    conn = aiohttp.TCPConnector(limit=concurrency + 4)
    async with aiohttp.ClientSession(connector=conn) as s:
        async with s.get(url + "/healthz") as r:
            batches0 = (await r.json())["batches"]
        t_start = time.perf_counter()
        t_measure, t_end = t_start + warmup, t_start + warmup + seconds
        answered_before = [0]

        async def worker(w):
            i = w
            while (t := time.perf_counter()) < t_end:
                async with s.post(url + "/recommend", data=bodies[i % len(bodies)],
                                  headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    status = r.status
                done = time.perf_counter()
                i += concurrency
                if t >= t_measure:
                    lat.append(done - t)
                    codes[status] = codes.get(status, 0) + 1
                else:
                    answered_before[0] += 1

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - t_measure
        async with s.get(url + "/healthz") as r:
            batches = (await r.json())["batches"] - batches0
    lat_ms = np.sort(np.asarray(lat)) * 1000
    ok = codes.get(200, 0)
    total = answered_before[0] + len(lat)
    return {"concurrency": concurrency, "qps": round(ok / elapsed, 1), "p50_ms": round(float(np.percentile(lat_ms, 50)), 1),
            "p99_ms": round(float(np.percentile(lat_ms, 99)), 1), "max_ms": round(float(lat_ms[-1]), 1),
            "requests": len(lat), "status": {str(c): n for c, n in sorted(codes.items())},
            "mean_batch": round(total / max(batches, 1), 2), "seconds": round(elapsed, 1),
            "load_avg_1m": round(os.getloadavg()[0], 2)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "int8"))
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--concurrency", default="1,4,16,64")
    p.add_argument("--seconds", type=float, default=20.0, help="measured seconds per concurrency level")
    p.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each level")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--max-queue", type=int, default=256)
    p.add_argument("--quick", action="store_true", help="10k items, 3 s per level")
    p.add_argument("--port", type=int, default=0, help="(0: a free port)")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the server subprocess
    a = p.parse_args(argv)
    if a.quick:
        a.items, a.seconds, a.warmup = min(a.items, 10_000), 3.0, 1.0
    if a.serve:
        return serve_random(a)
    if not a.port:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            a.port = s.getsockname()[1]
    cmd = [sys.executable, os.path.abspath(__file__), "--serve", "--items", str(a.items), "--dim", str(a.dim),
           "--dtype", a.dtype, "--k", str(a.k), "--max-batch", str(a.max_batch), "--max-wait-ms", str(a.max_wait_ms),
           "--max-queue", str(a.max_queue), "--port", str(a.port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{a.port}"
    try:
        import urllib.request

        while True:  # ready when /healthz answers
            if proc.poll() is not None:
                raise SystemExit(f"the server exited:\n{proc.stdout.read()[-3000:]}")
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as r:
                    json.load(r)
                break
            except OSError:
                time.sleep(0.5)
        print(json.dumps({"items": a.items, "dim": a.dim, "dtype": a.dtype, "k": a.k, "max_batch": a.max_batch,
                          "max_wait_ms": a.max_wait_ms, "embeddings": "random (random-weight HSTU)",
                          "startup_s": round(time.perf_counter() - t0, 1), "cpus": os.cpu_count()}), flush=True)
        for c in (int(x) for x in a.concurrency.split(",")):
            print(json.dumps(asyncio.run(load_level(url, c, a.seconds, a.warmup, a.items, a.k, seed=c))), flush=True)
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
