"""What the three ``make demo`` parts share: the smoke switch, reuse of finished parts, wall times.

``DEMO_SMOKE=1`` (``make demo-smoke``, run by ``.ci/run``) makes every part train a few steps only and write
under ``out/smoke/``: it checks that an installation of the runtime alone runs every demo path.

A part that finished before with the same settings is reused: its saved summary is printed and nothing is
trained again. ``--fresh`` (``make demo FRESH=1``) deletes the part's folders and starts over.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence

import orbax.checkpoint as ocp

SMOKE_ENV = "DEMO_SMOKE"
FRESH_HINT = "--fresh (make demo FRESH=1) starts over"
SUMMARY = "demo_summary.json"


def smoke() -> bool:
    """Whether ``DEMO_SMOKE`` asks for the few-step smoke run."""
    return os.environ.get(SMOKE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def out_dir(name: str) -> str:
    """Where a demo part writes: ``out/<name>``, or ``out/smoke/<name>`` in a smoke run (so that a smoke run
    never leaves a few-step model where the full demo would reuse it)."""
    return os.path.join("out", "smoke", name) if smoke() else os.path.join("out", name)


def checkpoint_step(run_dir: str) -> int | None:
    """The latest finished checkpoint step of a run folder, or None."""
    folder = os.path.join(run_dir, "checkpoints")
    steps = ocp.utils.checkpoint_steps(folder) if os.path.isdir(folder) else []
    return max(steps) if steps else None


def minutes(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{s} s"


class Part:
    """One demo part: ``folders`` it owns, the ``settings`` its result depends on, its wall time.

    ``Part(...).reused()`` is the summary a previous run with the same settings saved (printed, with a note
    on ``--fresh``) or None; ``fresh=True`` deletes the folders first. ``finish(summary)`` saves the summary
    (the part's "finished" mark) and prints the wall time of the part and of its ``lap``s.
    """

    def __init__(self, name: str, folders: Sequence[str], settings: dict, *, fresh: bool = False):
        self.name, self.folders, self.settings = name, list(folders), json.loads(json.dumps(settings))
        self.summary_path = os.path.join(self.folders[0], SUMMARY)
        self.t0 = self._lap0 = time.perf_counter()
        self.laps: list[tuple[str, float]] = []
        self.saved_settings: dict | None = None
        if fresh:
            for folder in self.folders:
                shutil.rmtree(folder, ignore_errors=True)
            print(f"[demo {name}] --fresh: deleted {', '.join(self.folders)}", flush=True)

    def reused(self) -> dict | None:
        """The saved summary when the part finished before with the same settings, else None (then
        ``saved_settings`` holds the settings of a finished run with other ones, or None)."""
        self.saved_settings = None
        if not os.path.isfile(self.summary_path):
            return None
        with open(self.summary_path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("settings") != self.settings:
            self.saved_settings = saved.get("settings")
            print(f"[demo {self.name}] {self.summary_path} was made with other settings ({saved.get('settings')}); "
                  "running again", flush=True)
            return None
        print(f"[demo {self.name}] reusing the finished run in {self.folders[0]} (took {minutes(saved['seconds'])} "
              f"then); {FRESH_HINT}", flush=True)
        return saved["summary"]

    def lap(self, what: str, seconds: float | None = None) -> None:
        """Record the wall time since the previous lap (or the start) as ``what`` (or ``seconds`` of it)."""
        now = time.perf_counter()
        self.laps.append((what, now - self._lap0 if seconds is None else seconds))
        self._lap0 = now if seconds is None else self._lap0 + seconds

    def finish(self, summary: dict) -> None:
        seconds = time.perf_counter() - self.t0
        os.makedirs(self.folders[0], exist_ok=True)
        with open(self.summary_path, "w", encoding="utf-8") as f:
            json.dump({"settings": self.settings, "seconds": seconds, "laps": dict(self.laps), "summary": summary}, f)
        laps = "".join(f"; {what} {minutes(s)}" for what, s in self.laps)
        print(f"[demo {self.name}] wall time {minutes(seconds)}{laps}", flush=True)
