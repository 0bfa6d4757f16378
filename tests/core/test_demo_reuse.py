"""``make demo`` parts reuse what a previous call finished (``--fresh`` starts over), without training again."""

from __future__ import annotations

import json
import os

import pytest

from core_jax import demo, demo_runs


@pytest.fixture
def train_calls(tmp_path, monkeypatch):
    """Run the core demo in ``tmp_path`` with its training subprocess replaced by a recorder."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(demo_runs.SMOKE_ENV, raising=False)
    calls = []

    def fake_train(run, steps, checkpoint_every):
        calls.append(steps)
        os.makedirs(os.path.join(run, "checkpoints", str(steps)), exist_ok=True)
        return {"step": steps, "loss": 1.0 / steps, "eval_mse": 2.0 / steps}

    monkeypatch.setattr(demo, "_train", fake_train)
    return calls


def test_finished_part_is_reused_and_fresh_starts_over(train_calls, capsys):
    demo.main([])
    assert train_calls == [40, 80]
    first = capsys.readouterr().out
    assert "[demo runtime] wall time" in first
    summary = json.loads(first.split("demo summary:")[1])
    demo.main([])  # finished: nothing trains again
    assert train_calls == [40, 80]
    again = capsys.readouterr().out
    assert "reusing the finished run in out/demo/toy" in again and "--fresh" in again
    assert json.loads(again.split("demo summary:")[1]) == summary
    demo.main(["--fresh"])
    assert train_calls == [40, 80, 40, 80]
    assert "--fresh: deleted out/demo/toy" in capsys.readouterr().out


def test_smoke_runs_few_steps_elsewhere(train_calls, monkeypatch):
    monkeypatch.setenv(demo_runs.SMOKE_ENV, "1")
    demo.main([])
    assert train_calls == [4, 8]
    assert os.path.isfile(os.path.join("out", "smoke", "demo", "toy", demo_runs.SUMMARY))
    assert not os.path.exists(os.path.join("out", "demo"))  # the full demo's folders are left alone


def test_other_settings_are_not_reused(tmp_path, capsys):
    part = demo_runs.Part("x", [str(tmp_path)], {"steps": 1})
    assert part.reused() is None
    part.finish({"ok": 1})
    assert demo_runs.Part("x", [str(tmp_path)], {"steps": 1}).reused() == {"ok": 1}
    other = demo_runs.Part("x", [str(tmp_path)], {"steps": 2})
    assert other.reused() is None and other.saved_settings == {"steps": 1}
    assert "other settings" in capsys.readouterr().out
