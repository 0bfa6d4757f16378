"""The JSON body of ``POST /recommend``, checked field by field (a bad field is a :class:`BadRequest` naming it).

    {"history": ["1193", 661, "914"],      # original item ids, oldest first (strings or integers)
     "timestamps": [978300760, ...],       # optional: unix seconds, one per history item
     "k": 10,                              # optional (the server's default k)
     "exclude_history": true,              # optional
     "unknown": "error",                   # optional: "error" (400) or "skip" unknown ids
     "actions": ["click", "view", ...],    # unified runs: each history event's action and surface (names)
     "surfaces": ["home", "search", ...],
     "scenario": "conversion:home",        # unified runs with scenario towers: "<label>:<surface>" (required)
     "candidates": "ads",                  # unified runs: "ads", "organic" or "all" (default: the label's pool)
     "user": "42",                         # long+short runs: the user id of the stored long-term table
     "repeat_weight": 0.2,                 # optional, with "exclude_history": false: the repeat prior's weight
     "quotas": {"per_advertiser": 3, "categories": {"Drama": {"min": 2, "max": 10}}}}  # optional
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from recsys_jax.data.event_examples import POOLS
from recsys_jax.retriever import UNKNOWN

FIELDS = ("history", "timestamps", "k", "exclude_history", "unknown", "actions", "surfaces", "scenario", "candidates",
          "user", "quotas", "repeat_weight")
MAX_HISTORY = 100_000
_INT32 = 2**31 - 1


class BadRequest(ValueError):
    """A request the server answers with 400: ``field`` names the bad field."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


@dataclass(frozen=True)
class RecommendRequest:
    history: list
    timestamps: list[int] | None
    k: int
    exclude_history: bool
    unknown: str
    scenario: str | None
    quotas: dict | None
    actions: list[str] | None = None
    surfaces: list[str] | None = None
    candidates: str | None = None
    user: str | int | None = None
    repeat_weight: float = 0.0


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_recommend(body: Any, *, default_k: int, max_k: int, unknown: str = "error") -> RecommendRequest:
    """A decoded JSON body -> :class:`RecommendRequest`; ``unknown``: the server's default policy."""
    if not isinstance(body, dict):
        raise BadRequest("body", f"expected a JSON object with fields {list(FIELDS)}, got {type(body).__name__}")
    for name in body:
        if name not in FIELDS:
            raise BadRequest(name, f"unknown field; expected some of {list(FIELDS)}")
    if "history" not in body:
        raise BadRequest("history", "missing: a list of item ids, oldest first")
    history = body["history"]
    if not isinstance(history, list) or not history:
        raise BadRequest("history", f"expected a non-empty list of item ids, got {history!r:.80}")
    if len(history) > MAX_HISTORY:
        raise BadRequest("history", f"{len(history)} items; at most {MAX_HISTORY}")
    for i, item in enumerate(history):
        if not (isinstance(item, str) or _is_int(item)):
            raise BadRequest("history", f"item {i} is {item!r:.40}: ids are strings or integers")
    ts = body.get("timestamps")
    if ts is not None:
        if not isinstance(ts, list) or len(ts) != len(history):
            raise BadRequest("timestamps", f"expected a list of {len(history)} integers (one per history item), "
                                           f"got {ts!r:.80}")
        for i, t in enumerate(ts):
            if not _is_int(t) or abs(t) > _INT32:
                raise BadRequest("timestamps", f"value {i} is {t!r:.40}: expected unix seconds (an int32 integer)")
    k = body.get("k", default_k)
    if not _is_int(k) or not 1 <= k <= max_k:
        raise BadRequest("k", f"expected an integer in [1, {max_k}], got {k!r:.40}")
    exclude = body.get("exclude_history", True)
    if not isinstance(exclude, bool):
        raise BadRequest("exclude_history", f"expected true or false, got {exclude!r:.40}")
    policy = body.get("unknown", unknown)
    if policy not in UNKNOWN:
        raise BadRequest("unknown", f"expected one of {list(UNKNOWN)}, got {policy!r:.40}")
    scenario = body.get("scenario")
    if scenario is not None and not isinstance(scenario, str):
        raise BadRequest("scenario", f"expected a scenario name (a string), got {scenario!r:.40}")
    per_event = {}
    for name in ("actions", "surfaces"):
        names = body.get(name)
        if names is not None and (not isinstance(names, list) or len(names) != len(history)
                                  or not all(isinstance(n, str) for n in names)):
            raise BadRequest(name, f"expected a list of {len(history)} names (one per history item), got {names!r:.80}")
        per_event[name] = names
    candidates = body.get("candidates")
    if candidates is not None and candidates not in POOLS:
        raise BadRequest("candidates", f"expected one of {list(POOLS)}, got {candidates!r:.40}")
    user = body.get("user")
    if user is not None and not (isinstance(user, str) or _is_int(user)):
        raise BadRequest("user", f"expected a user id (a string or an integer), got {user!r:.40}")
    repeat = body.get("repeat_weight", 0.0)
    if not (isinstance(repeat, (int, float)) and not isinstance(repeat, bool)) or not repeat >= 0:
        raise BadRequest("repeat_weight", f"expected a number >= 0, got {repeat!r:.40}")
    if repeat and exclude:
        raise BadRequest("repeat_weight", "boosts the items of the history: send \"exclude_history\": false")
    quotas = body.get("quotas")
    if quotas is not None and not isinstance(quotas, dict):
        raise BadRequest("quotas", f"expected an object like {{\"per_advertiser\": 3}}, got {quotas!r:.80}")
    return RecommendRequest(history, ts, k, exclude, policy, scenario, quotas, candidates=candidates, user=user,
                            repeat_weight=float(repeat), **per_event)
