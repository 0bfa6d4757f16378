"""launch/local.sh: bash >= 4.4 only (no bash 5.x constructs), N processes with the JAX_* variables,
output prefixed with [i], the first failure stops the others and its exit status is passed on."""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LOCAL = os.path.join(ROOT, "launch", "local.sh")
SCRIPTS = [LOCAL, os.path.join(ROOT, "launch", "slurm.sbatch")]
# bash >= 5.0 only: wait -n -p / wait -p (5.1), wait -f (5.0), ${var@U/u/L/K/k} (5.1/5.2),
# EPOCHSECONDS/EPOCHREALTIME (5.0), SRANDOM (5.1), BASH_ARGV0 (5.0), shopt options of 5.x
BASH5_ONLY = [r"\bwait\b[^\n;]*\s-[a-z]*[pf]", r"\$\{[^}]*@[UuLKk]\}", r"\bEPOCH(SECONDS|REALTIME)\b",
              r"\bSRANDOM\b", r"\bBASH_ARGV0\b",
              r"\b(localvar_inherit|localvar_unset|assoc_expand_once|patsub_replacement|varredir_close|globskipdots)\b"]


@pytest.mark.parametrize("path", SCRIPTS, ids=os.path.basename)
def test_no_bash5_only_constructs(path):
    subprocess.run(["bash", "-n", path], check=True)  # parses
    with open(path) as f:
        code = "\n".join(l.split(" #")[0] for l in f if not l.lstrip().startswith("#"))
    for pattern in BASH5_ONLY:
        assert not re.search(pattern, code), f"{os.path.basename(path)} uses {pattern}, which bash 4.4 lacks"


def test_bash5_patterns_catch_the_old_script():
    old = 'wait -n -p done_pid "${running[@]}"\necho ${x@U} $EPOCHSECONDS\nwait -f $p'
    assert sum(bool(re.search(p, old)) for p in BASH5_ONLY) == 3


def _run(n, body, *, timeout=60, **env):
    """local.sh N -- python -c BODY (BODY sees the JAX_* variables)."""
    return subprocess.run([LOCAL, str(n), "--", sys.executable, "-c", body], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env})


def test_every_process_gets_its_id_and_the_coordinator():
    body = "import os; print(os.environ['JAX_PROCESS_ID'], os.environ['JAX_NUM_PROCESSES'], os.environ['JAX_COORDINATOR_ADDRESS'])"
    proc = _run(3, body)
    assert proc.returncode == 0, proc.stderr
    lines = sorted(proc.stdout.splitlines())
    assert len(lines) == 3
    addresses = set()
    for i, line in enumerate(lines):
        prefix, pid, n, address = line.split()
        assert (prefix, pid, n) == (f"[{i}]", str(i), "3")
        addresses.add(address)
    [address] = addresses
    assert re.fullmatch(r"127\.0\.0\.1:\d+", address)
    assert _run(2, body, JAX_COORDINATOR_PORT="23456").stdout.count("127.0.0.1:23456") == 2


# process 1 fails with STATUS after a short delay; the others run for a minute unless stopped
FAIL_ONE = """
import os, signal, sys, time
i = int(os.environ['JAX_PROCESS_ID'])
if i == 1:
    time.sleep(0.5)
    {fail}
def stopped(*_):
    print('stopped', flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stopped)
print('started', flush=True)
time.sleep(60)
print('finished', flush=True)
"""


@pytest.mark.parametrize("fail, status", [("sys.exit(3)", 3), ("os.kill(os.getpid(), signal.SIGTERM)", 143)])
def test_first_failure_stops_the_others_and_its_status_is_passed_on(fail, status):
    start = time.monotonic()
    proc = _run(3, FAIL_ONE.format(fail=fail))
    assert time.monotonic() - start < 30  # not the others' 60 s
    assert proc.returncode == status, proc.stderr
    out = proc.stdout.splitlines()
    assert "[0] stopped" in out and "[2] stopped" in out and not any("finished" in l for l in out)
    assert f"exited with status {status}; stopping the others" in proc.stderr


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period():
    body = FAIL_ONE.format(fail="sys.exit(5)").replace("sys.exit(143)", "pass")
    start = time.monotonic()
    proc = _run(2, body, LOCAL_STOP_GRACE_S="1")
    assert time.monotonic() - start < 30
    assert proc.returncode == 5
    assert "sending SIGKILL" in proc.stderr


def test_sigterm_to_the_launcher_reaches_every_process():
    body = FAIL_ONE.format(fail="pass")
    proc = subprocess.Popen([LOCAL, "2", "--", sys.executable, "-c", body], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    lines = []
    while len([l for l in lines if "started" in l]) < 2 and time.monotonic() < deadline:
        lines.append(proc.stdout.readline())
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 143
    assert sorted(l for l in out.splitlines() if "stopped" in l) == ["[0] stopped", "[1] stopped"]


@pytest.mark.parametrize("args", [["0", "--", "true"], ["2", "true"], ["x", "--", "true"]])
def test_usage_errors(args):
    proc = subprocess.run([LOCAL, *args], capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr
