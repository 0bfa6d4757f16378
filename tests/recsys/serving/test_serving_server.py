"""``recsys-jax serve``: a real aiohttp server on a free localhost port over the session's tiny trained run."""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

import aiohttp
import numpy as np
import pytest

from recsys_jax import Retriever
from recsys_jax.serving.server import BackgroundServer, RecommendService

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture(scope="module")
def retriever(recsys_run):
    return Retriever.from_checkpoint(recsys_run.run_dir, which="best")


@pytest.fixture(scope="module")
def server(retriever, recsys_run):
    service = RecommendService(retriever, checkpoint=recsys_run.run_dir, which="best", max_batch=8, max_wait_ms=20)
    srv = BackgroundServer(service)
    yield srv
    srv.stop()


def _history(recsys_run, user, n=10):
    ds = recsys_run.dataset
    rec = ds.sequence(user)
    return [ds.item_map.to_original(i) for i in rec["items"][-n:]], [int(t) for t in rec["timestamps"][-n:]]


async def _post_all(url, bodies, path="/recommend"):
    async with aiohttp.ClientSession() as s:
        async def one(body):
            data = body if isinstance(body, (str, bytes)) else json.dumps(body)
            async with s.post(url + path, data=data, headers={"Content-Type": "application/json"}) as r:
                return r.status, await r.json()
        return await asyncio.gather(*(one(b) for b in bodies))


def post_all(url, bodies, path="/recommend"):
    return asyncio.run(_post_all(url, bodies, path))


def get(url, path):
    async def go():
        async with aiohttp.ClientSession() as s, s.get(url + path) as r:
            return r.status, await r.json()
    return asyncio.run(go())


def test_concurrent_requests_equal_the_python_api(server, retriever, recsys_run):
    bodies = []
    for u in range(20):
        history, ts = _history(recsys_run, u, n=4 + u % 9)
        body = {"history": history, "timestamps": ts, "k": (5, 10, 20)[u % 3]}
        if u % 4 == 1:
            body["exclude_history"] = False
        if u % 5 == 2:
            body["quotas"] = {"categories": {sorted(retriever.categories)[0]: {"max": 1}}}
        if u % 6 == 3:
            body["history"] = history[:2] + ["not-an-item"] + history[2:]
            body["timestamps"] = ts[:2] + [0] + ts[2:]
            body["unknown"] = "skip"
        bodies.append(body)
    batches = server.service.batcher.batches
    answers = post_all(server.url, bodies)
    assert server.service.batcher.batches - batches < len(bodies)  # requests were batched together
    for body, (status, got) in zip(bodies, answers):
        assert status == 200, got
        items, scores = retriever.recommend(body["history"], body["timestamps"], k=body["k"],
                                            exclude_history=body.get("exclude_history", True),
                                            unknown=body.get("unknown", "error"), quotas=body.get("quotas"))
        assert got["items"] == items
        np.testing.assert_allclose(got["scores"], scores, rtol=1e-5, atol=1e-6)
        assert got["model"] == {"step": retriever.step, "which": "best", "version": 0}


BAD = [
    ("{not json", "body"),
    ([1, 2], "body"),
    ({"k": 5}, "history"),
    ({"history": []}, "history"),
    ({"history": "1,2"}, "history"),
    ({"history": [1.5]}, "history"),
    ({"history": ["18"], "histroy": ["18"]}, "histroy"),
    ({"history": ["no-such-item"]}, "history"),
    ({"history": ["no-such-item"], "unknown": "skip"}, "history"),  # empty after skipping
    ({"history": ["18"], "timestamps": [1, 2]}, "timestamps"),
    ({"history": ["18"], "timestamps": ["1"]}, "timestamps"),
    ({"history": ["18"], "k": 0}, "k"),
    ({"history": ["18"], "k": "5"}, "k"),
    ({"history": ["18"], "k": 999}, "k"),  # more than the model's items
    ({"history": ["18"], "unknown": "ignore"}, "unknown"),
    ({"history": ["18"], "exclude_history": "yes"}, "exclude_history"),
    ({"history": ["18"], "quotas": [3]}, "quotas"),
    ({"history": ["18"], "quotas": {"per_adv": 3}}, "quotas"),
    ({"history": ["18"], "quotas": {"categories": {"no-such-category": 1}}}, "quotas"),
    ({"history": ["18"], "scenario": "ads"}, "scenario"),
    ({"history": ["18"], "actions": ["click"]}, "actions"),  # a plain model reads no events
    ({"history": ["18"], "candidates": "ads"}, "candidates"),
]


