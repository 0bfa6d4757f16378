"""canvas-jax command line: sample writes a PNG grid, convert both ways, bad input exits 2 with one line."""

import numpy as np
import pytest
from PIL import Image

from canvas_jax.cli import COMMANDS, main

pytest.importorskip("diffusers")


def test_sample_writes_grid(tiny_sd, tmp_path, capsys):
    out = tmp_path / "grid.png"
    # the same prompts / sampler / steps / guidance as the parity test: the compiled program is reused
    rc = main(["sample", "--model", str(tiny_sd), "--prompt", "a photo of a cat", "--prompt",
               "an astronaut riding a horse on mars", "--steps", "10", "--guidance", "5", "--sampler", "ddim",
               "--cols", "2", "--out", str(out)])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    grid = Image.open(out)
    assert grid.size == (64, 32)
    arr = np.asarray(grid, float)
    assert arr.std() > 0 and np.abs(arr[:, :32] - arr[:, 32:]).max() > 0


def test_outpaint_writes_extended_image(tiny_sd, tmp_path):
    src, out = tmp_path / "in.png", tmp_path / "out.png"
    Image.fromarray(np.full((32, 16, 3), 120, np.uint8)).save(src)
    rc = main(["outpaint", "--model", str(tiny_sd), "--image", str(src), "--prompt", "a red cat", "--left", "8",
               "--right", "8", "--steps", "10", "--guidance", "5", "--out", str(out)])
    assert rc == 0
    img = np.asarray(Image.open(out))
    assert img.shape == (32, 32, 3)
    assert (img[:, 8:24] == 120).all()


def test_convert_both_ways(tiny_sd, tmp_path):
    assert main(["convert", "from-diffusers", str(tiny_sd), str(tmp_path / "ours")]) == 0
    assert (tmp_path / "ours" / "canvas_jax_index.json").is_file()
    assert main(["convert", "to-diffusers", str(tmp_path / "ours"), str(tmp_path / "back")]) == 0
    assert (tmp_path / "back" / "model_index.json").is_file()
    assert (tmp_path / "back" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.parametrize("argv, match", [
    (["sample", "--model", "{missing}", "--prompt", "x", "--out", "{tmp}/a.png"], "does not exist"),
    (["sample", "--model", "{model}", "--prompt", "x", "--height", "30", "--out", "{tmp}/a.png"], "multiples of 4"),
    (["sample", "--model", "{model}", "--prompt", "x", "--out", "{tmp}/nofolder/a.png"], "does not exist"),
    (["sample", "--model", "{model}", "--prompt", "x", "--out", "{tmp}/a.txt"], "expected a .png"),
    (["sample", "--model", "{model}", "--prompt", "x", "--steps", "0", "--out", "{tmp}/a.png"], "--steps"),
    (["inpaint", "--model", "{model}", "--image", "{missing}", "--mask", "{missing}", "--prompt", "x",
      "--out", "{tmp}/a.png"], "does not exist"),
    (["convert", "from-diffusers", "{missing}", "{tmp}/c"], "does not exist"),
    (["sample", "--model", "{model}", "--out", "{tmp}/a.png"], "--prompt"),  # argparse: required
    (["sample", "--model", "{model}", "--prompt", "x", "--sampler", "plms", "--out", "{tmp}/a.png"], "plms"),
    (["nonsense"], "invalid choice"),
])
def test_bad_input_exits_2_with_one_line(tiny_sd, tmp_path, capsys, argv, match):
    argv = [a.format(missing=tmp_path / "missing", model=tiny_sd, tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert match in err[-1] and err[-1].startswith("canvas-jax")


def test_subcommands_table_is_extensible():
    assert {"sample", "inpaint", "outpaint", "convert"} <= set(COMMANDS)


@pytest.mark.parametrize("exc", [TypeError, ValueError, KeyError])
def test_a_bug_is_not_a_usage_error(tmp_path, monkeypatch, exc):
    """Only our own checks' errors are usage errors (exit 2); a bug inside keeps its type and traceback."""
    import canvas_jax.cli as cli

    def broken(args):
        raise exc("an internal bug")

    monkeypatch.setattr(cli, "_pipeline", broken)
    model = tmp_path / "model"
    model.mkdir()
    with pytest.raises(exc, match="an internal bug"):
        main(["sample", "--model", str(model), "--prompt", "x", "--out", str(tmp_path / "a.png")])
