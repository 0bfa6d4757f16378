"""Samplers (DDPM, DDIM, Euler, Euler ancestral, Heun, DPM++ 2M / 3M and their SDE variants) as one
``lax.scan`` each.

``sample`` reproduces what a diffusers pipeline does around its scheduler, number for number:
``latents * init_noise_sigma``, ``scale_model_input``, ``step``; img2img's ``add_noise`` at the first
used timestep; and the mask blend of the inpainting pipeline after every scheduler step. The loop over
steps is one ``lax.scan``, so under ``jax.jit`` (with ``sampler``, ``num_steps``, ``start_step``,
``eta`` and ``use_karras_sigmas`` static) ``model_fn`` is traced once per evaluation site, not per step.

Per-step noise of the stochastic samplers (ddpm, euler_a, ddim with eta > 0, dpmpp_*_sde) is, for step ``i``
counted from 0 over all ``num_steps`` steps (img2img runs keep the same numbering)::

    z_i = jax.random.normal(jax.random.fold_in(rng, i), noise.shape, jnp.float32)

Their steps are Gaussian transitions ``x' ~ N(mean(x), c_noise^2 I)``: ``sample(..., return_log_probs=True)`` also
returns every step's log-density under the policy that took it and the states it went through (a
:class:`Trajectory`), and :func:`transition_log_prob` re-evaluates one step's log-density under another model
(the policy-gradient ratio of DDPO-style fine-tuning).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from canvas_jax.diffusion.plans import DPM_SAMPLERS, HEUN_KEYS, STEP_KEYS, Plan, make_plan
from canvas_jax.diffusion.schedules import Schedule

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]


LOG_PROB_SAMPLERS = ("ddpm", "ddim", "euler_a")  # one-step stochastic samplers: transition_log_prob re-evaluates them


class Trajectory(NamedTuple):
    """What ``sample(..., return_log_probs=True)`` returns. ``states``: ``[S + 1, *noise.shape]`` float32 sampler
    states, the state before each of the S steps run and the final one (sigma-based samplers keep their own
    scaling: ``states[0]`` is ``noise * init_noise_sigma``); ``log_probs``: ``[B, S]`` float32, the log-density
    of each step's transition summed over the latent (0 for a step that adds no noise, e.g. DDPM's last). With
    ``start_step`` (img2img), column ``j`` is step ``start_step + j`` of the plan."""

    latents: jax.Array
    states: jax.Array
    log_probs: jax.Array


def gaussian_log_prob(x_next: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """``log N(x_next; mean, std^2 I)`` summed over all axes but the first: ``[B]``; 0 where ``std`` is 0 (a
    deterministic step has no density to differentiate)."""
    std = jnp.asarray(std, jnp.float32)
    safe = jnp.where(std > 0, std, 1.0)
    z = (x_next.astype(jnp.float32) - mean.astype(jnp.float32)) / safe
    per_dim = -0.5 * jnp.square(z) - jnp.log(safe) - 0.5 * jnp.log(2.0 * jnp.pi)
    return jnp.where(std > 0, jnp.sum(per_dim.reshape(per_dim.shape[0], -1), axis=-1), 0.0)


class NoiseLevel(NamedTuple):
    """How noisy the sampler's state is at some step: clean latents there are ``signal * x0 + noise * eps``."""

    signal: jax.Array
    noise: jax.Array

    def apply(self, x0: jax.Array, eps: jax.Array) -> jax.Array:
        return self.signal * x0 + self.noise * eps


BlendFn = Callable[[jax.Array, NoiseLevel], jax.Array]


def step_noise(rng: jax.Array, step: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The unit normal noise a stochastic sampler adds at step ``step`` (see the module docstring)."""
    return jax.random.normal(jax.random.fold_in(rng, step), shape, jnp.float32)


def inpaint_blend(init_latents: jax.Array, mask: jax.Array, noise: jax.Array) -> BlendFn:
    """diffusers' inpainting blend for a 4-channel UNet: keep ``init_latents`` (noised to the sampler's
    current level with ``noise``) where ``mask`` is 0, the sample where it is 1 (mask broadcasts)."""

    def blend(x: jax.Array, level: NoiseLevel) -> jax.Array:
        return (1.0 - mask) * level.apply(init_latents, noise) + mask * x

    return blend


def noise_latents(
    sched: Schedule,
    init_latents: jax.Array,
    noise: jax.Array,
    *,
    sampler: str,
    num_steps: int,
    start_step: int,
    use_karras_sigmas: bool | None = None,
) -> jax.Array:
    """img2img start: ``init_latents`` noised to the first step run, as the sampler's ``add_noise`` does."""
    plan = make_plan(sched, sampler, num_steps, start_step=start_step, use_karras_sigmas=use_karras_sigmas)
    level = NoiseLevel(plan.steps["start_signal"][start_step], plan.steps["start_noise"][start_step])
    return level.apply(init_latents.astype(jnp.float32), noise.astype(jnp.float32))


