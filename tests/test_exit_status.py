"""Every console entry that trains turns a signal stop (core_jax.stopping.Stopped, raised by the loop after
its checkpoint) into exit status 128 + signal. python -m core_jax.toy is tested with real signals in
tests/core/test_resume.py, a real SIGTERM through canvas training in tests/canvas/train/test_resume.py."""

import signal

import pytest

from core_jax.stopping import Stopped


def _stopped(signum):
    def train(*args, **kwargs):
        raise Stopped(signum, 7, "runs/x")
    return train


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_canvas_and_recsys_train_exit_with_128_plus_signal(monkeypatch, capsys, sig, code):
    import canvas_jax.cli
    import canvas_jax.train.run
    import recsys_jax.cli
    import recsys_jax.train.task

    monkeypatch.setattr(canvas_jax.train.run, "train", _stopped(sig))
    monkeypatch.setattr(canvas_jax.train.run.preflight, "check", lambda cfg: None)  # tests/canvas/train/test_preflight.py
    monkeypatch.setattr(recsys_jax.train.task, "train", _stopped(sig))
    for main in (canvas_jax.cli.main, recsys_jax.cli.main):
        with pytest.raises(SystemExit) as exit_:
            main(["train"])
        assert exit_.value.code == code
        assert f"stopped by {sig.name} at step 7" in capsys.readouterr().err
