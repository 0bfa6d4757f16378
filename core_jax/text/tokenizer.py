"""Text tokenizers built from the files that ship with a checkpoint (``tokenizers`` library underneath).

``Tokenizer.from_folder(folder)`` reads, in this order:

* ``tokenizer.json`` when present (any model: CLIP, BERT/MiniLM, ...), else
* CLIP's ``vocab.json`` + ``merges.txt`` (a diffusers ``tokenizer/`` folder), assembled into CLIP's
  byte-level BPE pipeline (NFC, whitespace squeeze, lowercase, CLIP's split regex, ``</w>`` word suffix),

plus ``tokenizer_config.json`` / ``special_tokens_map.json`` for the special tokens and
``model_max_length``. As in transformers, ``special_tokens_map.json`` wins over ``tokenizer_config.json``
unless the latter lists ``added_tokens_decoder`` (files written by recent transformers), which is how
SD2 / SDXL's second tokenizer pads with ``"!"`` (id 0) while SD1's pads with ``<|endoftext|>``.

Calling the tokenizer pads and truncates like transformers' ``padding="max_length", truncation=True``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
_CLIP_DEFAULTS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                  "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
# CLIP's word split: its two special tokens, English contractions, letter runs, single digits, punctuation runs.
_CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
_NO_LIMIT = 10**9  # transformers writes a huge sentinel (1e30) when a tokenizer has no length limit


def _token_text(value) -> str | None:
    """A special token as written in the config files: a string or a serialised AddedToken dict."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and "content" in value:
        return value["content"]
    raise ValueError(f"special token entry {value!r}: expected a string or a dict with 'content'")


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _special_tokens(folder: Path) -> tuple[dict[str, str], dict]:
    """Special tokens (bos/eos/pad/...) and the raw tokenizer_config.json of a checkpoint folder."""
    config = _read_json(folder / "tokenizer_config.json")
    tokens = {k: _token_text(config.get(k)) for k in _SPECIAL_KEYS}
    if "added_tokens_decoder" not in config:
        for k, v in _read_json(folder / "special_tokens_map.json").items():
            if k in _SPECIAL_KEYS:
                tokens[k] = _token_text(v)
    return {k: v for k, v in tokens.items() if v is not None}, config


def _clip_backend(vocab_file: Path, merges_file: Path, specials: dict[str, str]) -> tokenizers.Tokenizer:
    """CLIP's byte-level BPE from ``vocab.json`` + ``merges.txt``."""
    with open(vocab_file, encoding="utf-8") as f:
        vocab = json.load(f)
    with open(merges_file, encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
    bad = [m for m in merges if len(m) != 2]
    if bad:
        raise ValueError(f"{merges_file}: every merge line must hold two symbols, got {' '.join(bad[0])!r}")
    for key in ("bos_token", "eos_token", "unk_token"):
        if specials[key] not in vocab:
            raise ValueError(f"{vocab_file}: {key} {specials[key]!r} is not in the vocabulary")
    backend = tokenizers.Tokenizer(BPE(vocab=vocab, merges=merges, continuing_subword_prefix="",
                                       end_of_word_suffix="</w>", fuse_unk=False, unk_token=specials["unk_token"]))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    bos, eos = specials["bos_token"], specials["eos_token"]
    backend.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])])
    return backend


