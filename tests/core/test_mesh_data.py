import numpy as np
import pytest
import tensorflow_datasets as tfds
from jax.sharding import PartitionSpec as P

from core_jax.config import ConfigError
from core_jax.data import build_dataset, dataset_metadata, make_iterator, open_split
from core_jax.mesh import DEFAULT_RULES, MeshConfig, logical_to_spec, make_mesh


class _FakeMesh:
    def __init__(self, **shape):
        self.shape = shape


def test_logical_rules():
    mesh = _FakeMesh(data=2, fsdp=2, tensor=2)
    assert logical_to_spec(("embed", "mlp"), (8, 16), mesh, DEFAULT_RULES) == P("fsdp", "tensor")
    assert logical_to_spec(("batch", None), (8, 3), mesh, DEFAULT_RULES) == P(("data", "fsdp"), None)
    # a dim the mesh axes don't divide stays replicated; a mesh axis is used once per array
    assert logical_to_spec(("embed", "mlp"), (7, 16), mesh, DEFAULT_RULES) == P(None, "tensor")
    assert logical_to_spec(("items", "embed"), (8, 8), mesh, DEFAULT_RULES) == P(("fsdp", "tensor"), None)
    assert logical_to_spec(("unknown",), (8,), mesh, DEFAULT_RULES) == P(None)
    assert logical_to_spec(("embed",), (8,), _FakeMesh(data=8, fsdp=1, tensor=1), DEFAULT_RULES) == P(None)


def test_mesh_sizes():
    assert dict(make_mesh(MeshConfig(data=-1)).shape) == {"data": 1, "fsdp": 1, "tensor": 1}
    with pytest.raises(ConfigError, match="data\\*fsdp\\*tensor = 4 but there are 1 devices"):
        make_mesh(MeshConfig(data=2, fsdp=2))
    with pytest.raises(ConfigError, match="at most one axis may be -1"):
        make_mesh(MeshConfig(data=-1, fsdp=-1))


def test_arrayrecord_dataset_and_iterator_state(tmp_path):
    def gen():
        for i in range(10):
            yield i, {"v": np.full((2,), i, np.int32)}

    path = build_dataset("tiny_ints", tmp_path, {"v": tfds.features.Tensor(shape=(2,), dtype=np.int32)},
                         {"train": gen}, metadata={"note": "hi"})
    assert dataset_metadata(path) == {"note": "hi"}
    src = open_split(path, "train")
    assert len(src) == 10 and sorted(int(src[i]["v"][0]) for i in range(10)) == list(range(10))
    with pytest.raises(ValueError, match="split 'test' not in"):
        open_split(path, "test")

    it = make_iterator(src, batch_size=3, seed=5)
    epoch = [next(it)["v"][:, 0] for _ in range(3)]
    assert len(set(np.concatenate(epoch))) == 9  # a shuffled epoch without repeats
    state = it.get_state()
    after = [next(it)["v"][:, 0].tolist() for _ in range(4)]
    again = make_iterator(src, batch_size=3, seed=5)
    again.set_state(state)
    assert [next(again)["v"][:, 0].tolist() for _ in range(4)] == after
    # two process shards are disjoint and cover the data
    shards = [make_iterator(src, batch_size=5, shuffle=False, num_epochs=1, shard_index=i, shard_count=2)
              for i in range(2)]
    seen = [set(next(s)["v"][:, 0].tolist()) for s in shards]
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(10))
