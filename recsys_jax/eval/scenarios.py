"""Per-scenario evaluation of unified (multi-label) runs: recall@k, NDCG@k and HR@k per (label, surface).

A **scenario** is what a request asks for: a label of the run (``unified.labels``, e.g. ``engagement``,
``ad_click``, ``conversion``: see :mod:`recsys_jax.data.event_examples`) and the surface the result is
shown on; its key is ``"<label>:<surface>"``. Its **candidate pool** is the label's (ads only for ad
labels, every item for organic ones): only pool items are ranked.

Examples (:func:`scenario_examples`), from each user's time-ordered events:

* ``leave_one_out``: the target is the last event (``split="validation"``: the one before), the
  history every event before it; the user is an example of every scenario the target event has (its
  labels, its surface), with one relevant item.
* ``time``: the history is every event before ``T`` (:func:`time_cutoff`), the targets the events in
  ``[T, T + window)``; the user is an example of scenario ``(l, s)`` when one of them has label ``l``
  on surface ``s``, and the relevant items are the distinct items of those events.

No input holds an event at or after the target (leave-one-out) or at or after ``T`` (time); the model
reads the last ``max_len`` history events. ``exclude_history``: items of the whole history are not
ranked (a relevant item among them is then a miss); else they are.

Metrics of an example from the top ``max(ks)`` pool items by score (ties: the lower item id first, as
served): ``recall@k`` = relevant items in the top ``k`` / relevant items; ``hr@k`` = whether any is;
``ndcg@k`` = DCG of the top ``k`` (binary relevance) / the ideal DCG (``min(k, #relevant)`` hits). With
one relevant item (leave-one-out) recall equals HR. Means over a scenario's examples (``count``). The
per-scenario **popularity** baseline ranks the pool by how often each item was a training target of the
scenario (same examples, exclusions and metrics). One process; scores are ``[batch, N + 1]`` at a time.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from core_jax.packing import packed_fields
from recsys_jax.data.attribution import parse_window
from recsys_jax.data.event_examples import INPUT_FIELDS, LabelTables, training_prefix
from recsys_jax.data.sequences import pad_sequence
from recsys_jax.eval.evaluate import last_real

SEP = ":"
PROTOCOLS = ("leave_one_out", "time")
DEFAULT_KS = (10, 50, 100)
_HIGHEST = jax.lax.Precision.HIGHEST


def scenario_name(label: str, surface: str) -> str:
    return f"{label}{SEP}{surface}"


def parse_scenario(scenario, labels: Sequence[str], surfaces: Sequence[str]) -> tuple[int, int]:
    """``("conversion", "home")`` or ``"conversion:home"`` -> ``(label code, surface code)``."""
    if isinstance(scenario, str):
        parts = scenario.split(SEP)
    elif isinstance(scenario, (tuple, list)):
        parts = list(scenario)
    else:
        raise ValueError(f"scenario must be (label, surface) or 'label{SEP}surface', got {scenario!r}")
    if len(parts) != 2:
        raise ValueError(f"scenario {scenario!r}: expected (label, surface) or 'label{SEP}surface', "
                         f"e.g. '{labels[0]}{SEP}{surfaces[0]}'")
    label, surface = (str(p).strip() for p in parts)
    if label not in labels:
        raise ValueError(f"scenario {scenario!r}: label {label!r} is not one of the run's labels {list(labels)}")
    if surface not in surfaces:
        raise ValueError(f"scenario {scenario!r}: surface {surface!r} is not one of the dataset's surfaces "
                         f"{list(surfaces)}")
    return list(labels).index(label), list(surfaces).index(surface)


def time_cutoff(dataset, quantile: float) -> int:
    """``T`` of a time split: the ``quantile`` (lower) of every stored event's timestamp (unix seconds)."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"the time-split cutoff is a quantile in (0, 1), got {quantile}")
    source = dataset.source
    stamps = [np.asarray(source[i]["timestamps"], np.int64) for i in range(len(source))]
    stamps = np.concatenate(stamps) if stamps else np.zeros(0, np.int64)
    if not len(stamps):
        raise ValueError(f"dataset {dataset.path} has no events")
    return int(np.quantile(stamps, quantile, method="lower"))


# ------------------------------------------------------------------------------------------------ examples


