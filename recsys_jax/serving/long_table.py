"""The stored long-term user table and long+short run folders.

A :class:`LongTable` is what the daily batch job writes: one row per user (the
:class:`~recsys_jax.models.long_term.LongTermEncoder` over the user's events strictly before ``as_of``),
saved as ``long_table.safetensors`` (``embeddings [U, D]`` float32, ``as_of [U]`` int64) plus
``long_table_users.json`` (original user ids, row order). 100M users x 64-d is 25.6 GB in float32
(12.8 GB bf16), see the README.

A run folder of ``recsys-jax longshort`` (:func:`save_run` / :func:`load_run`)::

    RUN_DIR/longshort.json        config, item / user id maps
    RUN_DIR/{long,short,both}/model.safetensors
    RUN_DIR/long_table.safetensors, long_table_users.json
    RUN_DIR/results.json          evaluation (long only / short only / both)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from core_jax.model_folder import save_safetensors
from core_jax.state_dict import empty_module, load_state_dict, to_state_dict
from recsys_jax.data.long_history import history_before, long_inputs
from recsys_jax.data.sequences import IdMap
from recsys_jax.models.hstu import HSTUConfig
from recsys_jax.models.long_short import LongShortConfig, LongShortHSTU
from recsys_jax.models.long_term import LongTermConfig, LongTermEncoder

RUN_FILE = "longshort.json"
MODELS = ("long", "short", "both")


@dataclasses.dataclass
class LongTable:
    """Per-user long-term embeddings: ``users`` (original ids, row order), ``embeddings [U, D]``, ``as_of [U]``."""

    users: list[str]
    embeddings: np.ndarray
    as_of: np.ndarray

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, np.float32)
        self.as_of = np.asarray(self.as_of, np.int64)
        if self.embeddings.shape[0] != len(self.users) or self.as_of.shape != (len(self.users),):
            raise ValueError(f"LongTable: {len(self.users)} users, embeddings {self.embeddings.shape}, as_of "
                             f"{self.as_of.shape}: expected one row each")
        self._row = {str(u): i for i, u in enumerate(self.users)}

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def __contains__(self, user) -> bool:
        return str(user) in self._row

    def lookup(self, users: Sequence, unknown: str = "error") -> np.ndarray:
        """``[len(users), D]`` rows; an unknown user is an error, or (``unknown="skip"``) a zero row (no long-term
        history: the model then relies on the recent events)."""
        out = np.zeros((len(users), self.dim), np.float32)
        for i, u in enumerate(users):
            row = self._row.get(str(u))
            if row is None:
                if unknown != "skip":
                    raise KeyError(f"user {u!r} is not in the long-term table ({len(self.users)} users); pass "
                                   "unknown='skip' to serve a user without long-term history (zero embedding)")
                continue
            out[i] = self.embeddings[row]
        return out

    def save(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        save_file({"embeddings": self.embeddings, "as_of": self.as_of}, os.path.join(folder, "long_table.safetensors"))
        with open(os.path.join(folder, "long_table_users.json"), "w") as f:
            json.dump([str(u) for u in self.users], f)

    @classmethod
    def load(cls, folder: str) -> "LongTable":
        path = os.path.join(folder, "long_table.safetensors")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found: expected a long-term table written by LongTable.save")
        t = load_file(path)
        with open(os.path.join(folder, "long_table_users.json")) as f:
            users = json.load(f)
        return cls(users, t["embeddings"], t["as_of"])


_encode = nnx.jit(lambda m, items, ts, as_of: m(items, ts, as_of, deterministic=True))


def encode_long(encoder: LongTermEncoder, batch: dict) -> jax.Array:
    """``[B, D]`` long-term embeddings (on device) of :func:`~recsys_jax.data.long_history.long_inputs` batch."""
    return _encode(encoder, jnp.asarray(batch["items"]), jnp.asarray(batch["timestamps"]), jnp.asarray(batch["as_of"]))


def build_long_table(encoder: LongTermEncoder, users: Sequence[str], items: Sequence[np.ndarray],
                     timestamps: Sequence[np.ndarray], as_of: np.ndarray, *, batch_size: int = 64) -> LongTable:
    """The table at cutoffs ``as_of [U]``: user ``u``'s row encodes only its events with timestamp ``< as_of[u]``
    (the most recent ``encoder.cfg.max_len``): the batch recomputation (e.g. daily, as_of = the day's start)."""
    as_of = np.asarray(as_of, np.int64)
    order = np.argsort([len(s) for s in items], kind="stable")  # similar lengths share a padded batch
    out = np.zeros((len(users), encoder.cfg.embed_dim), np.float32)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        hists = [history_before(items[u], timestamps[u], int(as_of[u]), encoder.cfg.max_len, encoder.cfg.skip_recent)
                 for u in idx]
        out[idx] = encode_long(encoder, long_inputs(hists, as_of[idx], encoder.cfg.max_len))
    return LongTable([str(u) for u in users], out, as_of)


def build_models(cfg: dict, num_items: int, rngs: nnx.Rngs | None = None) -> dict:
    """The run's three models (random init, or zero-filled for loading when ``rngs`` is None)."""
    long_cfg, hstu = LongTermConfig(**cfg["long"]), HSTUConfig(**cfg["hstu"])
    fusion = LongShortConfig(**{**cfg["fusion"], "long_dim": long_cfg.embed_dim})
    builders = {
        "long": lambda r: LongTermEncoder(long_cfg, num_items, rngs=r),
        "short": lambda r: LongShortHSTU(hstu, dataclasses.replace(fusion, fusion="none"), num_items, rngs=r),
        "both": lambda r: LongShortHSTU(hstu, fusion, num_items, rngs=r),
    }
    if rngs is None:
        return {k: empty_module(lambda b=b: b(nnx.Rngs(0))) for k, b in builders.items()}
    return {k: b(rngs) for k, b in builders.items()}


def save_run(run_dir: str, cfg: dict, models: dict, item_map: IdMap, user_map: IdMap, table: LongTable) -> None:
    os.makedirs(run_dir, exist_ok=True)
    for name, model in models.items():
        os.makedirs(os.path.join(run_dir, name), exist_ok=True)
        save_safetensors(to_state_dict(model), os.path.join(run_dir, name, "model.safetensors"))
    table.save(run_dir)
    with open(os.path.join(run_dir, RUN_FILE), "w") as f:
        json.dump({"config": cfg, "items": item_map.to_json(), "users": user_map.to_json()}, f)


def load_run(run_dir: str) -> tuple[dict, dict, IdMap, LongTable]:
    """``(config, {"long", "short", "both"} models, item id map, long table)`` of a run folder."""
    path = os.path.join(run_dir, RUN_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: expected a run folder of `recsys-jax longshort train`")
    with open(path) as f:
        meta = json.load(f)
    item_map = IdMap.from_json(meta["items"])
    models = build_models(meta["config"], len(item_map))
    for name, model in models.items():
        load_state_dict(model, load_file(os.path.join(run_dir, name, "model.safetensors")), what=name)
    return meta["config"], models, item_map, LongTable.load(run_dir)
