"""launch/slurm.sbatch: the #SBATCH directives for preemption (--requeue, --signal) are where sbatch reads
them, and a run stopped by SIGTERM (exit 143) is requeued while success and usage errors are not; run
with stand-in `srun` and `scontrol` commands."""

import os
import re
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SBATCH = os.path.join(ROOT, "launch", "slurm.sbatch")


def _directives():
    """The #SBATCH lines sbatch reads: those before the first command."""
    found = []
    with open(SBATCH) as f:
        for line in f:
            s = line.strip()
            if s and not s.startswith("#"):
                break
            if s.startswith("#SBATCH"):
                found.append(s.split(None, 1)[1])
    return found


def test_preemption_directives():
    d = _directives()
    assert "--requeue" in d and "--ntasks-per-node=1" in d
    [signal] = [x for x in d if x.startswith("--signal=")]
    m = re.fullmatch(r"--signal=(?:R:)?(TERM|15)@(\d+)", signal)  # to the tasks (no B:), before the limit
    assert m and int(m[2]) >= 30
    assert "--open-mode=append" in d  # a requeued job appends to the same slurm-%j.out


def _fake(bin_dir, name, body):
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize("code, requeued", [(143, True), (0, False), (2, False), (1, False)])
def test_requeue_only_after_a_sigterm_stop(tmp_path, code, requeued):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "scontrol.log"
    # srun: drop its options, run the command once (one task)
    _fake(bin_dir, "srun", 'while [[ "$1" == -* ]]; do shift; done\nexec "$@"\n')
    _fake(bin_dir, "scontrol", f'echo "$@" >> {log}\n')
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu[01-02]",
           "VENV": str(tmp_path / "venv")}
    proc = subprocess.run(["bash", SBATCH, "bash", "-c", f'echo port=$JAX_COORDINATOR_PORT; exit {code}'],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == code, proc.stderr
    assert "port=12355" in proc.stdout
    assert (log.read_text().split() if log.exists() else []) == (["requeue", "4242"] if requeued else [])
    proc = subprocess.run(["bash", SBATCH, "bash", "-c", f"exit {code}"], capture_output=True, text=True,
                          env={**env, "NO_REQUEUE": "1"}, cwd=tmp_path, timeout=60)
    assert proc.returncode == code
    assert (log.read_text().split() if log.exists() else []) == (["requeue", "4242"] if requeued else [])


def test_usage():
    proc = subprocess.run(["bash", SBATCH], capture_output=True, text=True)
    assert proc.returncode == 2 and "usage" in proc.stderr
