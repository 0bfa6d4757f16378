"""Shared pieces of the sequential encoders: the item table, positions counted over real items, masks.

Conventions (all models):

* item ids are dense ints ``1..N``; ``0`` is padding. The table has ``N + 1`` rows and row 0 is kept
  at zero in :meth:`ItemEmbedding.table` output, so a padded id never contributes.
* Sequences may be padded on the LEFT or on the RIGHT, but the real items must form one contiguous
  block (no padding between real items). Absolute positions are counted from the FIRST REAL item
  (``cumsum(mask) - 1``), so the same sequence gets the same positions whichever side it is padded
  on, and a position only depends on earlier items (no look-ahead, same at training and serving).
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """``x / max(||x||, eps)`` over the last axis (zero rows stay zero, with finite gradients:
    the norm's own gradient is NaN at zero, so clamp the squared norm before the square root)."""
    sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def check_sequence_inputs(item_ids: jax.Array, timestamps: jax.Array | None, max_seq_len: int) -> None:
    """Shape checks done at trace time; raise ``ValueError`` naming what is wrong."""
    if item_ids.ndim != 2:
        raise ValueError(f"item_ids must be [batch, seq_len] int32, got shape {item_ids.shape}")
    if not jnp.issubdtype(item_ids.dtype, jnp.integer):
        raise ValueError(f"item_ids must be an integer array, got dtype {item_ids.dtype}")
    if item_ids.shape[1] > max_seq_len:
        raise ValueError(
            f"sequence length {item_ids.shape[1]} exceeds config.max_seq_len={max_seq_len}; "
            "truncate the history to the most recent max_seq_len items or raise max_seq_len"
        )
    if timestamps is not None and timestamps.shape != item_ids.shape:
        raise ValueError(
            f"timestamps must have the same shape as item_ids {item_ids.shape}, got {timestamps.shape}"
        )


def real_positions(mask: jax.Array) -> jax.Array:
    """Index of each position among the real items, counted from the first real one (pads: 0)."""
    m = mask.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(m, axis=-1) - 1, 0) * m


def causal_key_mask(mask: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """``[B, L, L]`` bool: query ``i`` may attend key ``j`` iff ``j <= i`` and ``j`` is a real item (and, in packed
    rows, of the same segment: :mod:`core_jax.packing`)."""
    length = mask.shape[-1]
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))
    keys = causal[None, :, :] & mask[:, None, :].astype(bool)
    if segment_ids is not None:
        keys = keys & (segment_ids[:, :, None] == segment_ids[:, None, :])
    return keys


ROW_MULTIPLE = 128  # the stored table's row count is padded to a multiple of this


TEXT_MODES = ("id", "sum", "gated", "concat_mlp", "text_only")


