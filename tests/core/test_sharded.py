"""A sharded run equals the single-device run (8 simulated CPU devices, in a subprocess)."""

import numpy as np


def test_sharded_losses_equal_single_device(tmp_path, toy_data, driver):
    proc = driver.run("meshes", f"train.run_dir={tmp_path}", f"data.dir={toy_data}", "train.steps=5",
                      "train.log_every=1", "train.eval_every=0", "train.checkpoint.every=0",
                      "train.batch_size=16", "train.ema_decay=null",
                      devices=8, env={"TOY_MESHES": "4,2,1;2,2,2"})
    losses = driver.result(proc)
    single = np.array(losses["1,1,1"])
    assert len(single) == 5 and np.all(np.isfinite(single))
    assert single[-1] < single[0]
    for spec in ("4,2,1", "2,2,2"):
        np.testing.assert_allclose(losses[spec], single, rtol=0, atol=1e-5, err_msg=f"mesh {spec}")
