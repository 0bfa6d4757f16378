"""MobileNetV2 (Sandler et al., 2018) in Flax NNX, as torchvision builds it, for inference: a pretrained image
encoder whose global-average-pooled 1280-d features are an image embedding and the feature space of
:func:`canvas_jax.eval.frechet.mobilenet_frechet_distance`.

torchvision's layout: a 3x3 stride-2 stem (32 channels), 17 inverted residual blocks (1x1 expand, 3x3 depthwise,
1x1 linear projection; a skip when the shape is kept) from the ``(t, c, n, s)`` table below, a 1x1 conv to 1280
channels, global average pool, dropout and a linear classifier. Every conv is followed by BatchNorm (here in
inference mode: running statistics) and ReLU6, except the projections. NHWC throughout; inputs are ImageNet
normalised (:func:`preprocess`). Weights: :func:`canvas_jax.convert.mobilenet.load_mobilenet_v2`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from canvas_jax.images import to_array

# (expand ratio t, output channels c, repeats n, first stride s): torchvision's inverted_residual_setting
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                             (6, 160, 3, 2), (6, 320, 1, 1))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_DIM = 1280


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's ``_make_divisible``: round to a multiple of ``divisor``, never 10% below ``v``."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


@dataclasses.dataclass(frozen=True)
class MobileNetV2Config:
    width_mult: float = 1.0
    num_classes: int | None = 1000  # None: features only, no classifier
    round_nearest: int = 8
    last_channel: int = FEATURE_DIM  # before the width multiplier (torchvision: 1280 * max(1, width_mult))
    bn_eps: float = 1e-5

    @property
    def feature_dim(self) -> int:
        return make_divisible(self.last_channel * max(1.0, self.width_mult), self.round_nearest)


class ConvBN(nnx.Module):
    """Conv (no bias, torch-style symmetric padding) + BatchNorm with running statistics + optional ReLU6."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, *, act: bool = True,
                 eps: float = 1e-5, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        p = (kernel - 1) // 2
        self.conv = nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=((p, p), (p, p)),
                             feature_group_count=groups, use_bias=False, dtype=dtype, rngs=rngs)
        self.bn = nnx.BatchNorm(cout, use_running_average=True, epsilon=eps, dtype=dtype, rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.bn(self.conv(x))
        return jnp.clip(x, 0.0, 6.0) if self.act else x


class InvertedResidual(nnx.Module):
    """1x1 expand (when t != 1) -> 3x3 depthwise (stride s) -> 1x1 linear projection, plus the input when the
    shape is kept."""

    def __init__(self, cin: int, cout: int, stride: int, expand_ratio: int, *, eps: float, rngs: nnx.Rngs,
                 dtype: Any = jnp.float32):
        hidden = int(round(cin * expand_ratio))
        self.use_residual = stride == 1 and cin == cout
        layers = [ConvBN(cin, hidden, 1, eps=eps, rngs=rngs, dtype=dtype)] if expand_ratio != 1 else []
        layers.append(ConvBN(hidden, hidden, 3, stride, hidden, eps=eps, rngs=rngs, dtype=dtype))
        layers.append(ConvBN(hidden, cout, 1, act=False, eps=eps, rngs=rngs, dtype=dtype))
        self.layers = nnx.List(layers)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x
        for layer in self.layers:
            y = layer(y)
        return x + y if self.use_residual else y


class MobileNetV2(nnx.Module):
    """torchvision's ``mobilenet_v2`` in inference mode. ``features(x)``: pooled [N, 1280]; ``__call__``: logits."""

    def __init__(self, config: MobileNetV2Config = MobileNetV2Config(), *, rngs: nnx.Rngs, dtype: Any = jnp.float32):
        self.config = config
        eps, cfg = config.bn_eps, config
        cin = make_divisible(32 * cfg.width_mult, cfg.round_nearest)
        self.stem = ConvBN(3, cin, 3, 2, eps=eps, rngs=rngs, dtype=dtype)
        blocks = []
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            cout = make_divisible(c * cfg.width_mult, cfg.round_nearest)
            for i in range(n):
                blocks.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, eps=eps, rngs=rngs, dtype=dtype))
                cin = cout
        self.blocks = nnx.List(blocks)
        self.head = ConvBN(cin, cfg.feature_dim, 1, eps=eps, rngs=rngs, dtype=dtype)
        self.classifier = (nnx.Linear(cfg.feature_dim, cfg.num_classes, dtype=dtype, rngs=rngs)
                           if cfg.num_classes else None)

    def features(self, x: jax.Array) -> jax.Array:
        """Pooled features [N, feature_dim] of normalised NHWC images (see :func:`preprocess`)."""
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x).mean(axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.classifier is None:
            raise ValueError("this MobileNetV2 has no classifier (num_classes=None); call .features(x)")
        return self.classifier(self.features(x))  # dropout is the identity at inference


def preprocess(images: jax.Array, size: int | None = 224) -> jax.Array:
    """Float NHWC RGB in [0, 1] -> resized to ``size`` x ``size`` (bilinear, antialiased; None: kept) and
    ImageNet-normalised."""
    x = jnp.asarray(images, jnp.float32)
    if size is not None and x.shape[1:3] != (size, size):
        x = jax.image.resize(x, (x.shape[0], size, size, x.shape[3]), "bilinear", antialias=True)
    return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


@nnx.jit(static_argnames=("size",))
def _embed(model: MobileNetV2, images: jax.Array, size: int | None) -> jax.Array:
    return model.features(preprocess(images, size))


def embed_images(model: MobileNetV2, images, *, size: int | None = 224, batch_size: int = 64) -> np.ndarray:
    """Pooled MobileNetV2 features [N, feature_dim] (float32) of images: PIL image(s) or HWC / NHWC arrays (uint8, or
    float in [0, 1]), resized to ``size`` (None: as given). Batches are padded to ``batch_size`` or a power of 2 (few compiled
    shapes)."""
    x = to_array(images, "images")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not len(x):
        raise ValueError("embed_images: expected at least one image, got none")
    out = []
    for start in range(0, len(x), batch_size):
        chunk = x[start:start + batch_size]
        n = len(chunk)
        padded = min(batch_size, 1 << (n - 1).bit_length())  # few compiled shapes: batch_size or a power of 2
        if n < padded:
            chunk = np.concatenate([chunk, np.zeros((padded - n, *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(_embed(model, jnp.asarray(chunk), size))[:n])
    return np.concatenate(out)