@dataclasses.dataclass(frozen=True)
class ItemTextConfig:
    """How an item's text embedding (frozen, e.g. MiniLM's 384-d; see :mod:`recsys_jax.data.item_text`)
    enters its representation. ``mode``:

    * ``id`` (default): the id embedding only: no text, no new parameters (the model of before);
    * ``sum``: ``id + P(text)``; ``gated``: ``g * id + (1 - g) * P(text)`` with ``g = sigmoid(W [id; P(text)])``
      per dimension; ``concat_mlp``: ``MLP([id; text])``; ``text_only``: ``P(text)`` (no id table);

    ``P`` is a two-layer MLP (``dim -> 2D -> D``, GELU). With text the id table starts at zero, so an item
    that no interaction trained (a cold item) is placed by its text alone.
    ``dim``: the text embedding width; ``path``: a ``[N + 1, dim]`` .npy (null: the dataset's own
    ``item_text.npy``, computed on first use); ``fields``: the side-info fields of the texts (null: title,
    genres, category, ...); ``id_dropout``: in training, the probability that an item's id embedding is left
    out (zeroed) in a step (sum / gated / concat_mlp), so the model learns to place items by their text alone
    as it must for cold items (DropoutNet, Volkovs et al. 2017); 0: off. ``text_loss_weight``: w > 0 adds
    ``w x`` the same next-item loss scored against the *text-only* table (every item as a cold item would be:
    the fused representation with its id left out, :meth:`ItemEmbedding.table` ``text_only=True``), so the
    user embedding also retrieves items by their text alone (fused modes only); 0: off. ``profile_weight``:
    w > 0 adds, at inference only (``deterministic=True``: evaluation, serving), ``w x`` the cosine between the
    user's *text profile* (the sum of the unit text embeddings of its last ``profile_len`` items) and an
    item's unit text embedding to the model's score (late fusion, no training: how a cold item with no
    interactions still ranks by what the user watched); choose w on the validation split."""

    mode: Literal["id", "sum", "gated", "concat_mlp", "text_only"] = "id"
    dim: int = 384
    path: str | None = None
    fields: tuple[str, ...] | None = None
    id_dropout: float = 0.0
    text_loss_weight: float = 0.0
    profile_weight: float = 0.0
    profile_len: int = 5

    def __post_init__(self):
        if self.mode not in TEXT_MODES:
            raise ValueError(f"item_text.mode {self.mode!r}: expected one of {list(TEXT_MODES)}")
        if self.dim < 1:
            raise ValueError(f"item_text.dim must be >= 1, got {self.dim}")
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"item_text.id_dropout must be in [0, 1), got {self.id_dropout}")
        if self.id_dropout and self.mode in ("id", "text_only"):
            raise ValueError(f"item_text.id_dropout applies to the modes that fuse id and text, not {self.mode!r}")
        if self.text_loss_weight < 0.0:
            raise ValueError(f"item_text.text_loss_weight must be >= 0, got {self.text_loss_weight}")
        if self.text_loss_weight and self.mode in ("id", "text_only"):
            raise ValueError(f"item_text.text_loss_weight applies to the modes that fuse id and text, not {self.mode!r}")
        if self.profile_weight < 0.0 or self.profile_len < 1:
            raise ValueError(f"item_text.profile_weight must be >= 0 and profile_len >= 1, got "
                             f"{self.profile_weight} and {self.profile_len}")
        if self.profile_weight and self.mode == "id":
            raise ValueError("item_text.profile_weight needs item text (item_text.mode is 'id')")
        if self.fields is not None and not isinstance(self.fields, tuple):
            object.__setattr__(self, "fields", tuple(self.fields))

    @property
    def enabled(self) -> bool:
        return self.mode != "id"


class ItemTextTable(nnx.Variable):
    """Frozen item text embeddings ``[rows, T]`` (not an ``nnx.Param``: never trained; checkpointed with the
    run, so serving needs no dataset)."""


def _rows(num_items: int) -> int:
    return -(-(num_items + 1) // ROW_MULTIPLE) * ROW_MULTIPLE


class _MLP(nnx.Module):
    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        hidden = 2 * dout
        self.fc1 = nnx.Linear(din, hidden, rngs=rngs,
                              kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "mlp")),
                              bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("mlp",)))
        self.fc2 = nnx.Linear(hidden, dout, rngs=rngs,
                              kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("mlp", "embed")),
                              bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x)))


