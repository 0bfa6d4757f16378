import dataclasses
import os
import subprocess
import sys
from typing import Literal

import pytest

from core_jax import config as config_lib
from core_jax.config import ConfigError
from core_jax.toy import ToyConfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass
class Inner:
    rate: float = 0.1
    kind: Literal["a", "b"] = "a"


@dataclasses.dataclass
class Outer:
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    inner: Inner = dataclasses.field(default_factory=Inner)
    maybe: int | None = None


def test_yaml_overrides_and_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\ninner: {rate: 1e-3}\n")
    cfg = config_lib.load(Outer, path, ["inner.kind=b", "sizes=[3, 4]", "maybe=7"])
    assert cfg == Outer(name="run", sizes=(3, 4), inner=Inner(rate=1e-3, kind="b"), maybe=7)
    config_lib.save(cfg, tmp_path / "saved.yaml")
    assert config_lib.load(Outer, tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize("overrides, message", [
    (["inner.rat=2"], "unknown config key 'inner.rat' (did you mean 'inner.rate'?)"),
    (["nam=2"], "unknown config key 'nam' (did you mean 'name'?)"),
    (["inner.rate=fast"], "config key 'inner.rate': expected float, got 'fast'"),
    (["inner.kind=c"], "config key 'inner.kind': expected 'a' | 'b', got 'c'"),
    (["sizes=[1, x]"], "config key 'sizes[1]': expected int, got 'x'"),
    (["inner=3"], "config key 'inner': expected Inner, got 3"),
    (["novalue"], "override 'novalue': expected key.sub=value"),
])
def test_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as e:
        config_lib.load(Outer, None, overrides)
    assert str(e.value).startswith(message)
    assert "\n" not in str(e.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="config file 'nope.yaml' not found"):
        config_lib.load(Outer, "nope.yaml")


@pytest.mark.parametrize("args, message", [
    (["--config", "configs/toy.yaml", "train.stepz=3"], "unknown config key 'train.stepz' (did you mean 'train.steps'?)"),
    (["--config", "configs/toy.yaml", "train.steps=many"], "config key 'train.steps': expected int, got 'many' (str)"),
    (["--config", "configs/missing.yaml"], "config file 'configs/missing.yaml' not found"),
])
def test_cli_one_line_error_and_exit_code_2(args, message):
    proc = subprocess.run([sys.executable, "-m", "core_jax.toy", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("config error:")]
    assert lines == [f"config error: {message}"], proc.stderr


def test_every_shipped_config_validates():
    assert config_lib.load(ToyConfig, os.path.join(ROOT, "configs", "toy.yaml")).train.steps > 0


@dataclasses.dataclass
class _Inner:
    a: int = 1
    b: int = 2


@dataclasses.dataclass
class _Outer:
    inner: _Inner = dataclasses.field(default_factory=lambda: _Inner(a=10, b=20))
    free: dict = dataclasses.field(default_factory=lambda: {"x": 1, "y": 2})


def test_a_partial_section_keeps_the_enclosing_schemas_defaults(tmp_path):
    """One YAML merge for every package: keys a file leaves out keep the defaults the enclosing schema sets
    (recsys' RecsysConfig relies on it), while a free-form dict is replaced, not merged."""
    path = tmp_path / "c.yaml"
    path.write_text("inner:\n  b: 5\nfree:\n  z: 3\n")
    cfg = config_lib.load(_Outer, path, ["inner.a=7"])
    assert cfg.inner == _Inner(a=7, b=5) and cfg.free == {"z": 3}
    cfg = config_lib.load(_Outer, path)
    assert cfg.inner == _Inner(a=10, b=5)
    assert config_lib.load(_Outer).inner == _Inner(a=10, b=20)