def test_bad_requests_are_400_naming_the_field(server):
    answers = post_all(server.url, [b for b, _ in BAD])
    for (body, field), (status, got) in zip(BAD, answers):
        assert status == 400 and got["field"] == field, (body, status, got)
        assert got["error"]
    status, got = post_all(server.url, [{"history": ["18", "no-such-item"], "unknown": "skip", "k": 3}])[0]
    assert status == 200 and len(got["items"]) == 3
    assert "no-such-item" in post_all(server.url, [BAD[7][0]])[0][1]["error"]
    assert get(server.url, "/healthz")[0] == 200


def test_overload_is_503_and_the_server_keeps_serving(retriever, recsys_run):
    service = RecommendService(retriever, max_batch=1, max_queue=2, max_wait_ms=0, warmup=False)
    run_batch = service.batcher.process
    service.batcher.process = lambda reqs: (time.sleep(0.3), run_batch(reqs))[1]  # a slow model
    srv = BackgroundServer(service)
    try:
        history, ts = _history(recsys_run, 0)
        answers = post_all(srv.url, [{"history": history, "timestamps": ts}] * 10)
        codes = sorted(s for s, _ in answers)
        # the queued ones (max_queue=2) and any the batcher had already taken are answered
        assert set(codes) == {200, 503} and 2 <= codes.count(200) <= 4, codes
        assert all("overloaded" in a["error"] for s, a in answers if s == 503)
        service.batcher.process = run_batch
        status, got = post_all(srv.url, [{"history": history, "timestamps": ts}])[0]
        assert status == 200 and got["items"] == retriever.recommend(history, ts, k=10)[0]
        assert get(srv.url, "/healthz")[1]["queued"] == 0
    finally:
        srv.stop()


def test_reload_while_requests_are_in_flight_drops_none(retriever, recsys_run):
    latest = Retriever.from_checkpoint(recsys_run.run_dir, which="latest")
    steps = []
    loader = lambda path, which: (steps.append(which), Retriever.from_checkpoint(path, which=which))[1]  # noqa: E731
    service = RecommendService(retriever, checkpoint=recsys_run.run_dir, which="best", loader=loader, max_batch=4,
                               max_wait_ms=5)
    srv = BackgroundServer(service)
    try:
        history, ts = _history(recsys_run, 7)
        body = json.dumps({"history": history, "timestamps": ts, "k": 10})

        async def scenario():
            done = asyncio.Event()
            async with aiohttp.ClientSession() as s:
                async def client():
                    out, after = [], 0
                    while after < 5:  # until 5 requests after the reload answered
                        after += done.is_set()
                        async with s.post(srv.url + "/recommend", data=body) as r:
                            out.append((r.status, await r.json()))
                    return out

                async def reload():
                    await asyncio.sleep(0.2)
                    async with s.post(srv.url + "/reload", json={"which": "latest"}) as r:
                        got = r.status, await r.json()
                    done.set()
                    return got

                return await asyncio.gather(reload(), *(client() for _ in range(3)))

        (rs, rbody), *streams = asyncio.run(scenario())
        assert rs == 200 and rbody["version"] == 1 and rbody["step"] == latest.step and steps == ["latest"]
        answers = [a for stream in streams for a in stream]
        assert all(s == 200 for s, _ in answers), [a for s, a in answers if s != 200][:3]
        versions = [a["model"]["version"] for _, a in answers]
        assert versions.count(0) >= 3 and versions.count(1) >= 15  # answered before, during and after
        old, new = retriever.recommend(history, ts, k=10)[0], latest.recommend(history, ts, k=10)[0]
        for _, a in answers:  # each answer comes whole from one of the two models
            assert a["items"] == (old if a["model"]["version"] == 0 else new)
        status, last = post_all(srv.url, [json.loads(body)])[0]
        assert last["model"]["version"] == 1 and last["items"] == new
        status, err = post_all(srv.url, [{"checkpoint": "/no/such/run"}], path="/reload")[0]
        assert status == 400 and err["field"] == "checkpoint"
        assert get(srv.url, "/healthz")[1]["version"] == 1  # the old model keeps serving after a failed reload
    finally:
        srv.stop()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_answers_and_reloads_on_sighup(recsys_run):
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-m", "recsys_jax.cli", "serve", "--checkpoint", recsys_run.run_dir,
                             "--port", str(port), "--max-batch", "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 180
        while True:
            try:
                status, health = get(url, "/healthz")
                break
            except aiohttp.ClientError:
                assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() else "timeout"
                time.sleep(0.5)
        assert status == 200 and health["version"] == 0
        history, ts = _history(recsys_run, 2)
        status, got = post_all(url, [{"history": history, "timestamps": ts, "k": 4}])[0]
        assert status == 200 and len(got["items"]) == 4
        proc.send_signal(signal.SIGHUP)
        while get(url, "/healthz")[1]["version"] != 1:
            assert time.time() < deadline
            time.sleep(0.5)
        assert post_all(url, [{"history": history, "timestamps": ts, "k": 4}])[0][1]["items"] == got["items"]
    finally:
        proc.terminate()
        proc.wait(30)