class ItemEmbedding(nnx.Module):
    """``[N + 1, D]`` item table, row-sharded with logical axes ``("items", "embed")``.

    The parameter is stored with its rows padded up to a multiple of :data:`ROW_MULTIPLE`, so it
    row-shards over any power-of-two shard count up to 128 whatever ``N`` is (a dimension the mesh
    does not divide would stay replicated); the padding rows are never read: :meth:`table` returns
    the first ``N + 1`` rows. The padding is independent of the mesh, so checkpoints restore anywhere.

    With ``text`` (an :class:`ItemTextConfig` whose mode is not ``id``) and ``text_table``
    (``[N + 1, text.dim]``; zeros are fine when a checkpoint is restored over it) an item's
    representation fuses its id embedding with its text (see :class:`ItemTextConfig`), in the input
    tokens and in the output table alike.
    """

    def __init__(self, num_items: int, dim: int, *, rngs: nnx.Rngs, init_std: float = 0.02,
                 text: ItemTextConfig | None = None, text_table=None):
        if num_items < 1:
            raise ValueError(f"num_items must be >= 1 (ids are 1..num_items), got {num_items}")
        if dim < 1:
            raise ValueError(f"embedding dim must be >= 1, got {dim}")
        self.num_items = num_items
        self.mode = text.mode if text is not None else "id"
        rows = _rows(num_items)
        if self.mode != "text_only":
            # with text, ids start at zero: an item no interaction ever trained (a cold item) is its text alone
            base = nnx.initializers.truncated_normal(stddev=init_std) if self.mode == "id" else \
                nnx.initializers.zeros_init()
            init = nnx.with_partitioning(base, ("items", "embed"))
            self.embedding = nnx.Param(init(rngs.params(), (rows, dim), jnp.float32))
        if self.mode == "id":
            return
        if text_table is None:
            raise ValueError(f"item_text.mode={self.mode!r} needs the item text table ([{num_items + 1}, {text.dim}])")
        table = jnp.asarray(text_table, jnp.float32)
        if table.shape != (num_items + 1, text.dim):
            raise ValueError(f"item text table has shape {tuple(table.shape)}; expected [{num_items + 1}, {text.dim}] "
                             "(num_items + 1 rows by dense id, item_text.dim columns)")
        table = jnp.pad(table.at[0].set(0.0), ((0, rows - num_items - 1), (0, 0)))
        self.text = ItemTextTable(table, out_sharding=("items", None))
        if text.id_dropout:
            self.id_dropout = nnx.Dropout(text.id_dropout, rngs=rngs)
        if self.mode == "concat_mlp":
            self.fuse = _MLP(dim + text.dim, dim, rngs=rngs)
        else:
            self.project = _MLP(text.dim, dim, rngs=rngs)
        if self.mode == "gated":
            self.gate = nnx.Linear(2 * dim, dim, rngs=rngs,
                                   kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "embed")),
                                   bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(), ("embed",)))

    def _fused(self, ids_emb: jax.Array | None, text: jax.Array) -> jax.Array:
        if self.mode == "concat_mlp":
            return self.fuse(jnp.concatenate([ids_emb, text], axis=-1))
        t = self.project(text)
        if self.mode == "sum":
            return ids_emb + t
        if self.mode == "gated":
            g = jax.nn.sigmoid(self.gate(jnp.concatenate([ids_emb, t], axis=-1)))
            return g * ids_emb + (1.0 - g) * t
        return t  # text_only

    def _fused_rows(self, rows, deterministic: bool, text_only: bool = False) -> jax.Array:
        """The fused representation of ``rows`` (an id array, or a slice of the table); ``text_only``: with every
        id left out (how a cold item is represented)."""
        take = (lambda v: v[rows]) if isinstance(rows, slice) else (lambda v: jnp.take(v, rows, axis=0))  # noqa: E731
        ids = take(self.embedding[...]) if self.mode != "text_only" else None
        if text_only and ids is not None:
            ids = jnp.zeros_like(ids)
        elif hasattr(self, "id_dropout") and not deterministic:  # whole id rows left out (no rescaling)
            keep = self.id_dropout(jnp.ones((*ids.shape[:-1], 1), ids.dtype), deterministic=False) > 0
            ids = jnp.where(keep, ids, 0.0)
        return self._fused(ids, take(self.text[...]))

    def table(self, normalize: bool, deterministic: bool = True, text_only: bool = False) -> jax.Array:
        """The ``[N + 1, D]`` table with row 0 zeroed, L2-normalised per row when ``normalize``
        (``deterministic=False``: training, with ``item_text.id_dropout``; ``text_only``: every item placed by
        its text alone, as a cold item is: needs a mode with text)."""
        n = self.num_items + 1
        if text_only and self.mode == "id":
            raise ValueError("a text-only item table needs item text (item_text.mode is 'id')")
        t = self.embedding[...][:n] if self.mode == "id" else self._fused_rows(slice(0, n), deterministic, text_only)
        not_pad = (jnp.arange(t.shape[0]) > 0)[:, None]
        t = jnp.where(not_pad, t, 0.0)
        return l2_normalize(t) if normalize else t

    def unit_text(self) -> jax.Array:
        """``[N + 1, T]`` the item text embeddings, L2-normalised per row, row 0 zero."""
        t = l2_normalize(self.text[...][: self.num_items + 1])
        return t.at[0].set(0.0)

    def text_profile(self, item_ids: jax.Array, length: int) -> jax.Array:
        """``[B, L, T]``: at each position, the unit sum of the unit text embeddings of the last ``length`` items
        up to it (padding counts as nothing; zero where there is none)."""
        rows = jnp.take(self.unit_text(), item_ids, axis=0)
        profile = rows
        for shift in range(1, min(length, item_ids.shape[1])):
            profile = profile + jnp.pad(rows, ((0, 0), (shift, 0), (0, 0)))[:, : item_ids.shape[1]]
        return l2_normalize(profile)

    def __call__(self, item_ids: jax.Array, deterministic: bool = True) -> jax.Array:
        """Raw embeddings of ``item_ids`` (any shape), zero at padding (id 0). With text, the fused rows: of the
        whole table and gathered when there are more ids than items (fewer MLP rows), else of the ids."""
        if self.mode == "id":
            emb = jnp.take(self.embedding[...], item_ids, axis=0)
        elif item_ids.size > self.num_items:
            emb = jnp.take(self._fused_rows(slice(0, self.num_items + 1), deterministic), item_ids, axis=0)
        else:
            emb = self._fused_rows(item_ids, deterministic)
        return jnp.where((item_ids > 0)[..., None], emb, 0.0)


