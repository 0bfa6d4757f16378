import os

import pytest

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
REAL_DATA = os.path.join(PROJECT_ROOT, "..", "shared", "data", "recsys")


@pytest.fixture
def real_data():
    """The shared real datasets (../shared/data/recsys from the project root), or skip."""
    if not os.path.isdir(REAL_DATA):
        pytest.skip(f"real data folder {os.path.normpath(REAL_DATA)} is absent (../shared/data from the project root)")
    return REAL_DATA


@pytest.fixture
def write():
    """``write(path, text, encoding="utf-8") -> str(path)``: write a small input file."""

    def _write(path, text, encoding="utf-8"):
        with open(path, "w", encoding=encoding, newline="") as f:
            f.write(text)
        return str(path)

    return _write
