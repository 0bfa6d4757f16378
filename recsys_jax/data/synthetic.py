"""A built-in synthetic interaction log: the embedded default dataset (no download).

Generative story (deterministic for a seed):

* Items belong to categories (latent interests). Item popularity follows a Zipf law over a random
  global rank; a category's popularity is the sum of its items'. Within each category items form a
  random "series" order, so an item has a successor.
* Each user holds a few interests (categories, drawn by popularity) and a current one. The next item
  is, with ``p_successor``, the successor of the previous item (when it is in the current interest),
  else with ``p_in_interest`` a popular item of the current interest, else a globally popular item.
  A user never repeats an item.
* Activity comes in sessions: a few minutes between items, hours to days between sessions. At a
  session start the user may switch to another of their interests (``p_switch_session``) and may
  drift: one interest is replaced by a new category (``p_drift``). Inside a session switches are rare.

So the next item is mostly predictable from the recent items (their category, and the series
order), which a sequence model can learn and the most-popular baseline cannot.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recsys_jax.data.formats import Interaction

_ADJECTIVES = (
    "red", "blue", "green", "black", "white", "golden", "silver", "vintage", "modern", "classic", "sporty",
    "elegant", "rustic", "compact", "portable", "wireless", "organic", "handmade", "premium", "budget",
    "waterproof", "lightweight", "heavy-duty", "minimalist", "colorful", "retro", "smart", "eco-friendly",
    "luxury", "travel", "kids", "outdoor", "indoor", "professional", "cozy", "bold", "soft", "bright",
    "matte", "glossy",
)
_NOUNS = (
    "lamp", "jacket", "kettle", "novel", "headphones", "sneakers", "backpack", "watch", "mug", "blanket",
    "camera", "guitar", "serum", "puzzle", "tent", "keyboard", "scarf", "notebook", "speaker", "bottle",
)
_DAY = 86400


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    num_users: int = 2000
    num_items: int = 1000
    num_categories: int = 20
    scale: float = 1.0  # size knob: multiplies num_users and num_items
    min_len: int = 20
    max_len: int = 100
    interests_per_user: tuple[int, int] = (2, 4)  # inclusive range
    p_successor: float = 0.3
    p_in_interest: float = 0.8
    p_switch_session: float = 0.5
    p_switch: float = 0.03
    p_drift: float = 0.1
    zipf_exponent: float = 1.0
    session_len_mean: float = 6.0
    start_time: int = 1_600_000_000
    seed: int = 0

    @property
    def users(self) -> int:
        return max(1, int(round(self.num_users * self.scale)))

    @property
    def items(self) -> int:
        return max(1, int(round(self.num_items * self.scale)))

    def validate(self) -> None:
        lo, hi = self.interests_per_user
        problems = []
        if self.items < self.num_categories:
            problems.append(f"num_items*scale={self.items} must be >= num_categories={self.num_categories}")
        if not 1 <= self.min_len <= self.max_len:
            problems.append(f"need 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}")
        if self.max_len > self.items:
            problems.append(f"max_len={self.max_len} exceeds num_items*scale={self.items} (items never repeat)")
        if not 1 <= lo <= hi <= self.num_categories:
            problems.append(f"interests_per_user must satisfy 1 <= lo <= hi <= num_categories, got {(lo, hi)}")
        for name in ("p_successor", "p_in_interest", "p_switch_session", "p_switch", "p_drift"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if problems:
            raise ValueError("bad SyntheticConfig: " + "; ".join(problems))


@dataclasses.dataclass
class SyntheticData:
    interactions: list[Interaction]  # in global time order, ids "1".."U" / "1".."N"
    items: dict[str, dict]  # side info by original item id: title, category, tags, text
    item_category: np.ndarray  # [N + 1] category of item i (index 0 unused, -1)


class _Sampler:
    """Weighted draws without replacement per user: rejection on a CDF, exact fallback."""

    def __init__(self, ids: np.ndarray, weights: np.ndarray):
        self.ids = ids
        self.weights = weights / weights.sum()
        self.cdf = np.cumsum(self.weights)

    def draw(self, rng: np.random.Generator, seen: np.ndarray) -> int | None:
        for _ in range(16):
            j = min(int(np.searchsorted(self.cdf, rng.random() * self.cdf[-1], side="right")), len(self.ids) - 1)
            if not seen[self.ids[j]]:
                return int(self.ids[j])
        w = np.where(seen[self.ids], 0.0, self.weights)
        if w.sum() <= 0:
            return None
        return int(self.ids[rng.choice(len(self.ids), p=w / w.sum())])


def _item_catalog(cfg: SyntheticConfig, rng: np.random.Generator):
    n, k = cfg.items, cfg.num_categories
    category = np.empty(n + 1, np.int64)
    category[0] = -1
    category[1:] = rng.permutation(np.arange(n) % k)
    rank = rng.permutation(n) + 1
    weight = np.zeros(n + 1)
    weight[1:] = 1.0 / rank ** cfg.zipf_exponent
    successor = np.zeros(n + 1, np.int64)
    members = []
    for c in range(k):
        ids = np.flatnonzero(category == c)
        order = rng.permutation(ids)
        successor[order[:-1]] = order[1:]
        members.append(ids)
    tag_pool = [rng.choice(len(_ADJECTIVES), size=5, replace=False) for _ in range(k)]
    side = {}
    for i in range(1, n + 1):
        c = int(category[i])
        tags = [_ADJECTIVES[t] for t in rng.choice(tag_pool[c], size=2, replace=False)]
        extra = _ADJECTIVES[int(rng.integers(len(_ADJECTIVES)))]
        if extra not in tags:
            tags.append(extra)
        noun = _NOUNS[(c + int(rng.integers(2))) % len(_NOUNS)]
        title = f"{tags[0]} {noun} #{i}"
        side[str(i)] = {"title": title, "category": f"category-{c}", "tags": tags,
                        "text": f"category-{c} {noun} with tags {', '.join(tags)}"}
    return category, weight, successor, members, side


def generate(cfg: SyntheticConfig | None = None) -> SyntheticData:
    """Generate the interaction log and item side info for ``cfg`` (default: 2000 users, 1000 items)."""
    cfg = cfg or SyntheticConfig()
    cfg.validate()
    root = np.random.SeedSequence(cfg.seed)
    cat_seed, *user_seeds = root.spawn(1 + cfg.users)
    category, weight, successor, members, side = _item_catalog(cfg, np.random.default_rng(cat_seed))
    global_sampler = _Sampler(np.arange(1, cfg.items + 1), weight[1:])
    cat_samplers = [_Sampler(ids, weight[ids]) for ids in members]
    cat_weight = np.array([weight[ids].sum() for ids in members])
    cat_p = cat_weight / cat_weight.sum()

    events: list[tuple[int, int, int]] = []  # (timestamp, user, item)
    lo, hi = cfg.interests_per_user
    for u in range(cfg.users):
        rng = np.random.default_rng(user_seeds[u])
        span = cfg.max_len - cfg.min_len
        length = cfg.min_len + min(span, int(rng.exponential(span / 3.0))) if span else cfg.min_len
        interests = list(rng.choice(cfg.num_categories, size=int(rng.integers(lo, hi + 1)), replace=False, p=cat_p))
        current = interests[int(rng.integers(len(interests)))]
        seen = np.zeros(cfg.items + 1, bool)
        t = cfg.start_time + int(rng.integers(0, 180 * _DAY))
        session_left = int(rng.geometric(1.0 / cfg.session_len_mean))
        prev = 0
        for step in range(length):
            if step > 0 and session_left == 0:  # a new session
                t += 3600 + int(rng.exponential(2 * _DAY))
                session_left = int(rng.geometric(1.0 / cfg.session_len_mean))
                if rng.random() < cfg.p_drift:
                    fresh = [c for c in range(cfg.num_categories) if c not in interests]
                    if fresh:
                        p = cat_p[fresh] / cat_p[fresh].sum()
                        interests[int(rng.integers(len(interests)))] = int(rng.choice(fresh, p=p))
                        if current not in interests:
                            current = interests[int(rng.integers(len(interests)))]
                if rng.random() < cfg.p_switch_session:
                    current = interests[int(rng.integers(len(interests)))]
            elif step > 0:
                t += 30 + int(rng.exponential(240))
                if rng.random() < cfg.p_switch:
                    current = interests[int(rng.integers(len(interests)))]
            session_left -= 1
            r = rng.random()
            item = None
            nxt = successor[prev] if prev else 0
            if r < cfg.p_successor and nxt and category[prev] == current and not seen[nxt]:
                item = int(nxt)
            elif r < cfg.p_successor + (1 - cfg.p_successor) * cfg.p_in_interest:
                item = cat_samplers[current].draw(rng, seen)
            if item is None:
                item = global_sampler.draw(rng, seen)
            if item is None:  # every item seen (only with tiny catalogs)
                break
            seen[item] = True
            events.append((t, u + 1, item))
            prev = item
    events.sort()  # global time order, like a real log (ties: by user, then item)
    interactions = [Interaction(str(u), str(i), t, n, None) for n, (t, u, i) in enumerate(events, 1)]
    return SyntheticData(interactions, side, category)
