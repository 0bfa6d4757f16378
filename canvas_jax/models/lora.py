"""Low-rank adapters (LoRA) for the linear and convolution layers of a model, in place.

``apply_lora(unet, LoRAConfig(rank=4, alpha=4), rngs=nnx.Rngs(0))`` replaces every targeted ``nnx.Linear`` /
``nnx.Conv`` by a :class:`LoRALinear` / :class:`LoRAConv` that keeps the base ``kernel`` / ``bias`` under the
same names and adds ``lora_A`` (in -> rank, same window as the base conv) and ``lora_B`` (rank -> out, 1x1):

    y = base(x) + scale * alpha / rank * B(A(x))

``lora_B`` starts at zero (PEFT's init), so a fresh adapter leaves the model unchanged.

Training only the adapters on the shared loop: ``core_jax.loop.Trainer`` optimises the ``nnx.Param``
variables of the task's model and carries every other variable unchanged. ``lora_A`` / ``lora_B`` are
:class:`LoRAParam` (a subclass of ``nnx.Param``); with ``freeze_base=True`` (the default) ``apply_lora``
turns every other ``nnx.Param`` of the model (base kernels, biases, norms, embeddings) into a
:class:`Frozen` variable, which is not a ``Param``. So a task whose ``create_model`` builds the UNet, loads
its weights and calls ``apply_lora`` trains the adapters alone, with no change to the loop. Full fine-tuning
needs nothing special: do not call ``apply_lora`` and every ``nnx.Param`` trains. ``freeze`` / ``unfreeze``
move any filtered subset between the two kinds.

``scale`` is a variable (:class:`LoRAScale`), so :func:`set_lora_scale` changes it without recompiling.
:func:`merge_lora` folds the adapters into the base kernels in place (no extra cost at inference),
:func:`unmerge_lora` takes them out again, :func:`remove_lora` returns plain layers.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class LoRAParam(nnx.Param):
    """A LoRA factor (``lora_A`` / ``lora_B``): an ``nnx.Param`` (the loop trains it), filterable on its own."""


class Frozen(nnx.Variable):
    """A weight that does not train: not an ``nnx.Param``, so ``core_jax.loop.Trainer`` carries it unchanged."""


class LoRAScale(nnx.Variable):
    """The run-time multiplier of a LoRA branch (a scalar variable: changing it does not recompile)."""


# Target presets: regular expressions matched (fullmatch) against dotted module paths such as
# ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`` (diffusers' module names).
PRESETS: dict[str, tuple[str, ...]] = {
    # attention projections, plus the spatial transformer's proj_in/proj_out (linear or 1x1 conv)
    "attention": (r"(.*\.)?attn\d*\.(to_q|to_k|to_v|to_out\.0)", r"(.*\.)?attentions\.\d+\.(proj_in|proj_out)"),
    # ResNet convolutions and the down/upsampling convolutions
    "conv": (r"(.*\.)?resnets\.\d+\.(conv1|conv2|conv_shortcut)", r"(.*\.)?(downsamplers|upsamplers)\.\d+\.conv"),
    "ff": (r"(.*\.)?ff\.net\.(0\.proj|2)",),
    "time": (r"(.*\.)?time_emb_proj", r"time_embedding\.linear_[12]"),
}


@dataclasses.dataclass
class LoRAConfig:
    """Which layers get adapters and how big they are.

    ``targets``: preset names (see :data:`PRESETS`: attention, conv, ff, time) or regular expressions that
    must fully match a dotted module path. ``alpha / rank`` scales the branch (PEFT's ``lora_alpha``);
    ``scale`` is the initial run-time multiplier; ``freeze_base`` freezes every non-LoRA parameter.
    """

    rank: int = 4
    alpha: float = 4.0
    targets: tuple[str, ...] = ("attention", "conv")
    scale: float = 1.0
    freeze_base: bool = True


# ----------------------------------------------------------------------------------------------------
# Variable surgery helpers.


def _metadata(var: nnx.Variable) -> dict[str, Any]:
    return dict(var.get_metadata())


def _names(var: nnx.Variable) -> tuple | None:
    return var.get_metadata().get("out_sharding")


def _retype(var: nnx.Variable | None, cls: type[nnx.Variable]) -> nnx.Variable | None:
    """``var`` as a variable of type ``cls`` with the same value and metadata (itself if it already is one)."""
    if var is None or type(var) is cls:
        return var
    return cls(var.get_value(), **_metadata(var))


def path_str(path: Sequence) -> str:
    return ".".join(str(p) for p in path)


def _resolve(root, path: Sequence):
    node = root
    for p in path:
        node = node[p] if isinstance(p, int) else getattr(node, p)
    return node


def _assign(root, path: Sequence, value) -> None:
    parent, key = _resolve(root, path[:-1]), path[-1]
    if isinstance(key, int):
        parent[key] = value
    else:
        setattr(parent, key, value)


def _variables(model: nnx.Module) -> list[tuple[tuple, nnx.Variable]]:
    seen, out = set(), []
    for path, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Variable) and id(node) not in seen:
            seen.add(id(node))
            out.append((tuple(path), node))
    return out


def freeze(model: nnx.Module, wrt=nnx.Param) -> int:
    """Turn the ``nnx.Param`` variables matching the filter ``wrt`` (LoRA factors excepted) into :class:`Frozen`
    ones, in place; returns how many were frozen."""
    match = nnx.filterlib.to_predicate(wrt)
    n = 0
    for path, var in _variables(model):
        if isinstance(var, nnx.Param) and not isinstance(var, LoRAParam) and match(path, var):
            _assign(model, path, _retype(var, Frozen))
            n += 1
    return n


def unfreeze(model: nnx.Module) -> int:
    """Turn every :class:`Frozen` variable back into an ``nnx.Param``, in place; returns how many."""
    n = 0
    for path, var in _variables(model):
        if isinstance(var, Frozen):
            _assign(model, path, _retype(var, nnx.Param))
            n += 1
    return n


# ----------------------------------------------------------------------------------------------------
# The adapted layers.


def _lora_a_init(key, shape, dtype):
    """PEFT's ``kaiming_uniform_(a=sqrt(5))``: uniform in +-1/sqrt(fan_in), fan_in = in x window."""
    return nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")(key, shape, dtype)


def _delta(a: jax.Array, b: jax.Array) -> jax.Array:
    """``A @ B`` in the kernel layout: [in, r] @ [r, out], or HWIO [h, w, in, r] with [1, 1, r, out]."""
    hi = jax.lax.Precision.HIGHEST
    if a.ndim == 2:
        return jnp.matmul(a, b, precision=hi)
    return jnp.einsum("hwir,ro->hwio", a, b[0, 0], precision=hi)


@functools.partial(jax.jit, static_argnames="sign")
def _folded(kernels, a, b, factors, sign):
    return [(k + sign * f * _delta(x, y)).astype(k.dtype) for k, x, y, f in zip(kernels, a, b, factors)]


def _fold(layers: Sequence, *, merge: bool) -> None:
    """Merge (or unmerge) the adapters of ``layers`` that are not (or are) merged, in one compiled program."""
    todo = [layer for layer in layers if layer.merged != merge]
    if not todo:
        return
    new = _folded([layer.kernel[...] for layer in todo], [layer.lora_A[...] for layer in todo],
                  [layer.lora_B[...] for layer in todo], [layer.factor for layer in todo], 1.0 if merge else -1.0)
    for layer, kernel in zip(todo, new):
        layer.kernel[...] = kernel
        layer.merged = merge


def _lora_a_inits(key: jax.Array, shapes: Sequence[tuple], dtype) -> list[jax.Array]:
    """PEFT's lora_A init for many layers from one random draw (one device program, not one per shape)."""
    sizes = [int(np.prod(s)) for s in shapes]
    draw = jax.random.uniform(key, (sum(sizes),), jnp.float32, -1.0, 1.0)
    if not isinstance(draw, jax.core.Tracer):
        draw = np.asarray(draw)  # slice on the host when running eagerly
    out, start = [], 0
    for shape, n in zip(shapes, sizes):
        fan_in = n // shape[-1]
        out.append((draw[start:start + n].reshape(shape) / np.sqrt(fan_in)).astype(dtype))
        start += n
    return out


class _LoRABase(nnx.Module):
    """Shared state of LoRALinear and LoRAConv: the base weights, the two factors, the scale, merge state."""

    def _setup(self, base, a_shape, b_shape, a_names, b_names, *, rank: int, alpha: float, scale: float,
               rngs: nnx.Rngs | None, freeze_base: bool, lora_a: jax.Array | None):
        if rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {rank}")
        self.rank, self.alpha = int(rank), float(alpha)
        self.dtype, self.precision = base.dtype, base.precision
        kind = Frozen if freeze_base else nnx.Param
        self.kernel = _retype(base.kernel, kind)
        self.bias = _retype(base.bias, kind)
        param_dtype = base.kernel.dtype
        if lora_a is None:
            lora_a = _lora_a_init((rngs or nnx.Rngs(0)).params(), a_shape, param_dtype)
        elif tuple(lora_a.shape) != tuple(a_shape):
            raise ValueError(f"lora_A must have shape {a_shape}, got {tuple(lora_a.shape)}")
        self.lora_A = LoRAParam(jnp.asarray(lora_a, param_dtype), out_sharding=a_names)
        # host zeros: no per-shape device program when built eagerly
        self.lora_B = LoRAParam(jnp.asarray(np.zeros(b_shape, jnp.dtype(param_dtype))), out_sharding=b_names)
        self.scale = LoRAScale(jnp.asarray(scale, jnp.float32))
        self.merged = False

    @property
    def factor(self) -> jax.Array:
        """``scale * alpha / rank``: the multiplier of the low-rank branch."""
        return self.scale[...] * (self.alpha / self.rank)

    def delta_kernel(self) -> jax.Array:
        """The low-rank update ``A @ B`` in the base kernel's layout (without the factor)."""
        return _delta(self.lora_A[...], self.lora_B[...])

    def _compute_dtype(self, x):
        return self.dtype or jnp.result_type(x, self.kernel[...])

    def merge(self) -> None:
        """Fold the adapter into ``kernel`` (in place); the branch is then skipped."""
        _fold([self], merge=True)

    def unmerge(self) -> None:
        """Subtract a merged adapter from ``kernel`` again (in place)."""
        _fold([self], merge=False)


class LoRALinear(_LoRABase):
    """``nnx.Linear`` plus a low-rank branch: ``x @ kernel + bias + factor * (x @ lora_A) @ lora_B``."""

    def __init__(self, base: nnx.Linear, *, rank: int, alpha: float, scale: float = 1.0,
                 rngs: nnx.Rngs | None = None, freeze_base: bool = True, lora_a: jax.Array | None = None):
        d_in, d_out = base.kernel.shape
        names = _names(base.kernel) or (None, None)
        self.in_features, self.out_features = d_in, d_out
        self._setup(base, (d_in, rank), (rank, d_out), (names[0], None), (None, names[1]), rank=rank, alpha=alpha,
                    scale=scale, rngs=rngs, freeze_base=freeze_base, lora_a=lora_a)

    def delta_kernel(self) -> jax.Array:
        return _delta(self.lora_A[...], self.lora_B[...])

    def __call__(self, x: jax.Array) -> jax.Array:
        dt = self._compute_dtype(x)
        x = x.astype(dt)
        y = jnp.matmul(x, self.kernel[...].astype(dt), precision=self.precision)
        if self.bias is not None:
            y = y + self.bias[...].astype(dt)
        if not self.merged:
            h = jnp.matmul(x, self.lora_A[...].astype(dt), precision=self.precision)
            y = y + (self.factor.astype(dt) * jnp.matmul(h, self.lora_B[...].astype(dt), precision=self.precision))
        return y


def _pairs(value, n: int, what: str) -> tuple:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"LoRAConv: {what}={value} does not have one entry per spatial dimension ({n})")
    return value