class Tokenizer:
    """Batch tokenizer returning fixed-length ``input_ids`` / ``attention_mask`` arrays (int32).

    Args:
      backend: a ``tokenizers.Tokenizer`` holding the full pipeline (with its special-token post-processor).
      model_max_length: default length to pad / truncate to (77 for CLIP); None means "pass max_length".
      pad_token: the padding token (must be in the vocabulary).
      special_tokens: the named special tokens (``bos_token``, ``eos_token``, ...), for reference.
      end_of_word_suffix: stripped on decode (CLIP's ``</w>``).
    """

    def __init__(self, backend: tokenizers.Tokenizer, *, model_max_length: int | None, pad_token: str,
                 special_tokens: dict[str, str] | None = None, end_of_word_suffix: str | None = None):
        pad_id = backend.token_to_id(pad_token)
        if pad_id is None:
            raise ValueError(f"pad token {pad_token!r} is not in the vocabulary")
        self.backend = backend
        self.model_max_length = model_max_length
        self.pad_token, self.pad_token_id = pad_token, pad_id
        self.special_tokens = dict(special_tokens or {})
        self._suffix = end_of_word_suffix
        backend.no_truncation()
        backend.no_padding()

    @classmethod
    def from_folder(cls, folder: str | Path, *, model_max_length: int | None = None) -> "Tokenizer":
        """Build from a checkpoint's tokenizer folder (see the module docstring for the files read)."""
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"tokenizer folder {folder} does not exist")
        specials, config = _special_tokens(folder)
        suffix = None
        if (folder / "tokenizer.json").is_file():
            backend = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
            padding = backend.padding
            pad = specials.get("pad_token") or (padding or {}).get("pad_token") or specials.get("eos_token")
            model = json.loads(backend.to_str())["model"]
            suffix = model.get("end_of_word_suffix") or None
        elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            specials = {**_CLIP_DEFAULTS, **specials}
            backend = _clip_backend(folder / "vocab.json", folder / "merges.txt", specials)
            pad, suffix = specials["pad_token"], "</w>"
        else:
            raise FileNotFoundError(
                f"{folder}: no tokenizer files found; expected tokenizer.json, or vocab.json + merges.txt (CLIP)")
        if pad is None:
            raise ValueError(f"{folder}: no pad token in tokenizer_config.json, special_tokens_map.json or "
                             "tokenizer.json; expected one of them to name it")
        present = [t for t in dict.fromkeys(specials.values()) if backend.token_to_id(t) is not None]
        backend.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False) for t in present])
        if model_max_length is None:
            limit = config.get("model_max_length")
            model_max_length = int(limit) if limit is not None and limit < _NO_LIMIT else None
        return cls(backend, model_max_length=model_max_length, pad_token=pad, special_tokens=specials,
                   end_of_word_suffix=suffix)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def token_id(self, token: str) -> int:
        """Id of a token (e.g. ``tok.token_id(tok.special_tokens["eos_token"])``); KeyError if unknown."""
        idx = self.backend.token_to_id(token)
        if idx is None:
            raise KeyError(f"token {token!r} is not in the vocabulary")
        return idx

    def __call__(self, texts: Sequence[str] | str, max_length: int | None = None,
                 padding: str = "max_length") -> dict[str, np.ndarray]:
        """Tokenize a batch: ``{"input_ids": [B, L] int32, "attention_mask": [B, L] int32}``.

        Sequences are truncated to ``max_length`` (default ``model_max_length``) special tokens included;
        ``padding="max_length"`` pads every row to that length, ``"longest"`` to the longest row.
        """
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, Sequence):
            raise TypeError(f"texts: expected a list of strings, got {type(texts).__name__}")
        bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
        if bad:
            raise TypeError(f"texts: expected a list of strings, got items of type {', '.join(sorted(set(bad)))}")
        if padding not in ("max_length", "longest"):
            raise ValueError(f"padding={padding!r}: expected 'max_length' or 'longest'")
        length = max_length if max_length is not None else self.model_max_length
        if length is None:
            raise ValueError("this tokenizer has no model_max_length; pass max_length=")
        if length < self.backend.num_special_tokens_to_add(False) + 1:
            raise ValueError(f"max_length={length} leaves no room for text after the special tokens")
        self.backend.enable_truncation(max_length=length)
        self.backend.enable_padding(pad_id=self.pad_token_id, pad_token=self.pad_token,
                                    length=length if padding == "max_length" else None)
        try:
            encodings = self.backend.encode_batch(list(texts))
        finally:
            self.backend.no_truncation()
            self.backend.no_padding()
        if not encodings:
            return {"input_ids": np.zeros((0, length), np.int32), "attention_mask": np.zeros((0, length), np.int32)}
        return {"input_ids": np.asarray([e.ids for e in encodings], np.int32),
                "attention_mask": np.asarray([e.attention_mask for e in encodings], np.int32)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        text = self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        if self._suffix:
            text = text.replace(self._suffix, " ").strip()
        return text
