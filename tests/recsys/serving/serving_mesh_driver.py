"""Run the brute-force comparisons on the meshes named in argv ("data,fsdp,tensor:dtype+dtype" each), in this
process's JAX cluster (simulated devices and/or launch/local.sh processes); prints one RESULT line."""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from serving_reference import brute_force, check_all  # noqa: E402

from core_jax import distributed  # noqa: E402


def main():
    distributed.initialize()
    import jax

    from core_jax.mesh import MeshConfig, make_mesh
    from recsys_jax.serving import ItemIndex

    out = {"devices": jax.device_count(), "processes": jax.process_count()}
    for spec in sys.argv[1:]:  # "data,fsdp,tensor:dtype+dtype"
        shape, _, names = spec.partition(":")
        dtypes = (names or "float32").split("+")
        d, f, t = (int(v) for v in shape.split(","))
        mesh = make_mesh(MeshConfig(data=d, fsdp=f, tensor=t))
        rng = np.random.default_rng(0)
        shards = []

        def factory(x, ids, dtype):
            index = ItemIndex(x, ids, dtype=dtype, mesh=mesh, block=16, group=2, few=3)  # pruned path too
            shards.append(index.shards)
            return index

        checks = check_all(factory, rng, n=301, dtypes=dtypes, combos=("none", "everything"))
        # the approximate path probing every chunk of every shard is exact
        x = rng.standard_normal((500, 8)).astype(np.float32)
        q = rng.standard_normal((4, 8)).astype(np.float32)
        index = ItemIndex(x, mesh=mesh, block=8).build_ivf(6, chunk=8)
        got_i, got_s = index.search(q, 10, approximate=True, probe=10**6)
        ref_i, _ = brute_force(x, np.arange(500), q, 10)
        np.testing.assert_array_equal(got_i, ref_i)
        out[spec] = {"checks": checks, "shards": shards[0], "ivf_exact": True}
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
