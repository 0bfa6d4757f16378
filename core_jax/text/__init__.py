"""The shared pretrained text encoder (BERT / MiniLM) and tokenizers, used by canvas_jax and recsys_jax."""

from core_jax.text.bert import BertConfig, BertModel, sentence_embedding
from core_jax.text.minilm import SentenceEncoder, load_bert, load_minilm, minilm_folder, save_bert
from core_jax.text.tokenizer import Tokenizer

__all__ = ["BertConfig", "BertModel", "SentenceEncoder", "Tokenizer", "load_bert", "load_minilm", "minilm_folder",
           "save_bert", "sentence_embedding"]
