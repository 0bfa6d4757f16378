import numpy as np
import pytest
from flax import nnx

import core_jax  # noqa: F401
from core_jax.state_dict import StateDictMismatch, load_state_dict, to_state_dict


class _Tiny(nnx.Module):
    def __init__(self, rngs):
        self.blocks = nnx.List([nnx.Linear(3, 4, rngs=rngs), nnx.Conv(4, 5, (3, 3), rngs=rngs)])
        self.norm = nnx.LayerNorm(5, rngs=rngs)


def test_torch_layout_and_round_trip():
    sd = to_state_dict(_Tiny(nnx.Rngs(0)))
    assert {k: v.shape for k, v in sd.items()} == {
        "blocks.0.weight": (4, 3), "blocks.0.bias": (4,), "blocks.1.weight": (5, 4, 3, 3),
        "blocks.1.bias": (5,), "norm.weight": (5,), "norm.bias": (5,)}
    other = load_state_dict(_Tiny(nnx.Rngs(1)), sd)
    for k, v in to_state_dict(other).items():
        np.testing.assert_array_equal(v, sd[k])


def test_mismatch_lists_every_offending_key():
    sd = to_state_dict(_Tiny(nnx.Rngs(0)))
    del sd["norm.bias"]
    sd["extra.weight"] = np.zeros(1)
    sd["blocks.0.weight"] = np.zeros((2, 2))
    sd["buffer.position_ids"] = np.zeros(3)
    with pytest.raises(StateDictMismatch) as err:
        load_state_dict(_Tiny(nnx.Rngs(1)), sd, what="tiny", ignore=[r".*position_ids"])
    assert err.value.missing == ["norm.bias"]
    assert err.value.unexpected == ["extra.weight"]
    assert err.value.shapes == [("blocks.0.weight", (4, 3), (2, 2))]
    assert "tiny" in str(err.value)


def test_saved_tensors_are_contiguous_and_abstract_models_load(tmp_path):
    import safetensors.numpy

    sd = to_state_dict(_Tiny(nnx.Rngs(0)))
    safetensors.numpy.save_file(sd, tmp_path / "w.safetensors")
    back = safetensors.numpy.load_file(tmp_path / "w.safetensors")
    for k in sd:
        np.testing.assert_array_equal(back[k], sd[k])
    abstract = nnx.eval_shape(lambda: _Tiny(nnx.Rngs(1)))
    for k, v in to_state_dict(load_state_dict(abstract, back)).items():
        np.testing.assert_array_equal(v, sd[k])