@dataclasses.dataclass
class ScenarioExamples:
    """One evaluation split: a history per user row and, per scenario ``(label, surface)``, its rows
    and each row's relevant items; ``train_counts[l, s]`` counts the scenario's training targets."""

    users: np.ndarray  # [U] user ids of the rows
    inputs: dict[str, np.ndarray]  # [U, max_len]: item_ids, timestamps (int32), actions, surfaces, is_ad
    history: np.ndarray  # [U, M] every history item (0: padding), for exclusion
    targets: dict[tuple[int, int], tuple[np.ndarray, list[np.ndarray]]]
    train_counts: np.ndarray  # [num_labels, num_surfaces, N + 1]
    protocol: str
    cutoff: int | None = None
    window: int | None = None


def scenario_examples(records, labels: LabelTables, *, num_surfaces: int, num_items: int, max_len: int,
                      protocol: str = "leave_one_out", split: str = "test", cutoff: int | None = None,
                      window: int | None = None, padding: str = "left") -> ScenarioExamples:
    """The examples of every scenario from ``records`` (a sequence of event records, oldest event
    first; see the module doc). ``cutoff`` / ``window`` (seconds): the time split's ``T`` and window."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol {protocol!r}: expected one of {list(PROTOCOLS)}")
    if protocol == "time":
        if cutoff is None or window is None or window <= 0:
            raise ValueError(f"the time protocol needs a cutoff and a window > 0, got {cutoff} and {window}")
        if split != "test":
            raise ValueError(f"the time protocol has one test window [T, T + window); split {split!r} is "
                             "leave-one-out only")
    elif split not in ("validation", "test"):
        raise ValueError(f"evaluation split must be 'validation' or 'test', got {split!r}")
    counts = np.zeros((len(labels), num_surfaces, num_items + 1), np.int64)
    users, inputs, history = [], {k: [] for k in ("item_ids", "timestamps") + INPUT_FIELDS}, []
    targets: dict[tuple[int, int], tuple[list, list]] = {}
    for i in range(len(records)):
        rec = records[i]
        n = len(rec["items"])
        if n == 0:
            continue
        missing = [k for k in ("timestamps",) + INPUT_FIELDS if k not in rec]
        if missing:
            raise ValueError(f"record of user {rec.get('user')} lacks the event fields {missing}: not an event dataset")
        items, surfaces = np.asarray(rec["items"]), np.asarray(rec["surfaces"], np.int64)
        m = training_prefix(rec, cutoff if protocol == "time" else None)
        if m >= 2:  # training targets: events 1..m-1 (position 0 is never a target)
            has = labels.target_labels(rec, slice(1, m), cutoff if protocol == "time" else None)
            for l in range(len(labels)):
                np.add.at(counts[l], (surfaces[1:m][has[:, l]], items[1:m][has[:, l]]), 1)
        if protocol == "time":
            start, end = m, int(np.searchsorted(np.asarray(rec["timestamps"]), cutoff + window, side="left"))
        else:
            if n < 3:
                continue
            start = n - 1 if split == "test" else n - 2
            end = start + 1
        if start == 0 or end <= start:
            continue
        has = labels.target_labels(rec, slice(start, end))
        t_items, t_surf = items[start:end], surfaces[start:end]
        row = len(users)
        found = False
        for l in range(len(labels)):
            for s in np.unique(t_surf[has[:, l]]).tolist():
                rel = np.unique(t_items[has[:, l] & (t_surf == s)]).astype(np.int64)
                rows, rels = targets.setdefault((l, int(s)), ([], []))
                rows.append(row)
                rels.append(rel)
                found = True
        if not found:
            continue
        users.append(int(rec.get("user", -1)))
        for key, field, dtype in (("item_ids", "items", np.int32), ("timestamps", "timestamps", np.int32),
                                  ("actions", "actions", np.int32), ("surfaces", "surfaces", np.int32),
                                  ("is_ad", "is_ad", bool)):
            inputs[key].append(pad_sequence(np.asarray(rec[field])[:start][-max_len:], max_len, padding=padding,
                                            dtype=dtype))
        history.append(items[:start])
    width = max([len(h) for h in history] + [1])
    hist = np.zeros((len(history), width), np.int32)
    for r, h in enumerate(history):
        hist[r, :len(h)] = h
    return ScenarioExamples(
        users=np.asarray(users, np.int64),
        inputs={k: (np.stack(v) if v else np.zeros((0, max_len), np.int32)) for k, v in inputs.items()},
        history=hist, targets={k: (np.asarray(r, np.int64), rel) for k, (r, rel) in sorted(targets.items())},
        train_counts=counts, protocol=protocol, cutoff=cutoff if protocol == "time" else None,
        window=window if protocol == "time" else None)


# ------------------------------------------------------------------------------------------------ metrics


@functools.partial(jax.jit, static_argnames=("k",))
def pool_top_k(user: jax.Array, table: jax.Array, allowed: jax.Array, exclude: jax.Array | None, k: int,
               history: jax.Array | None = None, repeat_weight: jax.Array | float = 0.0) -> jax.Array:
    """``[B, k]`` ids of the best ``allowed`` items (``[N + 1]`` bool) by ``<user, item>``, ``exclude``
    (``[B, M]`` ids, 0: none) removed; ties: the lower id first; -1 where fewer than ``k`` are eligible.
    ``history`` (``[B, M]`` ids, 0: none): the score is ``<user, item> + repeat_weight * log1p(count)``, ``count``
    the item's occurrences in the row's history (:mod:`recsys_jax.eval.repeat_prior`); ``repeat_weight`` ``[W]``:
    ``[W, B, k]``, one ranking per weight from one score matrix."""
    s = jnp.matmul(user.astype(jnp.float32), table.astype(jnp.float32).T, precision=_HIGHEST)
    s = jnp.where(allowed[None, :], s, -jnp.inf)
    if exclude is not None:
        s = s.at[jnp.arange(s.shape[0])[:, None], exclude].set(-jnp.inf)

    def top(scores):
        vals, ids = jax.lax.top_k(scores, k)
        return jnp.where(jnp.isneginf(vals), -1, ids)

    if history is None:
        return top(s)
    counts = jnp.zeros(s.shape, jnp.float32).at[jnp.arange(s.shape[0])[:, None], history].add(1.0)
    prior = jnp.log1p(counts.at[:, 0].set(0.0))
    w = jnp.asarray(repeat_weight, jnp.float32)
    return top(s + w * prior) if w.ndim == 0 else jax.lax.map(lambda x: top(s + x * prior), w)


def topk_metrics(top: np.ndarray, relevant: Sequence[np.ndarray], ks: Sequence[int]) -> dict[str, float]:
    """Sums over examples of ``recall@k``, ``ndcg@k``, ``hr@k`` and ``count``, from ranked ids ``top``
    ``[B, K]`` (-1: no item; ``K >= max(ks)`` or every eligible item) and each example's relevant ids."""
    top = np.asarray(top)
    if len(top) != len(relevant):
        raise ValueError(f"{len(top)} ranked lists but {len(relevant)} relevant sets")
    width = max([len(r) for r in relevant] + [1])
    rel = np.full((len(relevant), width), -2, np.int64)
    for i, r in enumerate(relevant):
        if len(r) == 0:
            raise ValueError(f"example {i} has no relevant item")
        rel[i, :len(r)] = r
    n_rel = np.asarray([len(r) for r in relevant], np.float64)
    hit = (top[:, :, None] == rel[:, None, :]).any(-1) & (top >= 0)
    disc = 1.0 / np.log2(np.arange(2, max(top.shape[1], *ks) + 2))
    out = {}
    for k in ks:
        h = hit[:, :k]
        n_hit = h.sum(1)
        ideal = np.cumsum(disc)[np.minimum(n_rel, k).astype(int) - 1]
        out[f"recall@{k}"] = float(np.sum(n_hit / n_rel))
        out[f"ndcg@{k}"] = float(np.sum((h * disc[:h.shape[1]]).sum(1) / ideal))
        out[f"hr@{k}"] = float(np.sum(n_hit > 0))
    out["count"] = float(len(top))
    return out


