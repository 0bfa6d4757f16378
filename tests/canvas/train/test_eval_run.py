"""``canvas-jax eval`` on a training run folder (the tiny text-to-image run): the run loads as a pipeline,
its Shapes setup comes from its config, and the reports hold metrics in range. (Here because the
``t2i_run`` fixture lives in this folder's conftest.)"""

import json

from canvas_jax.cli import main

FAST = ["--steps", "2", "--batch-size", "4", "--no-progress"]


def test_eval_shapes_and_inpaint_on_a_run_folder(t2i_run, tmp_path, capsys):
    assert main(["eval", "shapes", "--model", t2i_run, "--num-prompts", "2", "--out", str(tmp_path / "s.json"),
                 *FAST]) == 0
    shapes = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert shapes["image_size"] == 16 and (shapes["n_seen"], shapes["n_heldout"]) == (2, 2)
    assert all(0.0 <= shapes[k] <= 1.0 for k in ("adherence", "adherence_seen", "adherence_heldout"))
    assert main(["eval", "inpaint", "--model", t2i_run, "--num-images", "2", "--masks", "random", *FAST]) == 0
    inpaint = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= inpaint["adherence_in_mask"] <= 1.0 and inpaint["unmasked_psnr_db"] > 0.0
    assert inpaint["adherence_input"] == 1.0 and inpaint["image_size"] == 16
