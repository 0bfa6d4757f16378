"""The root Dockerfile, checked without docker: base image, the EXTRAS build arg (CPU by default, the
`gpu` extra on request) expanding to a pip target of this project, and a build context that holds
everything pip needs to build the project."""

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _instructions():
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        text = re.sub(r"\\\n", " ", "".join(l for l in f if not l.lstrip().startswith("#")))
    return [(l.split(None, 1)[0].upper(), l.split(None, 1)[1].strip()) for l in text.splitlines() if l.strip()]


def _pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def _pip_targets(run, extras):
    """The arguments `sh` passes to pip in RUN, with the build arg EXTRAS set as docker sets it."""
    script = f'pip() {{ for a in "$@"; do printf "%s\\n" "$a"; done; }}\n{run}'
    out = subprocess.run(["sh", "-c", script], env={"EXTRAS": extras, "PATH": os.environ["PATH"]},
                         capture_output=True, text=True, check=True).stdout
    return [a for a in out.splitlines() if a != "install" and not a.startswith("-")]


def test_base_image_and_build_arg():
    ins = _instructions()
    froms = [a for k, a in ins if k == "FROM"]
    assert len(froms) == 1
    args_before = dict(a.split("=", 1) for k, a in ins[: [k for k, _ in ins].index("FROM")] if k == "ARG")
    image = re.sub(r"\$\{(\w+)\}", lambda m: args_before[m.group(1)], froms[0])
    m = re.fullmatch(r"python:(\d+)\.(\d+)-slim", image)
    assert m, image
    need = re.fullmatch(r">=(\d+)\.(\d+)", _pyproject()["project"]["requires-python"])
    assert (int(m[1]), int(m[2])) >= (int(need[1]), int(need[2]))
    assert ("ARG", 'EXTRAS=""') in ins  # CPU unless --build-arg EXTRAS=gpu


def test_pip_installs_the_project_with_the_requested_extra():
    ins = _instructions()
    [run] = [a for k, a in ins if k == "RUN" and "pip install" in a]
    workdir = [a for k, a in ins if k == "WORKDIR"][-1]
    assert _pip_targets(run, "") == ["."]
    assert _pip_targets(run, "gpu") == [".[gpu]"]
    assert "gpu" in _pyproject()["project"]["optional-dependencies"]
    # the documented build command names an existing extra
    with open(os.path.join(ROOT, "Dockerfile")) as f:
        documented = set(re.findall(r"--build-arg EXTRAS=(\w+)", f.read()))
    assert documented and documented <= set(_pyproject()["project"]["optional-dependencies"])
    assert workdir == "/app"


def test_build_context_before_pip_builds_the_project(tmp_path):
    """Copy what the Dockerfile COPYs before `pip install` and build a wheel from it, as the image would."""
    pytest.importorskip("setuptools", reason="builds the wheel offline with this venv's setuptools")
    ins = _instructions()
    run_at = next(i for i, (k, a) in enumerate(ins) if k == "RUN" and "pip install" in a)
    for k, a in ins[:run_at]:
        if k != "COPY":
            continue
        *srcs, dest = shlex.split(a)
        assert not any(s.startswith("--") for s in srcs), a
        for s in srcs:
            target = tmp_path / (dest if dest not in ("./", ".") else s)
            if os.path.isdir(os.path.join(ROOT, s)):
                shutil.copytree(os.path.join(ROOT, s), target,
                                ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(os.path.join(ROOT, s), target)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "wheel"), str(tmp_path)], check=True, capture_output=True)
    [wheel] = os.listdir(tmp_path / "wheel")
    names = zipfile.ZipFile(tmp_path / "wheel" / wheel).namelist()
    for package in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]:
        top = package.rstrip("*")
        assert f"{top}/__init__.py" in names, f"{top} missing from the image's install"
    # commands in the image name configs/... relative to the working directory
    copied = {shlex.split(a)[0] for k, a in ins if k == "COPY"}
    assert "configs" in copied


def test_dockerignore_keeps_local_state_out():
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        ignored = {l.strip() for l in f if l.strip() and not l.startswith("#")}
    assert {".git", ".venv", "runs", "out"} <= ignored
