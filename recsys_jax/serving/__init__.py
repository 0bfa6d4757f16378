"""Retrieval at corpus scale: a row-sharded item index with exact/approximate top-k, and quotas."""

from recsys_jax.serving.index import ItemIndex

__all__ = ["ItemIndex"]
