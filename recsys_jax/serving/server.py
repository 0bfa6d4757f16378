"""``recsys-jax serve``: an aiohttp JSON API over a :class:`~recsys_jax.Retriever`, with micro-batching.

Routes:

* ``POST /recommend``: a body of :mod:`recsys_jax.serving.requests` -> ``{"items": [original ids],
  "scores": [...], "model": {"step", "which", "version"}}``. A bad field is a 400
  ``{"error", "field"}``; a full queue a 503 (``Retry-After: 1``); any other failure a 500 for that
  request only.
* ``GET /healthz``: the model loaded, queue depth, batches run.
* ``POST /reload`` (optional body ``{"checkpoint": RUN, "which": "auto"}``; SIGHUP does the same with
  the served run): load and warm up the new checkpoint beside the serving one, then swap it in
  between two batches. Requests are never dropped: every batch runs whole on one model.

Requests are micro-batched (:class:`~recsys_jax.serving.batcher.MicroBatcher`): one batch is one
forward pass of the model and one top-k search for its requests without quotas (at the largest ``k``
of the batch, rounded up to a power of two, then cut per request: the top ``k`` of a longer exact
ranking is the same list). Batches are padded to powers of two, so the programs compile once per
size (warmed up at start for every size up to ``max_batch``). A unified run's requests carry each event's
action and surface and a scenario, a long+short run's the user id of its long-term table: a batch runs one
forward pass per scenario in it, and one search per (scenario, candidate pool, exclude_history).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from collections.abc import Callable

import numpy as np
from aiohttp import web

from recsys_jax.retriever import EventInputError, Retriever, UnknownItemError, _bucket
from recsys_jax.serving.batcher import MicroBatcher, Overloaded
from recsys_jax.serving.candidates import parse_quotas
from recsys_jax.serving.requests import BadRequest, RecommendRequest, parse_recommend


class RecommendService:
    """The model being served, the batch function, and reloading.

    ``loader(checkpoint, which) -> Retriever`` (default :meth:`Retriever.from_checkpoint`) serves
    ``/reload``; ``checkpoint`` is the run folder it reloads by default (None: reload is refused).
    """

    def __init__(self, retriever: Retriever, *, checkpoint: str | None = None, which: str = "auto",
                 loader: Callable[[str, str], Retriever] | None = None, default_k: int = 10, max_k: int = 1000,
                 unknown: str = "error", max_batch: int = 32, max_wait_ms: float = 2.0, max_queue: int = 256,
                 warmup: bool = True):
        self._current = (retriever, 0)  # (model, version): swapped as one, read once per batch
        self.checkpoint, self.which = checkpoint, which
        self.loader = loader or (lambda path, which: Retriever.from_checkpoint(path, which=which))
        self.default_k, self.max_k, self.unknown = int(default_k), int(max_k), unknown
        self.max_batch, self.warm = int(max_batch), bool(warmup)
        self.batcher = MicroBatcher(self.run_batch, max_batch=max_batch, max_wait_ms=max_wait_ms, max_queue=max_queue)
        self._reload_lock: asyncio.Lock | None = None
        if self.warm:
            self.warmup(retriever)

    @property
    def retriever(self) -> Retriever:
        return self._current[0]

    @property
    def version(self) -> int:
        """+1 per reload."""
        return self._current[1]

    # ---- the batch function (worker thread) --------------------------------------------------------
    def warmup(self, r: Retriever) -> None:
        """Compile the model and the top-k program for every padded batch size up to ``max_batch``."""
        history = [r.item_map.to_original(i) for i in range(1, min(r.num_items, r.max_len) + 1)]
        events = {}
        if r.event_features:  # a unified run: any action / surface of its vocabularies
            events = {key: [r.events[key][0]] * len(history) for key in ("actions", "surfaces")}
        scenario = (0, 0) if r.scenario_tower else None
        k = min(r.num_items, _bucket(self.default_k))
        b = 1
        while True:
            rows = [r.prepare(history, **events)] * b
            long = None if r.long_table is None else np.zeros((b, r.long_table.dim), np.float32)
            r.rank(r.user_vectors(rows, scenario, long), rows, k)
            if b >= self.max_batch:
                break
            b *= 2

    @staticmethod
    def _prepare(r: Retriever, q: RecommendRequest):
        """``(prepared history, scenario code, candidate mask, long-term row or None)`` of one request; a bad field
        is a BadRequest."""
        if q.k > r.num_items:
            raise BadRequest("k", f"{q.k} is more than the model's {r.num_items} items")
        if q.quotas is not None:
            try:
                parse_quotas(q.quotas, q.k, r.categories)
            except ValueError as e:
                raise BadRequest("quotas", str(e)) from None
        try:
            code = r.scenario_code(q.scenario)
        except ValueError as e:
            raise BadRequest("scenario", str(e)) from None
        try:
            mask = r.candidate_mask(q.candidates, None if code is None else code[0])
        except ValueError as e:
            raise BadRequest("candidates", str(e)) from None
        try:
            row = r.prepare(q.history, q.timestamps, q.unknown, actions=q.actions, surfaces=q.surfaces)
        except EventInputError as e:
            raise BadRequest(e.field, str(e)) from None
        except (UnknownItemError, ValueError) as e:
            raise BadRequest("history", str(e)) from None
        try:
            long = r.long_rows(q.user, 1, False, q.unknown)
        except (KeyError, ValueError) as e:
            raise BadRequest("user", e.args[0]) from None
        return row, code, mask, long

    def run_batch(self, reqs: list[RecommendRequest]) -> list:
        r, version = self._current  # one model for the whole batch
        model = {"step": r.step, "which": r.which, "version": version}
        out: list = [None] * len(reqs)
        rows, live, codes, masks, longs = [], [], [], [], []
        for i, q in enumerate(reqs):
            try:
                row, code, mask, long = self._prepare(r, q)
            except BadRequest as e:
                out[i] = e
                continue
            rows.append(row)
            live.append(i)
            codes.append(code)
            masks.append(mask)
            longs.append(long)
        if not live:
            return out
        users = [None] * len(live)  # one forward pass per scenario in the batch
        for code in set(codes):
            js = [j for j, c in enumerate(codes) if c == code]
            long = None if r.long_table is None else np.concatenate([longs[j] for j in js])
            for j, u in zip(js, r.user_vectors([rows[j] for j in js], code, long)):
                users[j] = u
        users = np.stack(users)
        groups: dict = {}  # requests without quotas share one search per (exclude_history, scenario, candidates, w)
        for j, i in enumerate(live):
            q = reqs[i]
            if q.quotas is None:
                groups.setdefault((q.exclude_history, codes[j], q.candidates, q.repeat_weight), []).append(j)
            else:
                ((ids, scores, _),) = r.rank(users[j:j + 1], [rows[j]], q.k, exclude_history=q.exclude_history,
                                             quotas=q.quotas, mask=masks[j], repeat_weight=q.repeat_weight)
                out[i] = self._answer(r, ids, scores, model)
        for (exclude, _, _, repeat), js in groups.items():
            k = min(r.num_items, _bucket(max(reqs[live[j]].k for j in js)))
            ranked = r.rank(users[js], [rows[j] for j in js], k, exclude_history=exclude, mask=masks[js[0]],
                            repeat_weight=repeat)
            for j, (ids, scores, _) in zip(js, ranked):
                kk = reqs[live[j]].k
                out[live[j]] = self._answer(r, ids[:kk], scores[:kk], model)
        return out

    @staticmethod
    def _answer(r: Retriever, ids, scores, model) -> dict:
        return {"items": [r.item_map.to_original(i) for i in ids],
                "scores": [float(s) for s in np.asarray(scores, np.float32)], "model": model}

    # ---- reload ------------------------------------------------------------------------------------
    async def reload(self, checkpoint: str | None = None, which: str | None = None) -> dict:
        """Load ``checkpoint`` (default: the served run, its newest ``which`` checkpoint), warm it up
        off the serving thread, and swap it in between batches."""
        path = checkpoint or self.checkpoint
        if path is None:
            raise BadRequest("checkpoint", "this server was not started from a run folder: give one")
        if not os.path.isdir(path):
            raise BadRequest("checkpoint", f"no run folder at {path!r}")
        which = which or self.which
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            def load():
                r = self.loader(path, which)
                if self.warm:
                    self.warmup(r)
                return r
            new = await asyncio.get_running_loop().run_in_executor(None, load)
            self._current = (new, self.version + 1)  # the next batch runs on it
            self.checkpoint, self.which = path, which
        return {"status": "reloaded", **self.health()}

    def health(self) -> dict:
        r = self.retriever
        return {"checkpoint": self.checkpoint, "step": r.step, "which": r.which, "version": self.version,
                "items": r.num_items, "queued": self.batcher.queued, "max_queue": self.batcher.max_queue,
                "batches": self.batcher.batches}


def _error(status: int, message: str, field: str | None = None, **headers) -> web.Response:
    body = {"error": message} if field is None else {"error": message, "field": field}
    return web.json_response(body, status=status, headers=headers or None)


def make_app(service: RecommendService) -> web.Application:
    async def recommend(request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return _error(400, f"the body is not JSON: {e}", "body")
        try:
            req = parse_recommend(body, default_k=service.default_k, max_k=service.max_k, unknown=service.unknown)
            result = await service.batcher.submit(req)
        except BadRequest as e:
            return _error(400, e.message, e.field)
        except Overloaded as e:
            return _error(503, f"overloaded: {e}", None, **{"Retry-After": "1"})
        except Exception as e:  # noqa: BLE001  (one failed request, never the server)
            return _error(500, f"{type(e).__name__}: {e}")
        if isinstance(result, BadRequest):
            return _error(400, result.message, result.field)
        return web.json_response(result)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", **service.health()})

    async def reload(request: web.Request) -> web.Response:
        body = {}
        if request.can_read_body:
            try:
                body = await request.json()
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                return _error(400, f"the body is not JSON: {e}", "body")
            if not isinstance(body, dict) or set(body) - {"checkpoint", "which"}:
                return _error(400, "expected an object with optional 'checkpoint' and 'which'", "body")
            if body.get("which", "auto") not in ("auto", "best", "latest"):
                return _error(400, f"expected auto, best or latest, got {body['which']!r:.40}", "which")
        try:
            return web.json_response(await service.reload(body.get("checkpoint"), body.get("which")))
        except BadRequest as e:
            return _error(400, e.message, e.field)
        except Exception as e:  # noqa: BLE001  (the old model keeps serving)
            return _error(500, f"reload failed, still serving version {service.version}: {type(e).__name__}: {e}")

    async def on_startup(app):
        await service.batcher.start()

    async def on_cleanup(app):
        await service.batcher.stop()

    app = web.Application()
    app.add_routes([web.post("/recommend", recommend), web.get("/healthz", healthz), web.post("/reload", reload)])
    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    return app


def serve(service: RecommendService, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve until interrupted; SIGHUP reloads the served run's newest checkpoint."""
    async def on_startup(app):
        loop = asyncio.get_running_loop()

        def hup():
            async def go():
                try:
                    info = await service.reload()
                    print(f"reloaded: step {info['step']} ({info['which']}), version {info['version']}", flush=True)
                except Exception as e:  # noqa: BLE001
                    print(f"reload failed, still serving version {service.version}: {e}", flush=True)
            loop.create_task(go())

        loop.add_signal_handler(signal.SIGHUP, hup)

    app = make_app(service)
    app.on_startup.append(on_startup)
    web.run_app(app, host=host, port=port, print=lambda msg: print(msg, flush=True))


class BackgroundServer:
    """The app on ``host:port`` (0: a free port) in a thread of its own (tests, benchmarks): ``.url``, ``.stop()``."""

    def __init__(self, service: RecommendService, host: str = "127.0.0.1", port: int = 0):
        self.service = service
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(host, port), daemon=True)
        self._thread.start()
        if not self._ready.wait(60) or self.url is None:
            raise RuntimeError("the server did not start")

    def _run(self, host, port):
        asyncio.set_event_loop(self._loop)
        self.url = None
        self._runner = web.AppRunner(make_app(self.service))
        try:
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, host, port)
            self._loop.run_until_complete(site.start())
            sock = site._server.sockets[0].getsockname()
            self.url = f"http://{sock[0]}:{sock[1]}"
        finally:
            self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(60)