class LoRAConv(_LoRABase):
    """``nnx.Conv`` (NHWC, HWIO kernel) plus ``factor * conv1x1(conv(x, lora_A), lora_B)``; ``lora_A`` has the
    base conv's window, stride, padding and dilation (PEFT's layout for Conv2d adapters)."""

    def __init__(self, base: nnx.Conv, *, rank: int, alpha: float, scale: float = 1.0,
                 rngs: nnx.Rngs | None = None, freeze_base: bool = True, lora_a: jax.Array | None = None):
        shape = tuple(base.kernel.shape)
        if len(shape) != 4:
            raise ValueError(f"LoRAConv supports 2-D convolutions (4-D HWIO kernels), got kernel shape {shape}")
        if base.feature_group_count != 1:
            raise ValueError(f"LoRAConv supports ungrouped convolutions, got feature_group_count="
                             f"{base.feature_group_count}")
        padding = base.padding
        if isinstance(padding, str):
            if padding.upper() not in ("SAME", "VALID"):
                raise ValueError(f"LoRAConv supports 'SAME', 'VALID' or explicit padding, got {padding!r}")
            padding = padding.upper()
        elif isinstance(padding, int):
            padding = ((padding, padding),) * 2
        else:
            padding = tuple((p, p) if isinstance(p, int) else tuple(p) for p in padding)
        self.padding, self.feature_group_count = padding, 1
        self.strides = _pairs(base.strides or 1, 2, "strides")
        self.input_dilation = _pairs(base.input_dilation or 1, 2, "input_dilation")
        self.kernel_dilation = _pairs(base.kernel_dilation or 1, 2, "kernel_dilation")
        kh, kw, c_in, c_out = shape
        self.in_features, self.out_features = c_in, c_out
        names = _names(base.kernel) or (None, None, None, None)
        self._setup(base, (kh, kw, c_in, rank), (1, 1, rank, c_out), (None, None, names[2], None),
                    (None, None, None, names[3]), rank=rank, alpha=alpha, scale=scale, rngs=rngs,
                    freeze_base=freeze_base, lora_a=lora_a)

    def delta_kernel(self) -> jax.Array:
        return _delta(self.lora_A[...], self.lora_B[...])

    def _conv(self, x, kernel):
        return jax.lax.conv_general_dilated(
            x, kernel, window_strides=self.strides, padding=self.padding, lhs_dilation=self.input_dilation,
            rhs_dilation=self.kernel_dilation, dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=self.precision)

    def __call__(self, x: jax.Array) -> jax.Array:
        if x.ndim != 4:
            raise ValueError(f"LoRAConv expects NHWC input, got shape {x.shape}")
        dt = self._compute_dtype(x)
        x = x.astype(dt)
        y = self._conv(x, self.kernel[...].astype(dt))
        if self.bias is not None:
            y = y + self.bias[...].astype(dt)
        if not self.merged:
            h = self._conv(x, self.lora_A[...].astype(dt))
            up = jnp.matmul(h, self.lora_B[...][0, 0].astype(dt), precision=self.precision)
            y = y + self.factor.astype(dt) * up
        return y


