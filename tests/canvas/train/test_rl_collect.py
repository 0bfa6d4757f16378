"""`canvas-jax rl collect` on the tiny trained run: candidates, pairs, sheets, the dataset; seeds re-draw."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

import canvas_jax
from canvas_jax import cli
from canvas_jax.rl.collect import candidate_latents
from core_jax.data import open_split

PROMPTS = ["a small red square at the top left", "a large blue circle at the center"]


def test_collect_writes_pairs_sheets_and_dataset(tmp_path, t2i_run, capsys):
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n\n")
    out = tmp_path / "collected"
    code = cli.main(["rl", "collect", "--model", t2i_run, "--prompts", str(tmp_path / "prompts.txt"), "--out",
                     str(out), "--per-prompt", "3", "--reward", "diversity,checker=0.5", "--sampler", "ddim",
                     "--steps", "2", "--seed", "5", "--test-fraction", "0.5"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and summary["candidates"] == 6 and set(summary["reward_mean"]) == {"total", "diversity", "checker"}
    candidates = [json.loads(line) for line in (out / "candidates.jsonl").read_text().splitlines()]
    assert [c["seed"] for c in candidates] == [5, 6, 7, 8, 9, 10]
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert summary["pairs"] == len(pairs) == 6  # three candidates per prompt, all scores distinct: 3 pairs each
    for p in pairs:
        assert p["chosen_score"] > p["rejected_score"] and p["sampler"]["sampler"] == "ddim"
    assert sorted(f.name for f in (out / "sheets").iterdir()) == ["00000.png", "00001.png"]
    # --test-fraction 0.5: the pairs of one of the two prompts form the test split
    test = [p for p in pairs if p.get("split") == "test"]
    assert len(test) == 3 and len({p["prompt"] for p in test}) == 1
    train = [p for p in pairs if "split" not in p]
    data = open_split(summary["dataset"], "train")
    assert len(data) == 3 and len(open_split(summary["dataset"], "test")) == 3
    assert data[0]["caption"].decode() == train[0]["prompt"]
    np.testing.assert_array_equal(data[0]["chosen"], np.asarray(Image.open(out / train[0]["chosen"])))

    # a recorded seed re-draws its candidate
    pipe = canvas_jax.Pipeline.from_pretrained(t2i_run)
    c = candidates[4]
    again = pipe([c["prompt"]], latents=candidate_latents(pipe, [c["seed"]]), num_steps=2, guidance_scale=3.0,
                 sampler="ddim", seed=5, output_type="np").images[0]
    saved = np.asarray(Image.open(out / c["file"]), np.float32) / 255.0
    assert np.abs(again - saved).max() <= 1 / 255 + 1e-6

    # bad input: one line, exit 2
    for args, message in ((["--reward", "beauty"], "unknown reward 'beauty'"), (["--per-prompt", "1"], "at least 2"),
                          (["--reward", "clip"], "clip:RUN"), ([], "not empty")):
        code = cli.main(["rl", "collect", "--model", t2i_run, "--prompts", str(tmp_path / "prompts.txt"), "--out",
                         str(out), *args])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