def rank_scenario(users: np.ndarray, table, allowed, exclude: np.ndarray | None, relevant, ks, batch_size: int,
                  history: np.ndarray | None = None, repeat_weight: float | Sequence[float] = 0.0):
    """Means of :func:`topk_metrics` over rows ``users`` ``[R, D]`` in fixed-size batches (``history``
    ``[R, M]`` and ``repeat_weight``: the repeat prior of :func:`pool_top_k`; a sequence of weights: one dict each)."""
    k = min(max(ks), int(table.shape[0]) - 1)
    grid = not np.isscalar(repeat_weight)
    weights = jnp.asarray(np.atleast_1d(repeat_weight), jnp.float32)
    sums: list[dict[str, float]] = [{} for _ in range(len(weights))]
    for start in range(0, len(users), batch_size):
        n = min(batch_size, len(users) - start)
        u = jnp.asarray(_pad_rows(users[start:start + n], batch_size))
        ex = None if exclude is None else jnp.asarray(_pad_rows(exclude[start:start + n], batch_size))
        if history is None:
            tops = np.asarray(pool_top_k(u, table, allowed, ex, k))[None]
        else:
            hist = jnp.asarray(_pad_rows(history[start:start + n], batch_size))
            tops = np.asarray(pool_top_k(u, table, allowed, ex, k, hist, weights))
        for total, top in zip(sums, tops):
            for key, v in topk_metrics(top[:n], relevant[start:start + n], ks).items():
                total[key] = total.get(key, 0.0) + v
    out = [{**{key: round(v / total["count"], 6) for key, v in total.items() if key != "count"},
            "count": int(total["count"])} for total in sums]
    return out if grid else out[0]


