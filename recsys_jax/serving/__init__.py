"""Retrieval at corpus scale: a row-sharded item index with exact/approximate top-k (index, topk, ivf),
quotas and candidate sources (quotas, candidates), and the HTTP endpoint (server, batcher, requests)."""

from recsys_jax.serving.index import ItemIndex

__all__ = ["ItemIndex"]
