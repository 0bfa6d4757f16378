"""Noise schedules read from a diffusers ``scheduler_config.json``, and the training maths on them.

A :class:`Schedule` is a frozen, hashable dataclass: pass it as a static argument to ``jax.jit`` or
close over it. Its training-time arrays (``betas``, ``alphas_cumprod``) are host numpy float32 arrays
computed exactly as diffusers 0.42 computes them in torch float32, so the sampling plans built from
them (see ``plans.py``) reproduce diffusers' timesteps and sigmas bit for bit.

Forward process (DDPM notation, ``a_t = alphas_cumprod[t]``)::

    x_t = sqrt(a_t) * x0 + sqrt(1 - a_t) * noise          add_noise
    v_t = sqrt(a_t) * noise - sqrt(1 - a_t) * x0          velocity
    snr(t) = a_t / (1 - a_t)                              snr
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
VARIANCE_TYPES = ("fixed_small", "fixed_large")
FINAL_SIGMAS_TYPES = ("zero", "sigma_min")
SOLVER_TYPES = ("midpoint", "heun")
ALGORITHM_TYPES = ("dpmsolver++", "sde-dpmsolver++")  # DPMSolverMultistepScheduler's data-prediction solvers
SOLVER_ORDERS = (2, 3)

# Keys of diffusers configs that select maths we do not implement: only these values are accepted.
_ONLY_VALUES = {
    "thresholding": (False,),
    "timestep_type": ("discrete",),
    "interpolation_type": ("linear",),
    "use_exponential_sigmas": (False,),
    "use_beta_sigmas": (False,),
    "use_lu_lambdas": (False,),
    "use_flow_sigmas": (False,),
    "use_dynamic_shifting": (False,),
}


def _check_choice(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"scheduler config {key}={value!r} is not supported; expected one of {list(allowed)}")


def _torch_linspace_f32(start: float, end: float, n: int) -> np.ndarray:
    """``torch.linspace(start, end, n, dtype=torch.float32)`` bit for bit (a float32 step, fused multiply-add
    from the nearer end), which is how diffusers builds its betas."""
    if n == 1:
        return np.array([start], np.float32)
    start32, end32 = np.float32(start), np.float32(end)
    step = np.float64(np.float32((end32 - start32) / np.float32(n - 1)))
    idx = np.arange(n, dtype=np.float64)
    low = np.float64(start32) + step * idx
    high = np.float64(end32) - step * (n - 1 - idx)
    return np.where(idx < n // 2, low, high).astype(np.float32)


def _cosine_betas(n: int, max_beta: float = 0.999) -> np.ndarray:
    """Betas of the squaredcos_cap_v2 (improved DDPM cosine) schedule, in float64 then float32 like diffusers."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), max_beta) for i in range(n)]
    return np.asarray(betas, dtype=np.float32)


def _cumprod_f32(x: np.ndarray) -> np.ndarray:
    # torch.cumprod on float32 accumulates in double on CPU; so do we.
    return np.cumprod(x.astype(np.float64)).astype(np.float32)


