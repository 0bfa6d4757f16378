"""Imports go one way: models <- diffusion <- pipeline/runs <- train, eval, cli inside canvas_jax; canvas_jax and
recsys_jax never import each other; core_jax imports neither. Every import counts, function-level ones too."""

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core_jax", "canvas_jax", "recsys_jax")

# canvas_jax: module (or folder) -> the canvas_jax modules it must not import, at any depth of the file
UPPER = ("canvas_jax.train", "canvas_jax.eval", "canvas_jax.cli", "canvas_jax.demo", "canvas_jax.data.cli")
INFERENCE = ("canvas_jax.pipeline", "canvas_jax.runs", "canvas_jax.components")
CANVAS_RULES = {
    "canvas_jax.models": UPPER + INFERENCE + ("canvas_jax.diffusion", "canvas_jax.convert"),
    "canvas_jax.diffusion": UPPER + INFERENCE + ("canvas_jax.convert",),
    "canvas_jax.convert": UPPER + ("canvas_jax.pipeline", "canvas_jax.runs"),
    "canvas_jax.components": UPPER + ("canvas_jax.pipeline", "canvas_jax.runs"),
    "canvas_jax.runs": UPPER + ("canvas_jax.pipeline",),
    "canvas_jax.pipeline": UPPER,
    "canvas_jax.config": UPPER + INFERENCE,
    "canvas_jax.text_conditioning": UPPER + INFERENCE,
    "canvas_jax.images": UPPER + INFERENCE,
    "canvas_jax.errors": UPPER + INFERENCE,
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports anywhere (top level, functions, ``if`` blocks), fully qualified; ``from pkg
    import name`` counts as ``pkg.name`` too (it may be a sub-module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path).rsplit(".", 1)[0] if path.name != "__init__.py" else _module_name(path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def _files(prefix: str) -> list[Path]:
    folder, file = ROOT / Path(*prefix.split(".")), ROOT / Path(*prefix.split(".")).with_suffix(".py")
    return sorted(folder.rglob("*.py")) if folder.is_dir() else [file]


def _within(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_rules_cover_existing_files():
    for prefix in CANVAS_RULES:
        assert all(f.is_file() for f in _files(prefix)) and _files(prefix), prefix


@pytest.mark.parametrize("prefix", sorted(CANVAS_RULES))
def test_canvas_inference_never_imports_training(prefix):
    bad = {f"{f.relative_to(ROOT)}: {name}" for f in _files(prefix) for name in imports_of(f)
           if _within(name, CANVAS_RULES[prefix])}
    assert not bad, f"{prefix} must not import {CANVAS_RULES[prefix]}:\n" + "\n".join(sorted(bad))


@pytest.mark.parametrize("package, forbidden", [
    ("core_jax", ("canvas_jax", "recsys_jax")), ("canvas_jax", ("recsys_jax",)), ("recsys_jax", ("canvas_jax",))])
def test_packages_import_one_way(package, forbidden):
    bad = {f"{f.relative_to(ROOT)}: {name}" for f in _files(package) for name in imports_of(f)
           if _within(name, forbidden)}
    assert not bad, f"{package} must not import {forbidden}:\n" + "\n".join(sorted(bad))


def test_the_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    pkg = tmp_path / "canvas_jax"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "m.py").write_text("def f():\n    from canvas_jax.train import run\n    from . import eval\n")
    assert {"canvas_jax.train.run", "canvas_jax.eval"} <= imports_of(pkg / "m.py")