def _clip(x0: jax.Array, clip: float | None) -> jax.Array:
    return x0 if clip is None else jnp.clip(x0, -clip, clip)


def _predict_x0(model_fn: ModelFn, plan: Plan, dtype, x, t, in_scale, pred_x, pred_out):
    out = model_fn((in_scale * x).astype(dtype), t).astype(jnp.float32)
    return out, _clip(pred_x * x + pred_out * out, plan.clip)


def _step_mean(sampler: str, k: dict, x, out, x0, x0_prevs=()):
    """The affine step without its noise term (``plans``' module docstring)."""
    mean = k["c_x"] * x + k["c_x0"] * x0
    if sampler == "ddim":
        mean = mean + k["c_eps"] * (k["eps_x"] * x + k["eps_out"] * out)
    if sampler in DPM_SAMPLERS:
        for coef, x0_prev in zip(("c_prev", "c_prev2"), x0_prevs):
            mean = mean + k[coef] * x0_prev
    return mean


def transition_mean(
    model_fn: ModelFn,
    x: jax.Array,
    sched: Schedule,
    step: int | jax.Array,
    *,
    sampler: str,
    num_steps: int,
    eta: float = 0.0,
    use_karras_sigmas: bool | None = None,
    dtype=jnp.float32,
) -> tuple[jax.Array, jax.Array]:
    """(mean, std) of the Gaussian step ``x' ~ N(mean, std^2 I)`` from state ``x`` at step ``step`` (an int, or a
    traced int scalar) of a ``sampler`` run of ``num_steps`` steps under ``model_fn``; ``std`` a scalar (0 for a
    step that adds no noise). ``dtype``: the model input's dtype (that of the sampling noise). Samplers:
    ``LOG_PROB_SAMPLERS`` (DDIM with ``eta`` > 0)."""
    plan = make_plan(sched, sampler, num_steps, eta=float(eta), use_karras_sigmas=use_karras_sigmas)
    if sampler not in LOG_PROB_SAMPLERS or not plan.stochastic:
        raise ValueError(f"transition_log_prob: sampler={sampler!r} (eta={eta}); expected one of "
                         f"{list(LOG_PROB_SAMPLERS)}, DDIM with eta > 0")
    k = {key: jnp.asarray(plan.steps[key])[step] for key in STEP_KEYS}
    x = x.astype(jnp.float32)
    out, x0 = _predict_x0(model_fn, plan, dtype, x, k["t"], k["in_scale"], k["pred_x"], k["pred_out"])
    return _step_mean(sampler, k, x, out, x0), k["c_noise"]


def transition_log_prob(
    model_fn: ModelFn,
    x: jax.Array,
    x_next: jax.Array,
    sched: Schedule,
    step: int | jax.Array,
    *,
    sampler: str,
    num_steps: int,
    eta: float = 0.0,
    use_karras_sigmas: bool | None = None,
    dtype=jnp.float32,
) -> jax.Array:
    """``[B]`` log-density of going from state ``x`` to ``x_next`` at step ``step`` (:func:`transition_mean`'s
    arguments) under ``model_fn``: with the model that sampled the trajectory it equals that step's
    ``Trajectory.log_probs``. ``x``, ``x_next``: entries of ``Trajectory.states``."""
    mean, std = transition_mean(model_fn, x, sched, step, sampler=sampler, num_steps=num_steps, eta=eta,
                                use_karras_sigmas=use_karras_sigmas, dtype=dtype)
    return gaussian_log_prob(x_next, mean, std)