LoRALayer = LoRALinear | LoRAConv


# ----------------------------------------------------------------------------------------------------
# Model-level operations.


def compile_targets(targets: Iterable[str]) -> list[re.Pattern]:
    """Preset names and regular expressions -> compiled patterns (an invalid expression names itself)."""
    if isinstance(targets, str):
        targets = (targets,)
    out = []
    for t in targets:
        for expr in PRESETS.get(t, (t,)):
            try:
                out.append(re.compile(expr))
            except re.error as e:
                raise ValueError(f"LoRA target {t!r} is neither a preset ({', '.join(PRESETS)}) nor a valid regular "
                                 f"expression: {e}") from None
    return out


def adaptable_modules(model: nnx.Module) -> dict[str, nnx.Module]:
    """Dotted path -> every plain ``nnx.Linear`` / ``nnx.Conv`` of ``model`` (what LoRA can adapt)."""
    return {path_str(p): m for p, m in nnx.iter_modules(model)
            if type(m) in (nnx.Linear, nnx.Conv)}


def lora_layers(model: nnx.Module) -> dict[str, LoRALayer]:
    """Dotted path -> every LoRA layer of ``model``, in a stable (sorted) order."""
    found = {path_str(p): m for p, m in nnx.iter_modules(model) if isinstance(m, (LoRALinear, LoRAConv))}
    return dict(sorted(found.items()))


def wrap_module(model: nnx.Module, path: str, *, rank: int, alpha: float, scale: float = 1.0,
                rngs: nnx.Rngs | None = None, freeze_base: bool = True, lora_a: jax.Array | None = None) -> LoRALayer:
    """Replace the ``nnx.Linear`` / ``nnx.Conv`` at dotted ``path`` by its LoRA layer (in place); returns it.
    A LoRA layer already there is replaced by a fresh adapter on the same base weights."""
    parts = tuple(int(p) if p.isdigit() else p for p in path.split("."))
    try:
        base = _resolve(model, parts)
    except (AttributeError, IndexError, TypeError):
        raise ValueError(f"LoRA: the model has no module at {path!r}") from None
    kw = dict(rank=rank, alpha=alpha, scale=scale, rngs=rngs, freeze_base=freeze_base, lora_a=lora_a)
    if isinstance(base, (LoRALinear, LoRAConv)):  # re-adapt: start again from its base weights
        base.unmerge()
    if type(base) in (nnx.Linear, LoRALinear):
        layer = LoRALinear(base, **kw)
    elif type(base) in (nnx.Conv, LoRAConv):
        layer = LoRAConv(base, **kw)
    else:
        raise ValueError(f"LoRA: module {path!r} is a {type(base).__name__}, expected nnx.Linear or nnx.Conv")
    _assign(model, parts, layer)
    return layer


