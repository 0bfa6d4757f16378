"""Sequential user encoders with one interface.

Every model ``m`` built by :func:`build_model` provides::

    m(item_ids [B, L] int32 (0 = pad), timestamps [B, L] int (seconds), *, deterministic: bool)
        -> [B, L, D] user embedding per position (position i sees items <= i only;
           L2-normalised when config.l2_normalize; padded positions are zero)
    m.item_embeddings() -> [N + 1, D] (row 0 = padding, zero; same normalisation as the users)
    m.cfg, m.num_items
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Mapping

from flax import nnx

from recsys_jax.models.embeddings import TEXT_MODES, ItemTextConfig
from recsys_jax.models.hstu import HSTU, HSTUConfig
from recsys_jax.models.sasrec import SASRec, SASRecConfig
from recsys_jax.models.two_tower import TwoTower, TwoTowerConfig

MODELS: dict[str, tuple[type, type]] = {
    "hstu": (HSTU, HSTUConfig),
    "sasrec": (SASRec, SASRecConfig),
    "two_tower": (TwoTower, TwoTowerConfig),
}


def model_config(name: str, config: Any = None):
    """The config dataclass for model ``name`` from ``None`` (defaults), a mapping or an instance."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    cls = MODELS[name][1]
    if config is None:
        return cls()
    if isinstance(config, cls):
        return config
    if dataclasses.is_dataclass(config):
        raise TypeError(f"model {name!r} expects a {cls.__name__}, got {type(config).__name__}")
    if not isinstance(config, Mapping):
        raise TypeError(f"model config must be a {cls.__name__} or a mapping, got {type(config).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in config:
        if key not in fields:
            near = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {sorted(fields)}"
            raise ValueError(f"unknown key {key!r} for {cls.__name__}{hint}")
    values = dict(config)
    if "hidden_dims" in values:
        values["hidden_dims"] = tuple(values["hidden_dims"])
    return cls(**values)


def build_model(name: str, config: Any, num_items: int, rngs: nnx.Rngs, *, item_text: ItemTextConfig | None = None,
                text_table=None) -> nnx.Module:
    """Build model ``name`` ("hstu" | "sasrec" | "two_tower") for item ids ``1..num_items``; ``item_text`` and
    ``text_table`` ``[num_items + 1, item_text.dim]``: items represented with their text (see ItemTextConfig)."""
    cfg = model_config(name, config)
    model_cls = MODELS[name][0]
    if item_text is None or not item_text.enabled:
        return model_cls(cfg, num_items, rngs=rngs)  # the id-only model, exactly as before
    return model_cls(cfg, num_items, rngs=rngs, item_text=item_text, text_table=text_table)


__all__ = [
    "HSTU",
    "HSTUConfig",
    "ItemTextConfig",
    "MODELS",
    "SASRec",
    "SASRecConfig",
    "TEXT_MODES",
    "TwoTower",
    "TwoTowerConfig",
    "build_model",
    "model_config",
]