def sample(
    model_fn: ModelFn,
    noise: jax.Array,
    sched: Schedule,
    *,
    sampler: str,
    num_steps: int,
    rng: jax.Array | None = None,
    eta: float = 0.0,
    use_karras_sigmas: bool | None = None,
    start_step: int = 0,
    init_latents: jax.Array | None = None,
    blend_fn: BlendFn | None = None,
    return_log_probs: bool = False,
) -> jax.Array | Trajectory:
    """Run ``sampler`` for ``num_steps`` steps and return the final latents (dtype of ``noise``), or with
    ``return_log_probs`` a :class:`Trajectory` (stochastic samplers only, without ``blend_fn``).

    Args:
      model_fn: ``model_fn(x, t) -> output`` in the schedule's prediction_type, already guided; ``x`` is
        the scaled model input (dtype of ``noise``), ``t`` a float32 scalar timestep.
      noise: unit-variance initial noise; the sampler applies ``init_noise_sigma`` itself.
      sched: the noise schedule (hashable, static).
      sampler: one of ``plans.SAMPLERS``.
      rng: key for the per-step noise of stochastic samplers (required by them, unused otherwise).
      eta: DDIM's stochasticity (a Python float; 0 is deterministic DDIM).
      use_karras_sigmas: override the schedule's ``use_karras_sigmas`` (sigma-based samplers only).
      start_step: first step to run (img2img; see ``plans.strength_to_start_step``).
      init_latents: clean latents to start from (img2img / inpainting with strength < 1); they are
        noised with ``noise`` to the level of ``start_step``. ``None`` starts from pure noise.
      blend_fn: ``blend_fn(x, level) -> x`` called after every scheduler step (Heun: after each of
        its two sub-steps, like diffusers), ``level`` being the noise level the sampler is at (clean
        after the last step); see ``inpaint_blend``.
    """
    if not isinstance(eta, (int, float)):
        raise TypeError(f"eta must be a Python float (it shapes the compiled loop), got {type(eta).__name__}")
    plan = make_plan(
        sched, sampler, num_steps, start_step=start_step, eta=float(eta), use_karras_sigmas=use_karras_sigmas
    )
    if plan.stochastic and rng is None:
        raise ValueError(f"sampler={sampler!r} (eta={eta}) adds noise at every step: pass rng=jax.random.key(...)")
    if return_log_probs and (not plan.stochastic or blend_fn is not None):
        raise ValueError(f"return_log_probs: sampler={sampler!r} (eta={eta})"
                         f"{' with a mask blend' if blend_fn is not None else ''} has no transition density; expected "
                         "a stochastic sampler (ddpm, ddim with eta > 0, euler_a, dpmpp_*_sde) and no blend_fn")
    dtype = noise.dtype
    if init_latents is None:
        x = noise.astype(jnp.float32) * plan.init_noise_sigma
    else:
        if init_latents.shape != noise.shape:
            raise ValueError(f"init_latents shape {init_latents.shape} must equal noise shape {noise.shape}")
        x = noise_latents(
            sched, init_latents, noise, sampler=sampler, num_steps=num_steps, start_step=start_step,
            use_karras_sigmas=use_karras_sigmas,
        )
    blend = blend_fn if blend_fn is not None else (lambda x, level: x)

    def predict_x0(x, t, in_scale, pred_x, pred_out):
        return _predict_x0(model_fn, plan, dtype, x, t, in_scale, pred_x, pred_out)

    def affine_step(carry, k):
        x, x0_prevs = carry  # the previous steps' x0, newest first (DPM++ multistep)
        out, x0 = predict_x0(x, k["t"], k["in_scale"], k["pred_x"], k["pred_out"])
        x_new = mean = _step_mean(sampler, k, x, out, x0, x0_prevs)
        if plan.stochastic:
            x_new = mean + k["c_noise"] * step_noise(rng, k["index"], x.shape)
        per_step = (x, gaussian_log_prob(x_new, mean, k["c_noise"])) if return_log_probs else None
        return (blend(x_new, NoiseLevel(k["level_signal"], k["level_noise"])), (x0, *x0_prevs[:-1])), per_step

    def heun_step(carry, k):
        x, _ = carry
        level = NoiseLevel(k["level_signal"], k["level_noise"])
        sigma, sigma_next = k["sigma"], k["sigma_next"]
        _, x0 = predict_x0(x, k["t"], k["in_scale"], k["pred_x"], k["pred_out"])
        d1 = (x - x0) / sigma
        dt = sigma_next - sigma
        x_mid = blend(x + d1 * dt, level)
        _, x0_mid = predict_x0(x_mid, k["t2"], k["in_scale2"], k["pred2_x"], k["pred2_out"])
        d2 = (x_mid - x0_mid) / sigma_next
        return (blend(x + 0.5 * (d1 + d2) * dt, level), (x0_mid,)), None

    history = DPM_SAMPLERS[sampler][1] - 1 if sampler in DPM_SAMPLERS else 1
    carry = (x, (jnp.zeros_like(x),) * history)
    last = num_steps if sampler != "heun" else num_steps - 1  # Heun's last step is a plain Euler step
    keys = STEP_KEYS + (HEUN_KEYS if sampler == "heun" else ())
    xs = _slice_steps(plan, keys, start_step, last)
    carry, per_step = jax.lax.scan(heun_step if sampler == "heun" else affine_step, carry, xs)
    if sampler == "heun":
        carry, _ = affine_step(carry, _slice_steps(plan, STEP_KEYS, num_steps - 1, num_steps, squeeze=True))
    if return_log_probs:
        states, log_probs = per_step
        return Trajectory(carry[0].astype(dtype), jnp.concatenate([states, carry[0][None]]), log_probs.T)
    return carry[0].astype(dtype)


def _slice_steps(plan: Plan, keys, begin: int, end: int, squeeze: bool = False) -> dict:
    xs = {k: jnp.asarray(plan.steps[k][begin:end]) for k in keys}
    xs["index"] = jnp.arange(begin, end, dtype=jnp.int32)
    if squeeze:
        xs = {k: v[0] for k, v in xs.items()}
    return xs
