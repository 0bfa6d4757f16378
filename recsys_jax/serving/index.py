"""``ItemIndex``: item embeddings row-sharded over a mesh, searched by exact or approximate top-k.

``index = ItemIndex(embeddings, ids=None, dtype="float32", mesh=None)`` stores ``[N, D]``
embeddings (ids default to ``0..N-1``) as float32, bfloat16 or int8 with a per-row float32 scale,
with rows sorted by id and sharded by the ``items`` logical rule of the mesh (the rule the item table
uses; ``mesh=None``: all devices on the ``fsdp`` axis). ``ids, scores = index.search(queries, k, ...)``
takes and returns numpy arrays.

Memory: ``embeddings`` may be any ``[N, D]`` array that slices by rows (numpy, ``np.memmap``, jax); it
is read in chunks of rows straight into buffers made on the devices (each process reads only the rows
of its own devices), so building needs the stored table plus one chunk, and the index keeps no host
copy: it keeps a reference to ``embeddings`` instead, read again by :meth:`stored` and
:meth:`build_ivf` (do not modify it afterwards). With ``ids=None`` no per-item id arrays are made.

Semantics (the same on any mesh): the score of an item is ``<query, stored row>`` in float32
(int8: ``<query, int8 row> * scale``); results are sorted by score, **ties broken by the lower id**.
Filters run inside the same compiled program: ``exclude`` (per query, a list of ids; unknown ids are
ignored), ``mask`` (``[N]`` bool eligibility, aligned with ``embeddings``), ``groups`` (``[N]`` int,
e.g. the advertiser; < 0 = no group) with ``per_group_cap``: the result is the greedy walk down the
ranking that skips an item once ``per_group_cap`` items of its group were taken. The program takes
the top ``w`` candidates (``w = k + #excluded``, ``2k + #excluded`` with groups) and checks on the
way out that at least ``k`` survived the filters; if not, and there were more eligible items, it
runs again with ``w`` doubled, so the result is always exact. Slots that cannot be filled (fewer
than ``k`` eligible items) have id ``-1`` and score ``-inf``.

In a multi-process run every process calls ``search`` with the same arguments (SPMD) and gets the
whole result.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P, SingleDeviceSharding

from core_jax.mesh import DEFAULT_RULES, MeshConfig, logical_to_spec, make_mesh
from recsys_jax.serving import ivf
from recsys_jax.serving.topk import finish, merge_shards, shard_exact, shard_ivf

DTYPES = ("float32", "bfloat16", "int8")
_ALIASES = {"f32": "float32", "fp32": "float32", "bf16": "bfloat16"}


def _bucket(n: int, lo: int = 1) -> int:
    return max(lo, 1 << max(0, (n - 1).bit_length()))


def quantize(x: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """``(stored rows, per-row scale)`` of float32 rows ``x`` for a storage ``dtype``."""
    if dtype == "float32":
        return x.astype(np.float32), np.ones(len(x), np.float32)
    if dtype == "bfloat16":
        return x.astype(jnp.bfloat16), np.ones(len(x), np.float32)
    amax = np.abs(x).max(axis=1) if x.shape[1] else np.zeros(len(x), np.float32)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    return np.clip(np.rint(x / scale[:, None]), -127, 127).astype(np.int8), scale


_CHUNK = 1 << 15  # rows read from the source and converted at a time while building


@functools.lru_cache(maxsize=64)
def _filler(shape, dtype, fill, device):
    return jax.jit(lambda: jnp.full(shape, fill, dtype), out_shardings=SingleDeviceSharding(device))


def _device_buffer(shape, dtype, fill, device) -> jax.Array:
    """A ``shape`` array of ``fill`` made on ``device`` by XLA (no host copy of its size)."""
    return _filler(tuple(shape), jnp.dtype(dtype), fill, device)()


@functools.partial(jax.jit, donate_argnums=0)
def _write_rows(buf, rows, start):
    """``buf[start:start + len(rows)] = rows``, in place (``buf`` donated)."""
    return lax.dynamic_update_slice(buf, rows, (start,) + (0,) * (buf.ndim - 1))


class ItemIndex:
    def __init__(self, embeddings, ids=None, dtype: str = "float32", mesh: Mesh | None = None, *,
                 rules=None, block: int = 16384, group: int = 64, few: int = 32):
        # any [N, D] array that slices by rows (numpy, np.memmap, jax): read in chunks of rows, never
        # copied whole, so building takes the stored table plus a chunk (see _build_tables)
        x = embeddings if hasattr(embeddings, "shape") and hasattr(embeddings, "__getitem__") \
            else np.asarray(embeddings, dtype=np.float32)
        if len(x.shape) != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"embeddings must be a non-empty [N, D] array, got shape {tuple(x.shape)}")
        dtype = _ALIASES.get(dtype, dtype)
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES} (or f32/bf16), got {dtype!r}")
        n, d = (int(v) for v in x.shape)
        self._order = self._ids = None  # None: ids 0..N-1, stored rows in input order (no O(N) index arrays)
        if ids is not None:
            ids = np.asarray(ids)
            if ids.shape != (n,) or not np.issubdtype(ids.dtype, np.integer):
                raise ValueError(f"ids must be {n} integers (one per embedding row), got {ids.dtype} {ids.shape}")
            self._order = np.argsort(ids, kind="stable")  # stored row -> input row
            self._ids = ids[self._order].astype(np.int64)  # stored row -> id (ascending)
            if n > 1 and np.any(self._ids[1:] == self._ids[:-1]):
                dup = self._ids[1:][self._ids[1:] == self._ids[:-1]][0]
                raise ValueError(f"ids must be unique, id {dup} appears more than once")
        if block < 8:
            raise ValueError(f"block must be >= 8 rows, got {block}")
        self.num_items, self.dim, self.dtype = n, d, dtype
        self.group, self.few = group, few  # exact-search pruning (see topk.shard_exact)
        self.mesh = mesh if mesh is not None else make_mesh(MeshConfig(data=1, fsdp=-1))
        spec = logical_to_spec(("items", None), (self.mesh.devices.size, d), self.mesh,
                               rules if rules is not None else DEFAULT_RULES)
        self._axes = spec[0]
        names = () if self._axes is None else (self._axes,) if isinstance(self._axes, str) else self._axes
        self.shards = math.prod(self.mesh.shape[a] for a in names)
        per_shard = -(-n // self.shards)
        self.block = min(block, -(-per_shard // 8) * 8)
        self.rows = -(-n // (self.shards * self.block)) * self.shards * self.block
        self._row, self._mat = P(self._axes), P(self._axes, None)
        self._source = x  # read again by stored() and build_ivf(), chunk by chunk
        self._valid = np.arange(self.rows) < n
        self._table, self._scale = self._build_tables()
        self._valid_dev = self._put(self._valid, self._row)
        self._programs: dict = {}
        self._ivf = None

    @property
    def ids(self) -> np.ndarray:
        """Stored row -> item id (ascending)."""
        return np.arange(self.num_items, dtype=np.int64) if self._ids is None else self._ids

    # ---- placement -------------------------------------------------------------------------------
    def _put(self, host: np.ndarray, spec: P) -> jax.Array:
        """A global array from a host array every process holds whole (works multi-process too)."""
        return jax.make_array_from_callback(host.shape, NamedSharding(self.mesh, spec), lambda i: host[i])

    @staticmethod
    def _get(x: jax.Array) -> np.ndarray:
        return np.asarray(x) if x.is_fully_addressable else np.asarray(x.addressable_data(0))

    def _quantized(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Stored rows ``[start, stop)`` (stored order; rows past N are padding: zero, scale 1)."""
        m = max(0, min(stop, self.num_items) - start)
        idx = slice(start, start + m) if self._order is None else self._order[start:start + m]
        rows = np.asarray(self._source[idx], dtype=np.float32).reshape(m, self.dim)
        if not np.all(np.isfinite(rows)):
            bad = start + int(np.argmax(~np.all(np.isfinite(rows), axis=1)))
            where = f"row {bad}" if self._order is None else f"id {self._ids[bad]}"
            raise ValueError(f"embeddings contain NaN or inf (at {where})")
        stored, scale = quantize(rows, self.dtype)
        pad = stop - start - m
        if pad:
            stored = np.concatenate([stored, np.zeros((pad, self.dim), stored.dtype)])
            scale = np.concatenate([scale, np.ones(pad, np.float32)])
        return stored, scale

    def _build_tables(self) -> tuple[jax.Array, jax.Array]:
        """The sharded ``[rows, D]`` table and ``[rows]`` scale, built per device: a buffer made on the
        device, filled in place chunk by chunk from the source, so building holds the stored table plus
        one chunk. bfloat16 rows are stored as their uint16 bits and bitcast back per block inside the
        search (``topk._scores``): on a bfloat16 buffer XLA's CPU backend rewrites the whole buffer for
        each chunk written, and moves the float32 conversion of the whole table out of the search's
        block loop (a float32 copy of the corpus per search). Buffers made by XLA, not handed over from
        the host, also avoid a one-off copy at their first use."""
        store = jnp.uint16 if self.dtype == "bfloat16" else jnp.dtype(self.dtype)
        tables, scales = [], []
        mat, row = NamedSharding(self.mesh, self._mat), NamedSharding(self.mesh, self._row)
        for dev, index in mat.addressable_devices_indices_map((self.rows, self.dim)).items():
            lo, hi, _ = index[0].indices(self.rows)
            t = _device_buffer((hi - lo, self.dim), store, 0, dev)
            s = _device_buffer((hi - lo,), jnp.float32, 1, dev)
            step = min(_CHUNK, hi - lo)
            for start in range(lo, hi, step):
                start = min(start, hi - step)  # the last chunk overlaps: one chunk shape, one compile
                rows, scale = self._quantized(start, start + step)
                at = jax.device_put(np.int32(start - lo), dev)
                t = _write_rows(t, jax.device_put(rows.view(store), dev), at)
                s = _write_rows(s, jax.device_put(scale, dev), at)
            tables.append(t)
            scales.append(s)
        return (jax.make_array_from_single_device_arrays((self.rows, self.dim), mat, tables),
                jax.make_array_from_single_device_arrays((self.rows,), row, scales))

    def stored(self) -> np.ndarray:
        """The stored rows as float32 (dequantized), in the order of ``embeddings``: what is scored."""
        out = np.empty((self.num_items, self.dim), np.float32)
        for start in range(0, self.num_items, _CHUNK):
            stop = min(start + _CHUNK, self.num_items)
            rows, scale = self._quantized(start, stop)
            at = slice(start, stop) if self._order is None else self._order[start:stop]
            out[at] = rows.astype(np.float32) * scale[:, None]
        return out

    # ---- approximate index -----------------------------------------------------------------------
    def build_ivf(self, n_lists: int | None = None, *, chunk: int = 64, iters: int = 10, seed: int = 0):
        """Partition the items by k-means (``n_lists`` lists, default ~sqrt(N)) for ``approximate=True``.

        k-means runs ``iters`` Lloyd steps on a sample of 64 rows per list, then every item goes to
        its nearest centroid; each shard cuts its items into chunks of ``chunk`` rows by list.
        """
        x = self.stored() if self._order is None else self.stored()[self._order]  # stored order
        n_lists = n_lists or max(1, min(self.num_items, round(math.sqrt(self.num_items))))
        cent = ivf.kmeans(x, n_lists, iters=iters, seed=seed)
        pad = -(-self.num_items // 8192) * 8192
        lists = np.asarray(ivf.assign(jnp.asarray(np.pad(x, ((0, pad - len(x)), (0, 0)))), jnp.asarray(cent)))
        lists = np.where(self._valid, np.pad(lists[:self.num_items], (0, self.rows - self.num_items)), -1)
        rows, clist = ivf.chunk_layout(lists, self.shards, chunk)
        stored, scale = self._quantized(0, self.rows)
        safe = np.maximum(rows, 0)
        srows, sscale = stored[safe], scale[safe]
        self._ivf = dict(
            n_lists=n_lists, chunk=chunk, rows=rows, chunks=len(rows) // self.shards,
            centroids=self._put(cent, P()), table=self._put(srows, P(self._axes, None, None)),
            scale=self._put(sscale, self._mat), rows_dev=self._put(rows, self._mat),
            list_dev=self._put(clist, self._row), ok_dev=self._put(rows >= 0, self._mat),
            sizes=np.bincount(lists[lists >= 0], minlength=n_lists),
        )
        return self

    # ---- search ----------------------------------------------------------------------------------
    def _program(self, key):
        if key in self._programs:
            return self._programs[key]
        w, k, cap, has_ex, has_groups, approx, probe, qblock = key
        axes, mesh = self._axes, self.mesh
        rep, row, mat = P(), self._row, self._mat

        if approx:
            def local(q, cent, table, scale, ok, rows, clist):
                return tuple(a[None] for a in shard_ivf(q, cent, table, scale, ok, rows, clist, w=w,
                                                        probe=probe, qblock=qblock))
            in_specs = (rep, rep, P(axes, None, None), mat, mat, mat, row)
        else:
            def local(q, table, scale, ok):
                off = 0 if axes is None else jax.lax.axis_index(axes) * table.shape[0]
                return tuple(a[None] for a in shard_exact(q, table, scale, ok, off, w=w, block=self.block,
                                                                     group=self.group, few=self.few))
            in_specs = (rep, mat, row, row)
        per_shard = jax.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=(row, row), check_vma=False)

        def run(q, ex, groups, *data):
            s, r = merge_shards(*per_shard(q, *data), w)
            full = ~jnp.isneginf(s[:, -1])  # all w candidates real: there may be more eligible items
            g = jnp.where(r >= 0, groups[jnp.maximum(r, 0)], -1) if has_groups else None
            s, r, kept = finish(s, r, ex if has_ex else None, g, k=k, cap=cap)
            return s, r, kept, full

        fn = jax.jit(run)
        self._programs[key] = fn
        return fn

    def _exclude_rows(self, exclude, b: int, min_width: int = 0) -> np.ndarray:
        if len(exclude) != b:
            raise ValueError(f"exclude must hold one list of ids per query ({b}), got {len(exclude)}")
        rows = []
        for ex in exclude:
            ex = np.asarray(ex if ex is not None else [], dtype=np.int64).reshape(-1)
            if self._ids is None:
                at, found = ex, (ex >= 0) & (ex < self.num_items)
            else:
                at = np.searchsorted(self._ids, ex)
                found = (at < self.num_items) & (self._ids[np.minimum(at, self.num_items - 1)] == ex)
            rows.append(np.unique(at[found]))
        width = _bucket(max(len(r) for r in rows)) if any(len(r) for r in rows) else 0
        width = max(width, _bucket(min_width) if min_width else 0)
        out = np.full((b, width), -1, np.int32)
        for i, r in enumerate(rows):
            if len(r):
                out[i, width - len(r):] = r  # -1 padding first keeps each row sorted
        return out

    def _per_item(self, a, name: str, dtype) -> np.ndarray:
        a = np.asarray(a)
        if a.shape != (self.num_items,):
            raise ValueError(f"{name} must have shape [N={self.num_items}] (one per item), got {a.shape}")
        return (a if self._order is None else a[self._order]).astype(dtype)

    def search(self, queries, k: int, exclude: Sequence | None = None, mask=None, groups=None,
               per_group_cap: int | None = None, approximate: bool = False, probe: int | None = None,
               min_exclude: int = 0):
        """``(ids [B, k] int64, scores [B, k] float32)`` for ``queries`` [B, D]; see the module doc.

        ``min_exclude``: pad the per-query exclusion lists to at least this many slots (rounded up to
        a power of two), so that requests with shorter lists reuse one compiled program.

        ``approximate=True`` searches the IVF index (built on first use with :meth:`build_ivf`'s
        defaults) scanning ``probe`` chunks per shard (default: about 1/16 of the chunks).
        """
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries must be [B, D={self.dim}], got shape {np.shape(queries)}")
        if not (isinstance(k, (int, np.integer)) and 1 <= k <= self.num_items):
            raise ValueError(f"k must be an integer in [1, N={self.num_items}], got {k!r}")
        if (groups is None) != (per_group_cap is None):
            raise ValueError("groups and per_group_cap go together: give both or neither")
        if per_group_cap is not None and not (isinstance(per_group_cap, (int, np.integer)) and per_group_cap >= 1):
            raise ValueError(f"per_group_cap must be an integer >= 1, got {per_group_cap!r}")
        b = len(q)
        bp = _bucket(b, 8)
        qp = np.pad(q, ((0, bp - b), (0, 0)))
        ex = self._exclude_rows(exclude, b, min_exclude) if exclude is not None else np.zeros((b, 0), np.int32)
        ex = np.pad(ex, ((0, bp - b), (0, 0)), constant_values=-1)
        ok = self._valid
        if mask is not None:
            ok = ok & np.pad(self._per_item(mask, "mask", bool), (0, self.rows - self.num_items))
        g = (np.pad(self._per_item(groups, "groups", np.int32), (0, self.rows - self.num_items), constant_values=-1)
             if groups is not None else np.zeros(self.shards, np.int32))
        g_dev = self._put(g, self._row)
        if approximate:
            if self._ivf is None:
                self.build_ivf()
            v = self._ivf
            probe = probe or max(1, v["chunks"] // 16)
            need = -(-((2 * k if groups is not None else k) + ex.shape[1]) // v["chunk"])
            probe = min(max(probe, need), v["chunks"])
            ok_c = (v["ok_dev"] if mask is None else
                    self._put((v["rows"] >= 0) & ok[np.maximum(v["rows"], 0)], self._mat))
            data = (v["centroids"], v["table"], v["scale"], ok_c, v["rows_dev"], v["list_dev"])
            limit, qblock = probe * v["chunk"], min(16, bp)
        else:
            ok_dev = self._valid_dev if mask is None else self._put(ok, self._row)
            data = (self._table, self._scale, ok_dev)
            limit, qblock = self.rows, 0
        q_dev, ex_dev = self._put(qp, P()), self._put(ex, P())
        w = min(limit, (2 * k if groups is not None else k) + ex.shape[1])
        while True:
            key = (w, k, per_group_cap, ex.shape[1] > 0, groups is not None, bool(approximate), probe, qblock)
            s, r, kept, full = (self._get(a) for a in self._program(key)(q_dev, ex_dev, g_dev, *data))
            if w >= limit or not np.any((kept[:b] < k) & full[:b]):
                break
            w = min(limit, 2 * w)
        s, r = s[:b], r[:b]
        ids = np.where(r >= 0, r if self._ids is None else self._ids[np.maximum(r, 0)], -1).astype(np.int64)
        return ids, s