class PositionalEmbedding(nnx.Module):
    """Learnable absolute position embedding indexed by :func:`real_positions`."""

    def __init__(self, max_seq_len: int, dim: int, *, rngs: nnx.Rngs):
        init = nnx.with_partitioning(
            nnx.initializers.truncated_normal(stddev=dim**-0.5), (None, "embed")
        )
        self.embedding = nnx.Param(init(rngs.params(), (max_seq_len, dim), jnp.float32))

    def __call__(self, mask: jax.Array, positions: jax.Array | None = None) -> jax.Array:
        """``positions``: given ones (packed rows: each segment counts from its start), else :func:`real_positions`."""
        return jnp.take(self.embedding[...], real_positions(mask) if positions is None else positions, axis=0)


class EventEmbedding(nnx.Module):
    """What an event adds to its item's input token: ``action_emb[action] + surface_emb[surface]
    (+ is_ad * ad_emb)`` (``[B, L, D]``; zero at padding when the caller masks it).

    A table is only created for a feature that is on (``num_actions`` / ``num_surfaces`` > 0,
    ``use_is_ad``), so a model without event features has exactly the parameters it had before.
    Codes are those of the dataset's vocabularies (``events.json``); a code outside ``[0, size)`` is
    clipped by ``jnp.take`` (check the vocabulary against the config before training: see the task).
    """

    def __init__(self, dim: int, *, num_actions: int, num_surfaces: int, use_is_ad: bool, rngs: nnx.Rngs):
        if num_actions < 0 or num_surfaces < 0:
            raise ValueError(f"num_actions and num_surfaces must be >= 0 (0: off), got {num_actions}, {num_surfaces}")
        init = nnx.with_partitioning(nnx.initializers.truncated_normal(stddev=dim**-0.5), (None, "embed"))
        self.features = tuple(n for n, on in (("actions", num_actions), ("surfaces", num_surfaces),
                                              ("is_ad", use_is_ad)) if on)
        if num_actions:
            self.action = nnx.Param(init(rngs.params(), (num_actions, dim), jnp.float32))
        if num_surfaces:
            self.surface = nnx.Param(init(rngs.params(), (num_surfaces, dim), jnp.float32))
        if use_is_ad:
            self.ad = nnx.Param(init(rngs.params(), (1, dim), jnp.float32))

    def __call__(self, shape: tuple[int, ...], actions: jax.Array | None, surfaces: jax.Array | None,
                 is_ad: jax.Array | None) -> jax.Array:
        given = {"actions": actions, "surfaces": surfaces, "is_ad": is_ad}
        missing = [n for n in self.features if given[n] is None]
        if missing:
            raise ValueError(f"this model embeds event features {list(self.features)}: pass {missing} "
                             f"([batch, seq_len] arrays like item_ids)")
        for n in self.features:
            if tuple(given[n].shape) != tuple(shape):
                raise ValueError(f"{n} must have the shape of item_ids {tuple(shape)}, got {tuple(given[n].shape)}")
        out = 0.0
        if "actions" in self.features:
            out = out + jnp.take(self.action[...], actions.astype(jnp.int32), axis=0)
        if "surfaces" in self.features:
            out = out + jnp.take(self.surface[...], surfaces.astype(jnp.int32), axis=0)
        if "is_ad" in self.features:
            out = out + is_ad.astype(jnp.float32)[..., None] * self.ad[...][0]
        return out