def _pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    """``x`` with its first row repeated up to ``size`` rows (one compiled shape for every batch)."""
    if len(x) == size:
        return x
    return np.concatenate([x, np.repeat(x[:1], size - len(x), axis=0)])


# ------------------------------------------------------------------------------------------------ the model


def trunk_outputs(model: nnx.Module, batch: Mapping[str, jax.Array], *, deterministic: bool) -> jax.Array:
    """``[B, L, D]`` the sequence encoder's outputs, with the event features the model reads (and the segments of
    packed rows: :mod:`core_jax.packing`)."""
    if getattr(model.cfg, "event_features", False):
        return model(batch["item_ids"], batch["timestamps"], deterministic=deterministic, actions=batch["actions"],
                     surfaces=batch["surfaces"], is_ad=batch["is_ad"], **packed_fields(batch))
    return model(batch["item_ids"], batch.get("timestamps"), deterministic=deterministic, **packed_fields(batch))


def scenario_users(model: nnx.Module, h: jax.Array, label, surface) -> jax.Array:
    """The scenario's user embeddings from trunk outputs ``h`` ``[B, D]`` (``h`` itself without a tower)."""
    if not getattr(model.cfg, "num_scenario_labels", 0):
        return h
    return model.scenario(h, label, surface if model.cfg.num_surfaces else None)


@nnx.jit
def _last_trunk(model, batch):
    return last_real(trunk_outputs(model, batch, deterministic=True), batch["item_ids"] > 0)


_scenario_users = nnx.jit(scenario_users)


@nnx.jit
def scenario_user_embeddings(model, batch, label, surface):
    """``[B, D]`` user embeddings of scenario ``(label, surface)`` (int32 codes) after each history of
    ``batch`` (``item_ids``, ``timestamps``, and the event fields the model reads; ``[B, L]``)."""
    h = last_real(trunk_outputs(model, batch, deterministic=True), batch["item_ids"] > 0)
    return scenario_users(model, h, label, surface)


def scenario_user_rows(model: nnx.Module, examples: ScenarioExamples, batch_size: int) -> dict:
    """``{(label, surface): [R, D]}`` the scenario's user embeddings of its example rows."""
    h = []
    for start in range(0, len(examples.users), batch_size):
        n = min(batch_size, len(examples.users) - start)
        batch = {k: jnp.asarray(_pad_rows(v[start:start + n], batch_size)) for k, v in examples.inputs.items()}
        h.append(np.asarray(_last_trunk(model, batch))[:n])
    h = np.concatenate(h) if h else np.zeros((0, 1), np.float32)
    out = {}
    for (l, s), (rows, _) in examples.targets.items():
        out[l, s] = np.concatenate([
            np.asarray(_scenario_users(model, jnp.asarray(_pad_rows(h[rows[i:i + batch_size]], batch_size)),
                                       jnp.int32(l), jnp.int32(s)))[:len(rows[i:i + batch_size])]
            for i in range(0, len(rows), batch_size)])
    return out


