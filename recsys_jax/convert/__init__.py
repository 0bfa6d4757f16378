"""Weights in and out: generative-recommenders research HSTU checkpoints <-> recsys_jax run folders."""

from recsys_jax.convert.generative_recommenders import (
    from_generative_recommenders,
    load_state_dict,
    model_from_state_dict,
    state_dict_from_model,
    to_generative_recommenders,
)
from recsys_jax.convert.gr_gin import GRConfig, read_gin

__all__ = ["GRConfig", "from_generative_recommenders", "load_state_dict", "model_from_state_dict", "read_gin",
           "state_dict_from_model", "to_generative_recommenders"]