def test_unified_run_requests_with_events_scenarios_and_pools(unified_served):
    """A unified run over HTTP: each request's actions / surfaces, scenario and candidate pool give the answers of
    the Python API (one batch mixing scenarios and pools); bad event fields are 400s naming the field."""
    _, r, q, _ = unified_served
    service = RecommendService(r, max_batch=8, max_wait_ms=50)  # warms up on the unified model
    srv = BackgroundServer(service)
    try:
        cases = [("conversion:home", None), ("conversion:search", None), ("ad_click:home", "organic"),
                 ("engagement:home", None), ("engagement:home", "ads"), ("conversion:home", "all")]
        bodies = [{**q, "scenario": s, "k": 5 + i, **({"candidates": c} if c else {})}
                  for i, (s, c) in enumerate(cases)]
        # the repeat prior (history kept): two weights in one batch
        bodies += [{**q, "scenario": "engagement:home", "k": 6, "exclude_history": False, "repeat_weight": w}
                   for w in (0.0, 0.5)]
        answers = post_all(srv.url, bodies)
        assert answers[-1][1]["items"] != answers[-2][1]["items"]  # the weight reached the ranking
        for body, (status, got) in zip(bodies, answers):
            assert status == 200, got
            items, scores = r.recommend(**q, scenario=body["scenario"], k=body["k"], candidates=body.get("candidates"),
                                        exclude_history=body.get("exclude_history", True),
                                        repeat_weight=body.get("repeat_weight", 0.0))
            assert got["items"] == items, body
            np.testing.assert_allclose(got["scores"], scores, rtol=1e-5, atol=1e-6)
        bad = [({**q}, "scenario"), ({**q, "scenario": "purchase:home"}, "scenario"),
               ({**q, "scenario": "conversion:home", "candidates": "promoted"}, "candidates"),
               ({**q, "scenario": "conversion:home", "actions": ["like"] * len(q["history"])}, "actions"),
               ({**q, "scenario": "conversion:home", "surfaces": ["home"]}, "surfaces"),
               ({k: v for k, v in q.items() if k != "actions"} | {"scenario": "conversion:home"}, "actions"),
               ({**q, "scenario": "conversion:home", "repeat_weight": 0.5}, "repeat_weight"),  # history excluded
               ({**q, "scenario": "conversion:home", "exclude_history": False, "repeat_weight": -1}, "repeat_weight")]
        for (body, field), (status, got) in zip(bad, post_all(srv.url, [b for b, _ in bad])):
            assert status == 400 and got["field"] == field, (body, got)
    finally:
        srv.stop()