def _rescale_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
    """Rescale betas so the last timestep has zero SNR (Lin et al. 2023, algorithm 1), in float32."""
    alphas_bar_sqrt = np.sqrt(_cumprod_f32(np.float32(1.0) - betas))
    first, last = alphas_bar_sqrt[0], alphas_bar_sqrt[-1]
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * np.float32(first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = np.concatenate([alphas_bar[:1], alphas_bar[1:] / alphas_bar[:-1]])
    return (np.float32(1.0) - alphas).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A diffusion noise schedule plus the scheduler options that change sampling maths.

    ``timestep_spacing`` and ``clip_sample`` may be ``None`` ("not given"): each sampler then uses the
    default of its diffusers scheduler class, as ``XScheduler.from_config(config)`` would. Missing beta
    parameters take DDPMScheduler's defaults (HeunDiscreteScheduler's differ; real configs give them).
    """

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    prediction_type: str = "epsilon"
    timestep_spacing: str | None = None
    steps_offset: int = 0
    set_alpha_to_one: bool = True  # DDIM: the alpha used after the last step
    clip_sample: bool | None = None  # DDPM, DDIM, Heun: clip the predicted x0
    clip_sample_range: float = 1.0
    rescale_betas_zero_snr: bool = False
    use_karras_sigmas: bool = False  # Euler, Heun, DPM++ (the samplers whose diffusers class reads it)
    sigma_min: float | None = None  # Karras sigma range overrides
    sigma_max: float | None = None
    variance_type: str = "fixed_small"  # DDPM
    final_sigmas_type: str = "zero"  # Euler, DPM++
    solver_type: str = "midpoint"  # DPM++
    lower_order_final: bool = True  # DPM++
    euler_at_final: bool = False  # DPM++
    lambda_min_clipped: float = -math.inf  # DPM++
    # DPM++: diffusers' defaults; a DPM++ sampler refuses a config that asks for another variant than its own
    # (see plans.DPM_SAMPLERS). The defaults ask for nothing: diffusers writes them into every saved config.
    algorithm_type: str = "dpmsolver++"
    solver_order: int = 2

    betas: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)
    alphas_cumprod: np.ndarray = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if not isinstance(self.num_train_timesteps, int) or self.num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an int >= 2, got {self.num_train_timesteps!r}")
        _check_choice("beta_schedule", self.beta_schedule, BETA_SCHEDULES)
        _check_choice("prediction_type", self.prediction_type, PREDICTION_TYPES)
        _check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS + (None,))
        _check_choice("variance_type", self.variance_type, VARIANCE_TYPES)
        _check_choice("final_sigmas_type", self.final_sigmas_type, FINAL_SIGMAS_TYPES)
        _check_choice("solver_type", self.solver_type, SOLVER_TYPES)
        _check_choice("algorithm_type", self.algorithm_type, ALGORITHM_TYPES)
        _check_choice("solver_order", self.solver_order, SOLVER_ORDERS)
        for key in ("lower_order_final", "euler_at_final"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"scheduler config {key}={getattr(self, key)!r} is not supported; expected a bool")
        if not isinstance(self.steps_offset, int) or self.steps_offset < 0:
            raise ValueError(f"steps_offset must be an int >= 0, got {self.steps_offset!r}")
        n = self.num_train_timesteps
        if self.trained_betas is not None:
            if not isinstance(self.trained_betas, tuple) or len(self.trained_betas) != n:
                raise ValueError(
                    f"trained_betas must be a tuple of num_train_timesteps={n} floats, got "
                    f"{type(self.trained_betas).__name__} of length {len(self.trained_betas)}"
                )
            betas = np.asarray(self.trained_betas, np.float32)
        elif self.beta_schedule == "linear":
            betas = _torch_linspace_f32(self.beta_start, self.beta_end, n)
        elif self.beta_schedule == "scaled_linear":
            betas = _torch_linspace_f32(self.beta_start**0.5, self.beta_end**0.5, n) ** 2
        else:
            betas = _cosine_betas(n)
        if self.rescale_betas_zero_snr:
            betas = _rescale_zero_terminal_snr(betas)
        alphas_cumprod = _cumprod_f32(np.float32(1.0) - betas)
        for name, value in (("betas", betas), ("alphas_cumprod", alphas_cumprod)):
            value.flags.writeable = False
            object.__setattr__(self, name, value)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Schedule:
        """Build from a diffusers scheduler config dict (any scheduler class).

        Keys we do not need (``_class_name``, ``skip_prk_steps``...) are ignored; keys
        that select maths we do not implement (``thresholding``, ``use_exponential_sigmas``...) must
        hold their default value, and an unsupported value of any honoured key is a ValueError.
        """
        if not isinstance(config, Mapping):
            raise TypeError(f"scheduler config must be a mapping (a parsed scheduler_config.json), got {type(config)}")
        for key, allowed in _ONLY_VALUES.items():
            if config.get(key) is not None:
                _check_choice(key, config[key], allowed)
        kwargs = {}
        for field in dataclasses.fields(cls):
            if field.init and config.get(field.name) is not None:
                kwargs[field.name] = config[field.name]
        if "trained_betas" in kwargs:
            kwargs["trained_betas"] = tuple(float(b) for b in kwargs["trained_betas"])
        for key in ("beta_start", "beta_end", "clip_sample_range", "sigma_min", "sigma_max", "lambda_min_clipped"):
            if key in kwargs:
                kwargs[key] = float(kwargs[key])
        return cls(**kwargs)

    def to_config(self) -> dict[str, Any]:
        """The honoured options as a diffusers-style config dict (``from_config(to_config())`` round-trips)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.init}

    @property
    def sigmas(self) -> np.ndarray:
        """Training sigmas of the variance-exploding view, ``sqrt((1 - a_t) / a_t)``, float32 (inf at zero SNR)."""
        acp = self.alphas_cumprod
        with np.errstate(divide="ignore"):
            return ((np.float32(1.0) - acp) / acp) ** np.float32(0.5)


def _coefficient(sched: Schedule, t: jnp.ndarray, ndim: int) -> jnp.ndarray:
    """``alphas_cumprod[t]`` shaped to broadcast against an array of rank ``ndim`` (t is a scalar or (batch,))."""
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise TypeError(f"timesteps must be integers in [0, {sched.num_train_timesteps}), got dtype {t.dtype}")
    if t.ndim > 1:
        raise ValueError(f"timesteps must be a scalar or a (batch,) vector, got shape {t.shape}")
    a = jnp.asarray(sched.alphas_cumprod)[t]
    return a.reshape(a.shape + (1,) * (ndim - a.ndim))


def add_noise(sched: Schedule, x0: jnp.ndarray, noise: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """Noise clean samples to integer timesteps ``t`` (one per batch row): diffusers' ``DDPMScheduler.add_noise``."""
    a = _coefficient(sched, t, x0.ndim)
    return (jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise).astype(x0.dtype)


def velocity(sched: Schedule, x0: jnp.ndarray, noise: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """The v-prediction target ``sqrt(a_t) * noise - sqrt(1 - a_t) * x0`` (diffusers' ``get_velocity``)."""
    a = _coefficient(sched, t, x0.ndim)
    return (jnp.sqrt(a) * noise - jnp.sqrt(1.0 - a) * x0).astype(x0.dtype)


def snr(sched: Schedule, t: jnp.ndarray) -> jnp.ndarray:
    """Signal-to-noise ratio ``a_t / (1 - a_t)`` at integer timesteps ``t`` (for min-SNR loss weighting)."""
    a = _coefficient(sched, t, jnp.ndim(t))
    return a / (1.0 - a)


def training_target(sched: Schedule, x0: jnp.ndarray, noise: jnp.ndarray, t: jnp.ndarray) -> jnp.ndarray:
    """What the denoiser should output for ``add_noise(sched, x0, noise, t)`` under the schedule's prediction_type."""
    if sched.prediction_type == "epsilon":
        return noise
    if sched.prediction_type == "v_prediction":
        return velocity(sched, x0, noise, t)
    return x0