def evaluate_scenarios(model: nnx.Module, examples: ScenarioExamples, labels: LabelTables,
                       surfaces: Sequence[str], *, ks: Sequence[int] = DEFAULT_KS, exclude_history: bool = True,
                       batch_size: int = 256, popularity: bool = True,
                       repeat_weights: Mapping[str, float] | float | None = None) -> dict[str, dict]:
    """``{"scenarios": {"label:surface": metrics}, "popularity": {...}}`` of ``model`` on ``examples``;
    ``repeat_weights`` (scenario name -> weight, or one weight for all; history not excluded): also ``"repeat"``,
    the metrics of the model's scores fused with the repeat prior (:func:`pool_top_k`) and the weight of each."""
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    if repeat_weights is not None and exclude_history:
        raise ValueError("the repeat prior ranks the history's items: it needs the history kept in the ranking "
                         "(exclude_history=False, eval.exclude_history: false)")
    out: dict[str, dict] = {"scenarios": {}, "popularity": {}}
    if repeat_weights is not None:
        out["repeat"] = {}
    if not examples.targets:
        return out
    table = model.item_embeddings()
    ones = np.ones((batch_size, 1), np.float32)
    for (l, s), users in scenario_user_rows(model, examples, batch_size).items():
        rows, relevant = examples.targets[l, s]
        name = scenario_name(labels.names[l], surfaces[s])
        allowed = jnp.asarray(labels.pool[l])
        exclude = examples.history[rows] if exclude_history else None
        out["scenarios"][name] = rank_scenario(users, table, allowed, exclude, relevant, ks, batch_size)
        if popularity:
            pop = jnp.asarray(examples.train_counts[l, s].astype(np.float32)[:, None])
            out["popularity"][name] = rank_scenario(np.resize(ones, (len(rows), 1)), pop, allowed, exclude,
                                                    relevant, ks, batch_size)
        w = repeat_weights.get(name) if isinstance(repeat_weights, Mapping) else repeat_weights
        if w is not None:
            w = float(w)
            out["repeat"][name] = {"weight": w, **rank_scenario(users, table, allowed, None, relevant, ks, batch_size,
                                                                examples.history[rows], w)}
    if not popularity:
        del out["popularity"]
    return out


def run_examples(task, *, split: str = "test", records=None, cutoff: int | None = None) -> ScenarioExamples:
    """The examples of a unified run's split (``unified.split``); ``cutoff``: another ``T`` of its time split
    (default the run's); ``records``: these of the dataset's records only (default: all)."""
    cfg, ds = task.cfg, task.dataset
    sp = cfg.unified.split
    window = parse_window(sp.window) if sp.protocol == "time" else None
    return scenario_examples(ds.source if records is None else records, task.labels,
                             num_surfaces=len(ds.events["surfaces"]), num_items=task.num_items,
                             max_len=cfg.data.max_len, protocol=sp.protocol, split=split,
                             cutoff=task.cutoff if cutoff is None else cutoff, window=window, padding=cfg.data.padding)


def evaluate_run(task, model: nnx.Module, *, split: str = "test", ks: Sequence[int] | None = None,
                 exclude_history: bool | None = None, batch_size: int | None = None,
                 popularity: bool = True, records=None,
                 repeat_weights: Mapping[str, float] | float | None = None) -> dict:
    """Per-scenario metrics of a unified run (its task: :class:`recsys_jax.train.unified.UnifiedTask`, and
    the restored model) on its own split (``unified.split``); JSON-ready, with what was evaluated.
    ``records``: these of the dataset's records only (default: all; popularity then counts theirs);
    ``repeat_weights``: see :func:`evaluate_scenarios` (:func:`recsys_jax.eval.repeat_prior.choose_repeat_weights`)."""
    cfg = task.cfg
    sp, e, ds = cfg.unified.split, cfg.eval, task.dataset
    exclude_history = e.exclude_history if exclude_history is None else exclude_history
    examples = run_examples(task, split=split, records=records)
    res = evaluate_scenarios(model, examples, task.labels, ds.events["surfaces"], ks=ks or e.ks,
                             exclude_history=exclude_history, batch_size=batch_size or e.batch_size,
                             popularity=popularity, repeat_weights=repeat_weights)
    split_info = {"protocol": sp.protocol, "split": split} if sp.protocol == "leave_one_out" else {
        "protocol": "time", "cutoff": examples.cutoff, "window_seconds": examples.window}
    return {**split_info, "exclude_history": exclude_history, "users": len(examples.users),
            "pools": {lab.name: lab.pool for lab in cfg.unified.labels}, **res}
