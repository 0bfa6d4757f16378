"""A run stopped by a signal, and the exit status that tells preemption from completion.

SIGTERM (preemption: SLURM, Kubernetes) or SIGINT (Ctrl-C) makes the train loop save a checkpoint at the
current step and raise :class:`Stopped`; :func:`core_jax.config.exit_on_error` (on every console entry
that trains) turns it into exit status ``128 + signal``: **143** for SIGTERM, **130** for SIGINT, as a
shell reports a process killed by that signal. Relaunching the same command resumes from the checkpoint.
A run that reaches ``train.steps``, stops early on its metric, or stops at a time limit exits 0.
"""

from __future__ import annotations

import signal


class Stopped(Exception):
    """Training stopped by signal ``signum`` at ``step``, after saving a checkpoint in ``run_dir``."""

    def __init__(self, signum: int, step: int, run_dir: str):
        self.signum, self.step, self.run_dir = int(signum), int(step), run_dir
        super().__init__(f"stopped by {signal.Signals(self.signum).name} at step {self.step} after saving a "
                         f"checkpoint in {run_dir}; run the same command again to resume "
                         f"(exit status {self.exit_code})")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum
