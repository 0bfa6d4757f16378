"""IP-Adapter weights in and out of our UNet, in the file format diffusers' ``pipe.load_ip_adapter`` reads.

One safetensors file (``ip-adapter_sd15.safetensors``, ``ip-adapter-plus_sd15.safetensors``...) with the original
IP-Adapter key names::

    image_proj.proj.weight / .bias, image_proj.norm.weight / .bias            plain: linear to 4 tokens + LayerNorm
    image_proj.latents, image_proj.proj_in.*, image_proj.proj_out.*, image_proj.norm_out.*,
    image_proj.layers.<l>.0.{norm1,norm2,to_q,to_kv,to_out}.*, image_proj.layers.<l>.1.{0,1,3}.*   Plus resampler
    ip_adapter.<2i+1>.to_k_ip.weight, ip_adapter.<2i+1>.to_v_ip.weight       the i-th cross-attention layer

where the cross-attention layers are counted in diffusers' ``attn_processors`` order (down, up, mid blocks) and
the even indices are the self-attention slots (diffusers' ``_convert_ip_adapter_attn_to_diffusers`` starts at 1
and steps by 2). The image encoder is a transformers ``CLIPVisionModelWithProjection`` folder beside it
(:mod:`canvas_jax.convert.clip_vision`). diffusers rebuilds the plain projection with 4 tokens and the Plus
resampler with depth 4, 64-wide heads and an MLP ratio of 4: exports outside that shape load here but not there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
from flax import nnx
from safetensors import safe_open

from core_jax.state_dict import StateDictMismatch, empty_module, load_state_dict, to_state_dict
from core_jax.model_folder import save_safetensors
from canvas_jax.models.ip_adapter import (
    PLUS_HEAD_DIM,
    ImageProjection,
    IPAdapterPlusImageProjection,
    attach_ip_adapter,
    cross_attention_layers,
)

WEIGHT_NAME = "ip-adapter.safetensors"


# (our key, original key) templates: {l} is a layer index, {p} weight or bias. to_k / to_v <-> to_kv is separate.
_PLUS = [("layers.{l}.ln0.{p}", "layers.{l}.0.norm1.{p}"),
         ("layers.{l}.ln1.{p}", "layers.{l}.0.norm2.{p}"),
         ("layers.{l}.attn.to_q.weight", "layers.{l}.0.to_q.weight"),
         ("layers.{l}.attn.to_out.0.weight", "layers.{l}.0.to_out.weight"),
         ("layers.{l}.ff.0.{p}", "layers.{l}.1.0.{p}"),
         ("layers.{l}.ff.1.net.0.proj.weight", "layers.{l}.1.1.weight"),
         ("layers.{l}.ff.1.net.2.weight", "layers.{l}.1.3.weight")]
_PLAIN = [("image_embeds.{p}", "proj.{p}")]
_TO_KV = re.compile(r"layers\.(\d+)\.attn\.to_([kv])\.weight")


def _pattern(template: str) -> re.Pattern:
    return re.compile(re.escape(template).replace(r"\{l\}", r"(?P<l>\d+)").replace(r"\{p\}", r"(?P<p>weight|bias)"))


def _rename(key: str, table, forward: bool) -> str:
    """Our key -> the original key (``forward``), or back; keys no template matches keep their name."""
    for ours, orig in table:
        src, dst = (ours, orig) if forward else (orig, ours)
        m = _pattern(src).fullmatch(key)
        if m:
            return dst.format(**m.groupdict())
    return key


def image_proj_state_dict(image_proj) -> dict[str, np.ndarray]:
    """The projection's weights with the original IP-Adapter key names (no ``image_proj.`` prefix)."""
    ours = to_state_dict(image_proj)
    if isinstance(image_proj, ImageProjection):
        return {_rename(k, _PLAIN, True): v for k, v in ours.items()}
    out, kv = {}, {}
    for key, value in ours.items():
        m = _TO_KV.fullmatch(key)
        if m:
            kv.setdefault(m[1], {})[m[2]] = value
        else:
            out[_rename(key, _PLUS, True)] = value
    for layer, pair in kv.items():
        out[f"layers.{layer}.0.to_kv.weight"] = np.concatenate([pair["k"], pair["v"]], axis=0)
    return out


def _from_original(image_proj, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Original-format projection weights -> our module's key names (to_kv split into to_k / to_v)."""
    if isinstance(image_proj, ImageProjection):
        return {_rename(k, _PLAIN, False): v for k, v in weights.items()}
    out = {}
    for key, value in weights.items():
        m = re.fullmatch(r"layers\.(\d+)\.0\.to_kv\.weight", key)
        if m:
            k, v = np.split(np.asarray(value), 2, axis=0)
            out[f"layers.{m[1]}.attn.to_k.weight"], out[f"layers.{m[1]}.attn.to_v.weight"] = k, v
        else:
            out[_rename(key, _PLUS, False)] = value
    return out


def ip_adapter_state_dict(unet) -> dict[str, np.ndarray]:
    """The UNet's IP-Adapter as one flat dict in the file format (``image_proj.*``, ``ip_adapter.<i>.*``)."""
    if unet.ip_adapter is None:
        raise ValueError("the UNet has no IP-Adapter to export: attach or load one first")
    out = {f"image_proj.{k}": v for k, v in image_proj_state_dict(unet.ip_adapter.image_proj).items()}
    for i, (_, attn) in enumerate(cross_attention_layers(unet)):
        for name, value in to_state_dict(attn.ip_adapter).items():
            out[f"ip_adapter.{2 * i + 1}.{name}"] = value
    return out


def save_ip_adapter(unet, path: str | os.PathLike, *, weight_name: str = WEIGHT_NAME, dtype=np.float32) -> Path:
    """Write the UNet's IP-Adapter to ``path`` (a ``.safetensors`` file, or a folder that gets ``weight_name``);
    ``pipe.load_ip_adapter(folder, subfolder="", weight_name=...)`` in diffusers loads it. Returns the file."""
    path = Path(path)
    file = path if path.suffix == ".safetensors" else path / weight_name
    file.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors({k: v.astype(dtype) for k, v in ip_adapter_state_dict(unet).items()}, file)
    return file


def read_ip_adapter(file: str | os.PathLike) -> dict[str, np.ndarray]:
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"no IP-Adapter weights at {file} (expected a .safetensors file)")
    if file.suffix != ".safetensors":
        raise ValueError(f"{file}: IP-Adapter weights must be a .safetensors file (pickled .bin files are not read)")
    with safe_open(str(file), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)


def build_image_proj(weights: dict[str, np.ndarray], *, what: str, dtype=None, param_dtype=np.float32):
    """An empty projection module shaped like the original-format ``image_proj`` weights (plain or Plus)."""
    def shape(key):
        if key not in weights:
            raise ValueError(f"{what}: missing image_proj.{key} (have: {', '.join(sorted(weights)) or 'nothing'})")
        return weights[key].shape

    kw = dict(dtype=dtype, param_dtype=param_dtype)
    if "proj.weight" in weights and "norm.weight" in weights and "proj.2.weight" not in weights:
        rows, dim = shape("proj.weight")
        cross = shape("norm.weight")[0]
        if rows % cross:
            raise ValueError(f"{what}: image_proj.proj.weight has {rows} rows, not a multiple of the "
                             f"cross_attention_dim {cross} of image_proj.norm.weight")
        return empty_module(lambda: ImageProjection(dim, cross, rows // cross, rngs=nnx.Rngs(0), **kw))
    if "latents" in weights:
        _, queries, hidden = shape("latents")
        inner = shape("layers.0.0.to_q.weight")[0]
        if inner % PLUS_HEAD_DIM:
            raise ValueError(f"{what}: image_proj.layers.0.0.to_q.weight has {inner} rows; IP-Adapter Plus heads are "
                             f"{PLUS_HEAD_DIM} wide")
        depth = 1 + max(int(m[1]) for k in weights if (m := re.match(r"layers\.(\d+)\.", k)))
        cfg = dict(embed_dims=shape("proj_in.weight")[1], output_dims=shape("proj_out.weight")[0],
                   hidden_dims=hidden, depth=depth, dim_head=PLUS_HEAD_DIM, heads=inner // PLUS_HEAD_DIM,
                   num_queries=queries, ffn_ratio=shape("layers.0.1.1.weight")[0] / hidden)
        return empty_module(lambda: IPAdapterPlusImageProjection(**cfg, rngs=nnx.Rngs(0), **kw))
    raise ValueError(f"{what}: unsupported image_proj weights (keys {sorted(weights)[:6]}...); supported: the plain "
                     "IP-Adapter (image_proj.proj + image_proj.norm) and IP-Adapter Plus (image_proj.latents ...)")


def load_ip_adapter(unet, path: str | os.PathLike, *, weight_name: str = WEIGHT_NAME, scale: float = 1.0) -> bool:
    """Load an IP-Adapter file (or a folder holding ``weight_name``) into ``unet`` in place at ``scale``.

    Every key must fit: unknown, missing or mis-shaped keys are reported together in ONE
    :class:`~core_jax.state_dict.StateDictMismatch`, and the UNet is left unchanged. Returns True
    when the projection is the Plus resampler (it reads the encoder's penultimate hidden states).
    """
    path = Path(path)
    file = path if path.suffix == ".safetensors" else path / weight_name
    tensors = read_ip_adapter(file)
    what = f"IP-Adapter from {file}"
    other = sorted(k for k in tensors if not k.startswith(("image_proj.", "ip_adapter.")))
    proj_w = {k[len("image_proj."):]: v for k, v in tensors.items() if k.startswith("image_proj.")}
    image_proj = build_image_proj(proj_w, what=what, param_dtype=unet.conv_in.kernel[...].dtype, dtype=unet.dtype)

    # expected keys and shapes (file layout) from an empty adapter on a structural copy of the layers
    expected = {f"image_proj.{k}": v.shape for k, v in image_proj_state_dict(image_proj).items()}
    layers = cross_attention_layers(unet)
    for i, (_, attn) in enumerate(layers):
        inner, context = attn.to_k.out_features, attn.to_k.in_features
        for name in ("to_k_ip", "to_v_ip"):
            expected[f"ip_adapter.{2 * i + 1}.{name}.weight"] = (inner, context)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(k for k in tensors if k not in expected and k not in other) + other
    shapes = [(k, tuple(expected[k]), tuple(tensors[k].shape)) for k in sorted(expected)
              if k in tensors and tuple(tensors[k].shape) != tuple(expected[k])]
    if missing or unexpected or shapes:
        raise StateDictMismatch(what, missing, unexpected, shapes)

    load_state_dict(image_proj, _from_original(image_proj, proj_w), what=f"{what}: image_proj")
    attach_ip_adapter(unet, image_proj, rngs=nnx.Rngs(0), scale=scale)
    for i, (_, attn) in enumerate(layers):
        load_state_dict(attn.ip_adapter, {f"{n}.weight": tensors[f"ip_adapter.{2 * i + 1}.{n}.weight"]
                                          for n in ("to_k_ip", "to_v_ip")}, what=f"{what}: ip_adapter.{2 * i + 1}")
    return isinstance(image_proj, IPAdapterPlusImageProjection)


__all__ = ["WEIGHT_NAME", "build_image_proj", "image_proj_state_dict", "ip_adapter_state_dict", "load_ip_adapter",
           "read_ip_adapter", "save_ip_adapter"]