def apply_lora(model: nnx.Module, config: LoRAConfig | None = None, *, rngs: nnx.Rngs | None = None,
               **overrides) -> list[str]:
    """Add LoRA adapters to the layers of ``model`` that ``config.targets`` select, in place.

    ``overrides`` replace config fields (``apply_lora(unet, rank=8, targets=("attention",))``). With
    ``freeze_base`` every other parameter becomes :class:`Frozen`. Returns the adapted module paths.
    """
    cfg = dataclasses.replace(config or LoRAConfig(), **overrides)
    patterns = compile_targets(cfg.targets)
    candidates = adaptable_modules(model)
    chosen = [p for p in candidates if any(pat.fullmatch(p) for pat in patterns)]
    if not chosen:
        example = ", ".join(list(candidates)[:3])
        raise ValueError(f"LoRA targets {tuple(cfg.targets)} match no nnx.Linear/nnx.Conv module of "
                         f"{type(model).__name__}; module paths look like: {example or '(none)'}")
    rngs = rngs or nnx.Rngs(0)
    shapes = []
    for path in chosen:
        k = candidates[path].kernel.shape
        shapes.append((k[0], cfg.rank) if len(k) == 2 else (*k[:3], cfg.rank))
    inits = _lora_a_inits(rngs.params(), shapes, candidates[chosen[0]].kernel.dtype)
    for path, lora_a in zip(chosen, inits):
        wrap_module(model, path, rank=cfg.rank, alpha=cfg.alpha, scale=cfg.scale, freeze_base=cfg.freeze_base,
                    lora_a=lora_a)
    if cfg.freeze_base:
        freeze(model)
    return chosen


def _require_lora(model: nnx.Module) -> dict[str, LoRALayer]:
    layers = lora_layers(model)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no LoRA layers: call apply_lora or load_lora first")
    return layers


def set_lora_scale(model: nnx.Module, scale: float) -> None:
    """Set the run-time multiplier of every adapter (merged adapters are re-merged at the new scale)."""
    layers = list(_require_lora(model).values())
    merged = [layer for layer in layers if layer.merged]
    _fold(merged, merge=False)
    for layer in layers:
        layer.scale[...] = jnp.asarray(scale, jnp.float32)
    _fold(merged, merge=True)


def merge_lora(model: nnx.Module) -> None:
    """Fold every adapter into its base kernel in place (the branch is then skipped)."""
    _fold(list(_require_lora(model).values()), merge=True)


def unmerge_lora(model: nnx.Module) -> None:
    """Take merged adapters back out of the base kernels in place."""
    _fold(list(_require_lora(model).values()), merge=False)


def _plain(layer: LoRALayer) -> nnx.Module:
    """The plain nnx.Linear / nnx.Conv with ``layer``'s current kernel and bias (no random initialisation)."""
    kw = dict(use_bias=layer.bias is not None, dtype=layer.dtype, param_dtype=layer.kernel.dtype,
              precision=layer.precision)
    if isinstance(layer, LoRALinear):
        plain = nnx.eval_shape(lambda: nnx.Linear(layer.in_features, layer.out_features, rngs=nnx.Rngs(0), **kw))
    else:
        kh, kw_ = layer.kernel.shape[:2]
        plain = nnx.eval_shape(lambda: nnx.Conv(
            layer.in_features, layer.out_features, (kh, kw_), strides=layer.strides, padding=layer.padding,
            input_dilation=layer.input_dilation, kernel_dilation=layer.kernel_dilation, rngs=nnx.Rngs(0), **kw))
    plain.kernel = _retype(layer.kernel, nnx.Param)
    if layer.bias is not None:
        plain.bias = _retype(layer.bias, nnx.Param)
    return plain


def remove_lora(model: nnx.Module, *, merge: bool = True) -> None:
    """Replace every LoRA layer by a plain ``nnx.Linear`` / ``nnx.Conv`` (with the adapter folded in when
    ``merge``, else the base weights) and unfreeze the model, in place: e.g. before ``save_unet``."""
    layers = _require_lora(model)
    _fold(list(layers.values()), merge=merge)
    for path, layer in layers.items():
        _assign(model, tuple(int(p) if p.isdigit() else p for p in path.split(".")), _plain(layer))
    unfreeze(model)
