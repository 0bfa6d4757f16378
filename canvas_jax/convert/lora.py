"""LoRA weights alone as safetensors, with diffusers / PEFT key names, in and out of our models.

The file is what ``diffusers`` writes with ``save_lora_weights`` and reads with ``pipe.load_lora_weights``
(PEFT format)::

    unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_A.weight   [rank, in]
    unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_B.weight   [out, rank]
    unet.down_blocks.0.resnets.0.conv1.lora_A.weight                                [rank, in, kh, kw]
    unet.down_blocks.0.resnets.0.conv1.lora_B.weight                                [out, rank, 1, 1]

with the PEFT ``LoraConfig`` (``r``, ``lora_alpha``, ``target_modules``, ``rank_pattern``,
``alpha_pattern``...) as JSON in the safetensors metadata key ``lora_adapter_metadata``, each key
prefixed with ``unet.`` as diffusers does. On load, alpha comes from that metadata, else from kohya-style
``<module>.alpha`` tensors, else equals the rank (PEFT's default).
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections import Counter
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from canvas_jax.models.lora import (
    LoRAConv,
    LoRALinear,
    adaptable_modules,
    freeze,
    lora_layers,
    set_lora_scale,
    wrap_module,
)

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE
METADATA_KEY = "lora_adapter_metadata"  # diffusers' LORA_ADAPTER_METADATA_KEY
_PREFIXES = ("base_model.model.",)  # PEFT's own adapter_model.safetensors
_OTHER_COMPONENTS = ("text_encoder", "text_encoder_2", "transformer", "unet", "vae")
_KEY = re.compile(r"^(?P<module>.+)\.(?P<which>lora_A|lora_B)\.weight$")


def _file(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / WEIGHT_NAME if path.suffix != ".safetensors" else path


def _to_torch(x: np.ndarray) -> np.ndarray:
    return x.T if x.ndim == 2 else x.transpose(3, 2, 0, 1)  # (in, r) -> (r, in); HWIO -> OIHW


def _from_torch(x: np.ndarray) -> np.ndarray:
    return x.T if x.ndim == 2 else x.transpose(2, 3, 1, 0)


def lora_state_dict(model: nnx.Module, *, prefix: str = "unet") -> dict[str, np.ndarray]:
    """The adapters of ``model`` as a flat torch-layout float32 dict with PEFT / diffusers key names."""
    out = {}
    pre = f"{prefix}." if prefix else ""
    for path, layer in lora_layers(model).items():
        for which in ("lora_A", "lora_B"):
            x = np.asarray(jax.device_get(getattr(layer, which)[...]), dtype=np.float32)
            out[f"{pre}{path}.{which}.weight"] = np.ascontiguousarray(_to_torch(x))
    if not out:
        raise ValueError(f"{type(model).__name__} has no LoRA layers to save: call apply_lora first")
    return out


def lora_config_dict(model: nnx.Module) -> dict:
    """PEFT ``LoraConfig`` fields describing the adapters of ``model`` (most common rank / alpha, plus
    per-module patterns where a module differs)."""
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA layers")
    r = Counter(layer.rank for layer in layers.values()).most_common(1)[0][0]
    alpha = Counter(layer.alpha for layer in layers.values()).most_common(1)[0][0]
    return {
        "r": r, "lora_alpha": alpha, "target_modules": sorted(layers),
        "rank_pattern": {p: layer.rank for p, layer in layers.items() if layer.rank != r},
        "alpha_pattern": {p: layer.alpha for p, layer in layers.items() if layer.alpha != alpha},
        "lora_dropout": 0.0, "bias": "none", "use_dora": False, "init_lora_weights": True, "peft_type": "LORA",
    }


def save_lora(model: nnx.Module, path: str | os.PathLike, *, prefix: str = "unet", dtype=np.float32) -> Path:
    """Write the adapters of ``model`` (only them) to ``path``: a ``.safetensors`` file, or a folder that gets
    ``pytorch_lora_weights.safetensors``. Returns the file written."""
    file = _file(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.astype(dtype) for k, v in lora_state_dict(model, prefix=prefix).items()}
    pre = f"{prefix}." if prefix else ""
    meta = {f"{pre}{k}": v for k, v in lora_config_dict(model).items()}
    save_file(tensors, file, metadata={"format": "pt", METADATA_KEY: json.dumps(meta, indent=2, sort_keys=True)})
    return file


def read_lora(path: str | os.PathLike, *, prefix: str = "unet") -> tuple[dict[str, dict[str, np.ndarray]], dict]:
    """Read a LoRA file -> ({module path: {"lora_A", "lora_B"[, "alpha"]} in torch layout}, PEFT config dict).

    Keys for other components (e.g. ``text_encoder.``) are skipped with a warning; ``unet.`` and PEFT's
    ``base_model.model.`` prefixes are removed.
    """
    file = _file(path)
    if not file.is_file():
        raise FileNotFoundError(f"no LoRA weights at {file}")
    with safe_open(file, framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        raw = (f.metadata() or {}).get(METADATA_KEY)
    pre = f"{prefix}." if prefix else ""
    config = {}
    if raw:
        meta = json.loads(raw)
        config = {k[len(pre):]: v for k, v in meta.items() if k.startswith(pre)} if pre else meta
        if pre and not config and not any(k.startswith(pre) for k in tensors):
            config = meta  # an un-prefixed PEFT config
    prefixes = (pre, *_PREFIXES) if pre else _PREFIXES
    modules: dict[str, dict[str, np.ndarray]] = {}
    skipped = []
    for key, value in tensors.items():
        name = next((key[len(p):] for p in prefixes if key.startswith(p)), None)
        if name is None:  # un-prefixed: a bare PEFT state dict, unless it names another component
            name = None if key.split(".", 1)[0] in _OTHER_COMPONENTS else key
        if name is not None and name.endswith(".alpha"):
            modules.setdefault(name[:-len(".alpha")], {})["alpha"] = value
            continue
        m = _KEY.match(name) if name is not None else None
        if m is None:
            skipped.append(key)
            continue
        modules.setdefault(m["module"], {})[m["which"]] = value
    if skipped:
        warnings.warn(f"{file}: skipped {len(skipped)} keys that are not {prefix or 'model'} LoRA weights "
                      f"(e.g. {skipped[0]})", stacklevel=2)
    incomplete = [k for k, v in modules.items() if not {"lora_A", "lora_B"} <= set(v)]
    if incomplete:
        raise ValueError(f"{file}: LoRA modules without both lora_A and lora_B weights: {', '.join(incomplete)}")
    if not modules:
        raise ValueError(f"{file}: no LoRA weights (keys like '{pre}<module>.lora_A.weight') found")
    return modules, config


def _alpha(path: str, rank: int, entry: dict, config: dict) -> float:
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if path == pattern or path.endswith("." + pattern) or re.fullmatch(pattern, path):
            return float(value)
    if "lora_alpha" in config:
        return float(config["lora_alpha"])
    if "alpha" in entry:
        return float(np.asarray(entry["alpha"]).reshape(()))
    return float(rank)


def _expected_shapes(module, rank: int) -> tuple[tuple, tuple]:
    """Torch-layout (lora_A, lora_B) shapes of a rank-``rank`` adapter on ``module``."""
    shape = tuple(module.kernel.shape)
    if len(shape) == 2:
        return (rank, shape[0]), (shape[1], rank)
    return (rank, shape[2], shape[0], shape[1]), (shape[3], rank, 1, 1)


def load_lora(model: nnx.Module, path: str | os.PathLike, *, scale: float = 1.0, prefix: str = "unet",
              freeze_base: bool = True) -> list[str]:
    """Load LoRA weights (a diffusers / PEFT safetensors file or a folder holding one) into ``model`` in place,
    adding adapters where the model has none (or one of another rank), all at run-time ``scale``.

    Every module named in the file must exist as an ``nnx.Linear`` / ``nnx.Conv`` (or LoRA layer) with matching
    shapes, else a ``ValueError`` lists all the offenders and the model is left unchanged. Returns the
    module paths loaded.
    """
    modules, config = read_lora(path, prefix=prefix)
    targets = {**adaptable_modules(model), **lora_layers(model)}
    problems = []
    for name, entry in sorted(modules.items()):
        module = targets.get(name)
        if module is None:
            problems.append(f"{name}: no nnx.Linear/nnx.Conv at this path")
            continue
        a, b = entry["lora_A"].shape, entry["lora_B"].shape
        want_a, want_b = _expected_shapes(module, a[0])
        if (tuple(a), tuple(b)) != (want_a, want_b):
            problems.append(f"{name}: expected lora_A {want_a} and lora_B {want_b}, got {tuple(a)} and {tuple(b)}")
    if problems:
        raise ValueError(f"LoRA weights from {_file(path)} do not fit {type(model).__name__} "
                         f"({len(problems)} problems): " + "; ".join(problems))
    for name, entry in sorted(modules.items()):
        a, b = np.asarray(entry["lora_A"]), np.asarray(entry["lora_B"])
        rank = a.shape[0]
        alpha = _alpha(name, rank, entry, config)
        layer = targets[name]
        a_ours = jax.numpy.asarray(_from_torch(a), layer.kernel.dtype)
        if not isinstance(layer, (LoRALinear, LoRAConv)) or layer.rank != rank:
            layer = wrap_module(model, name, rank=rank, alpha=alpha, scale=scale, freeze_base=freeze_base,
                                lora_a=a_ours)
        layer.unmerge()
        layer.alpha = alpha
        layer.lora_A[...] = a_ours
        layer.lora_B[...] = jax.numpy.asarray(_from_torch(b), layer.lora_B.dtype)
    if freeze_base:
        freeze(model)
    set_lora_scale(model, scale)
    return sorted(modules)


__all__ = ["METADATA_KEY", "WEIGHT_NAME", "LoRAConv", "LoRALinear", "load_lora", "lora_config_dict",
           "lora_state_dict", "read_lora", "save_lora"]
