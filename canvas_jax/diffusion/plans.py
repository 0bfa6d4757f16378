"""Host-side sampling plans: the timesteps, sigmas and per-step update coefficients of each sampler.

Everything here is numpy, computed once per (schedule, sampler, step count) at trace time, so the
jitted sampling loop sees only constant per-step coefficient vectors. Timesteps and sigmas follow
diffusers 0.42's ``set_timesteps`` of the matching scheduler class call for call; coefficients are
evaluated in float64 from diffusers' float32 sigmas / alphas and stored as float32.

One step ``i`` of every sampler except Heun's second-order correction is the same affine update::

    x0  = clip(pred_x * x + pred_out * out)          out = model_fn(in_scale * x, timesteps[i])
    eps = eps_x * x + eps_out * out                   (only DDIM uses it)
    x'  = c_x * x + c_x0 * x0 + c_eps * eps + c_prev * x0_prev + c_prev2 * x0_prev2 + c_noise * z

where ``x0_prev`` / ``x0_prev2`` are the previous steps' ``x0`` (DPM++ multistep) and ``z`` the step's
unit normal noise.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from canvas_jax.diffusion.schedules import Schedule

# DPM-Solver++ multistep samplers: (algorithm_type, solver_order) of diffusers' DPMSolverMultistepScheduler.
DPM_SAMPLERS = {
    "dpmpp_2m": ("dpmsolver++", 2),
    "dpmpp_2m_sde": ("sde-dpmsolver++", 2),
    "dpmpp_3m": ("dpmsolver++", 3),
    "dpmpp_3m_sde": ("sde-dpmsolver++", 3),
}
_DPM_DEFAULTS = {"algorithm_type": "dpmsolver++", "solver_order": 2}  # DPMSolverMultistepScheduler's
SAMPLERS = ("ddpm", "ddim", "euler", "euler_a", "heun", *DPM_SAMPLERS)
SIGMA_SAMPLERS = ("euler", "euler_a", "heun")  # variance-exploding state x = x0 + sigma * noise
KARRAS_SAMPLERS = ("euler", "euler_a", "heun", *DPM_SAMPLERS)

# (timestep_spacing, clip_sample) defaults of the diffusers class behind each sampler, used when the
# schedule leaves them unset; and whether that class reads clip_sample / use_karras_sigmas at all.
_CLASS_DEFAULTS = {
    "ddpm": ("leading", True),
    "ddim": ("leading", True),
    "euler": ("linspace", False),
    "euler_a": ("linspace", False),
    "heun": ("linspace", False),
    **{name: ("linspace", False) for name in DPM_SAMPLERS},
}
_READS_CLIP = ("ddpm", "ddim", "heun")
_READS_KARRAS = ("euler", "heun", *DPM_SAMPLERS)

STEP_KEYS = (
    "t", "in_scale", "pred_x", "pred_out", "eps_x", "eps_out",
    "c_x", "c_x0", "c_eps", "c_prev", "c_prev2", "c_noise",
    "start_signal", "start_noise", "level_signal", "level_noise",
)  # fmt: skip
HEUN_KEYS = ("t2", "in_scale2", "pred2_x", "pred2_out", "sigma", "sigma_next")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Per-step constants of one sampler run; every array in ``steps`` has shape (num_steps,).

    ``start_signal/start_noise[i]``: img2img noising when sampling starts at step i
    (``x = start_signal * init_latents + start_noise * noise``). ``level_signal/level_noise[i]``: the
    noise level the original latents are brought to after step i (mask-blend inpainting; clean after
    the last step). Heun adds the second evaluation's constants (``HEUN_KEYS``, defined for i < N-1).
    """

    sampler: str
    num_steps: int
    timesteps: np.ndarray  # (num_steps,) float32: the model's timestep at each step
    sigmas: np.ndarray | None  # (num_steps + 1,) float32 for sigma-based samplers, else None
    init_noise_sigma: float
    clip: float | None  # clip range of the predicted x0, None for no clipping
    stochastic: bool
    steps: dict


def _spaced_timesteps(sched: Schedule, spacing: str, n: int, *, as_float: bool) -> np.ndarray:
    """DDPM/DDIM (ints) and Euler/Heun (float32) ``set_timesteps`` spacing."""
    big_t = sched.num_train_timesteps
    if spacing == "linspace":
        if as_float:
            return np.linspace(0, big_t - 1, n, dtype=np.float32)[::-1].copy()
        return np.linspace(0, big_t - 1, n).round()[::-1].astype(np.int64)
    dtype = np.float32 if as_float else np.int64
    if spacing == "leading":
        return (np.arange(0, n) * (big_t // n)).round()[::-1].astype(dtype) + dtype(sched.steps_offset)
    # trailing; diffusers' float arange sometimes yields n + 1 values (the last one -1): keep n.
    return np.round(np.arange(big_t, 0, -big_t / n))[:n].astype(dtype) - dtype(1)


def _dpm_timesteps(sched: Schedule, spacing: str, n: int, acp: np.ndarray) -> np.ndarray:
    """DPMSolverMultistepScheduler's own spacing (n + 1 points with the last dropped; lambda clipping)."""
    lambda_t = np.log(np.sqrt(acp)) - np.log(np.sqrt(np.float32(1.0) - acp))
    clipped = int(np.searchsorted(lambda_t[::-1], np.float32(sched.lambda_min_clipped)))
    last = sched.num_train_timesteps - clipped
    if spacing == "linspace":
        return np.linspace(0, last - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        ratio = last // (n + 1)
        return (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64) + sched.steps_offset
    return np.arange(last, 0, -sched.num_train_timesteps / n).round()[:n].astype(np.int64) - 1


def _karras(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> np.ndarray:
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def _sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timestep of each sigma by log-linear interpolation (diffusers' ``_sigma_to_t``)."""
    log_sigma = np.log(np.maximum(sigmas, 1e-10))
    dists = log_sigma - log_sigmas[:, None]
    low = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    w = np.clip((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[low + 1]), 0, 1)
    return (1 - w) * low + w * (low + 1)


def _pred_coefficients(prediction_type: str, alpha, sigma):
    """(pred_x, pred_out) with x0 = pred_x * x + pred_out * out for state x = alpha * x0 + sigma * eps."""
    if prediction_type == "epsilon":
        return 1.0 / alpha, -sigma / alpha
    if prediction_type == "v_prediction":
        return alpha, -sigma
    return np.zeros_like(alpha), np.ones_like(alpha)


def _ve_pred_coefficients(prediction_type: str, s):
    """(pred_x, pred_out) in the variance-exploding state x = x0 + s * eps, as diffusers' Euler/Heun write them."""
    if prediction_type == "epsilon":
        return np.ones_like(s), -s
    if prediction_type == "v_prediction":
        return 1.0 / (s**2 + 1), -s / np.sqrt(s**2 + 1)
    return np.zeros_like(s), np.ones_like(s)


def _alphas_cumprod(sched: Schedule, sampler: str) -> np.ndarray:
    acp = sched.alphas_cumprod.copy()
    if sched.rescale_betas_zero_snr and sampler not in ("ddpm", "ddim"):
        # keeps the terminal sigma finite, as diffusers' sigma-based schedulers do (its Heun ignores
        # rescale_betas_zero_snr altogether; we rescale there too, since the model was trained so)
        acp[-1] = 2.0**-24
    return acp


def _sigma_plan(sched, sampler, n, spacing, karras, acp):
    """Timesteps and sigmas (with the final one appended) of Euler / Euler-a / Heun / DPM++."""
    sig_train = ((np.float32(1.0) - acp) / acp) ** np.float32(0.5)
    log_sigmas = np.log(sig_train)
    dpm = sampler in DPM_SAMPLERS
    if dpm:
        timesteps = _dpm_timesteps(sched, spacing, n, acp)
    else:
        timesteps = _spaced_timesteps(sched, spacing, n, as_float=True)
    sigmas = np.interp(timesteps, np.arange(len(sig_train)), sig_train)
    if karras:
        # Karras range: DPM++ spans the whole training range, Euler/Heun the spaced sigmas' range.
        spanned = sig_train if dpm else sigmas
        lo = sched.sigma_min if sched.sigma_min is not None else spanned.min().item()
        hi = sched.sigma_max if sched.sigma_max is not None else spanned.max().item()
        sigmas = _karras(lo, hi, n)
        timesteps = _sigma_to_t(sigmas, log_sigmas)
        if dpm and sched.beta_schedule != "squaredcos_cap_v2":
            timesteps = timesteps.round()
    final = 0.0
    if sched.final_sigmas_type == "sigma_min" and (dpm or sampler == "euler"):
        final = (((np.float32(1.0) - acp[0]) / acp[0]) ** np.float32(0.5)).item()
    sigmas = np.concatenate([sigmas, [final]]).astype(np.float32)
    return timesteps, sigmas


@functools.lru_cache(maxsize=256)
def make_plan(
    sched: Schedule,
    sampler: str,
    num_steps: int,
    *,
    start_step: int = 0,
    eta: float = 0.0,
    use_karras_sigmas: bool | None = None,
) -> Plan:
    """The plan of ``sampler`` run for ``num_steps`` steps on ``sched`` (see the module docstring)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r} is not supported; expected one of {list(SAMPLERS)}")
    if not isinstance(num_steps, int) or not 1 <= num_steps <= sched.num_train_timesteps:
        raise ValueError(f"num_steps must be an int in [1, {sched.num_train_timesteps}], got {num_steps!r}")
    if not isinstance(start_step, int) or not 0 <= start_step < num_steps:
        raise ValueError(f"start_step must be an int in [0, num_steps={num_steps}), got {start_step!r}")
    if eta != 0.0 and sampler != "ddim":
        raise ValueError(f"eta={eta} only applies to sampler='ddim', got sampler={sampler!r}")
    if use_karras_sigmas is None:
        karras = sched.use_karras_sigmas and sampler in _READS_KARRAS
    elif use_karras_sigmas and sampler not in KARRAS_SAMPLERS:
        raise ValueError(f"use_karras_sigmas=True needs one of {list(KARRAS_SAMPLERS)}, got sampler={sampler!r}")
    else:
        karras = bool(use_karras_sigmas)
    default_spacing, default_clip = _CLASS_DEFAULTS[sampler]
    spacing = sched.timestep_spacing or default_spacing
    clip_sample = default_clip if sched.clip_sample is None else sched.clip_sample
    clip = sched.clip_sample_range if (clip_sample and sampler in _READS_CLIP) else None
    acp = _alphas_cumprod(sched, sampler)
    zeros = np.zeros(num_steps)
    st = {"in_scale": np.ones(num_steps), "c_x": zeros, "c_eps": zeros, "c_prev": zeros, "c_prev2": zeros,
          "c_noise": zeros}
    st |= {"eps_x": zeros, "eps_out": zeros}
    sigmas, init_sigma = None, 1.0
    if sampler in ("ddpm", "ddim"):
        timesteps = _ddpm_ddim_steps(st, sched, sampler, spacing, num_steps, acp, eta)
    elif sampler in SIGMA_SAMPLERS:
        timesteps, sigmas = _sigma_plan(sched, sampler, num_steps, spacing, karras, acp)
        _euler_heun_steps(st, sched.prediction_type, sampler, timesteps, sigmas)
        max_sigma = sigmas.max()
        init_sigma = float(max_sigma if spacing in ("linspace", "trailing") else (max_sigma**2 + 1) ** 0.5)
    else:
        timesteps, sigmas = _sigma_plan(sched, sampler, num_steps, spacing, karras, acp)
        timesteps = timesteps.astype(np.int64)  # diffusers casts (truncates) DPM++ timesteps to int64
        _dpmpp_steps(st, sched, sampler, sigmas, start_step)

    st["t"] = timesteps
    steps = {k: np.asarray(v, np.float32) for k, v in st.items()}
    for v in steps.values():
        v.flags.writeable = False
    stochastic = sampler in ("ddpm", "euler_a") or (sampler == "ddim" and eta != 0.0) or sampler.endswith("_sde")
    return Plan(sampler, num_steps, steps["t"], sigmas, init_sigma, clip, stochastic, steps)


def _ddpm_ddim_steps(st, sched, sampler, spacing, n, acp, eta) -> np.ndarray:
    """DDPM / DDIM in the variance-preserving state x = sqrt(a) * x0 + sqrt(1 - a) * eps; returns timesteps."""
    ts = _spaced_timesteps(sched, spacing, n, as_float=False)
    a = acp[ts].astype(np.float64)
    a_next = np.append(acp[ts[1:]], np.float32(1.0)).astype(np.float64)  # also what the inpainting blend uses
    st["pred_x"], st["pred_out"] = _pred_coefficients(sched.prediction_type, np.sqrt(a), np.sqrt(1 - a))
    st["start_signal"], st["start_noise"] = np.sqrt(a), np.sqrt(1 - a)
    st["level_signal"], st["level_noise"] = np.sqrt(a_next), np.sqrt(1 - a_next)
    if sampler == "ddpm":
        a_prev = a_next
        cur_alpha = a / a_prev
        cur_beta = 1 - cur_alpha
        st["c_x0"] = np.sqrt(a_prev) * cur_beta / (1 - a)
        st["c_x"] = np.sqrt(cur_alpha) * (1 - a_prev) / (1 - a)
        if sched.variance_type == "fixed_small":
            var = np.maximum((1 - a_prev) / (1 - a) * cur_beta, 1e-20)
        else:
            var = cur_beta
        st["c_noise"] = np.where(ts > 0, np.sqrt(var), 0.0)
        return ts
    prev = ts - sched.num_train_timesteps // n  # diffusers' DDIM steps back by T // N whatever the spacing
    final_alpha = np.float32(1.0) if sched.set_alpha_to_one else acp[0]
    a_prev = np.where(prev >= 0, acp[np.maximum(prev, 0)], final_alpha).astype(np.float64)
    if sched.prediction_type == "epsilon":
        st["eps_x"], st["eps_out"] = np.zeros(n), np.ones(n)
    elif sched.prediction_type == "sample":
        st["eps_x"], st["eps_out"] = 1 / np.sqrt(1 - a), -np.sqrt(a) / np.sqrt(1 - a)
    else:
        st["eps_x"], st["eps_out"] = np.sqrt(1 - a), np.sqrt(a)
    std = eta * np.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    st["c_x0"] = np.sqrt(a_prev)
    st["c_eps"] = np.sqrt(1 - a_prev - std**2)
    st["c_noise"] = std
    return ts


def _euler_heun_steps(st, prediction_type, sampler, timesteps, sigmas) -> None:
    """Euler / Euler ancestral / Heun in the variance-exploding state x = x0 + sigma * eps."""
    s, sn = sigmas[:-1].astype(np.float64), sigmas[1:].astype(np.float64)
    st["in_scale"] = 1 / np.sqrt(s**2 + 1)
    st["pred_x"], st["pred_out"] = _ve_pred_coefficients(prediction_type, s)
    target = sn
    if sampler == "euler_a":
        sigma_up = np.sqrt(sn**2 * (s**2 - sn**2) / s**2)
        target = np.sqrt(sn**2 - sigma_up**2)
        st["c_noise"] = sigma_up
    st["c_x"], st["c_x0"] = 1 + (target - s) / s, -(target - s) / s  # x + (x - x0) / s * (target - s)
    st["start_signal"], st["start_noise"] = np.ones_like(s), s
    st["level_signal"], st["level_noise"] = np.ones_like(s), np.append(sn[:-1], 0.0)
    if sampler == "heun":
        st["t2"] = np.append(timesteps[1:], timesteps[-1])
        st["in_scale2"] = 1 / np.sqrt(sn**2 + 1)
        st["pred2_x"], st["pred2_out"] = _ve_pred_coefficients(prediction_type, sn)
        st["sigma"], st["sigma_next"] = s, sn


def _check_dpm_config(sched: Schedule, sampler: str) -> None:
    """A scheduler config that asks for a DPM-Solver variant (a non-default ``algorithm_type`` or
    ``solver_order``) must get it: another DPM sampler is an error, not a silent substitute."""
    wanted = dict(zip(("algorithm_type", "solver_order"), DPM_SAMPLERS[sampler]))
    asked = {k: getattr(sched, k) for k in wanted if getattr(sched, k) != _DPM_DEFAULTS[k]}
    clash = {k: v for k, v in asked.items() if v != wanted[k]}
    if clash:
        spec = tuple((wanted | asked).values())
        match = next(name for name, s in DPM_SAMPLERS.items() if s == spec)  # Schedule admits only these
        raise ValueError(
            f"sampler={sampler!r} runs DPM-Solver with {wanted}, but the scheduler config asks for {clash}: "
            f"use sampler={match!r}"
        )


def _dpmpp_steps(st, sched, sampler, sigmas, start_step) -> None:
    """DPM-Solver++ multistep (2M / 3M, ODE or SDE) in the variance-preserving state x = alpha * x0 + sigma * eps.

    Step i is the update of diffusers' ``DPMSolverMultistepScheduler.step`` at the order it picks there (first
    order at the start and, with ``lower_order_final``, at the end), written as coefficients of the current
    and previous data predictions ``x0, x0_prev, x0_prev2`` (diffusers' ``m0, m1, m2``).
    """
    _check_dpm_config(sched, sampler)
    algorithm, solver_order = DPM_SAMPLERS[sampler]
    sde = algorithm == "sde-dpmsolver++"
    n = len(sigmas) - 1
    sig = sigmas.astype(np.float64)
    alpha = 1 / np.sqrt(sig**2 + 1)
    sigma_vp = sig * alpha
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma_vp)  # +inf at a zero final sigma
    a_s, s_s, a_t, s_t = alpha[:-1], sigma_vp[:-1], alpha[1:], sigma_vp[1:]
    h = lam[1:] - lam[:-1]
    st["pred_x"], st["pred_out"] = _pred_coefficients(sched.prediction_type, a_s, s_s)

    idx = np.arange(n)
    order = np.clip(idx - start_step + 1, 1, solver_order)  # a run starts first-order (lower_order_nums)
    final_low = sched.euler_at_final or (sched.lower_order_final and n < 15) or sched.final_sigmas_type == "zero"
    order = np.where((idx == n - 1) & final_low, 1, order)
    order = np.where((idx == n - 2) & sched.lower_order_final & (n < 15), np.minimum(order, 2), order)

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        h0 = np.append(np.nan, h[:-1])  # lambda_s0 - lambda_s1
        h1 = np.append([np.nan, np.nan], h[:-2])[:n]  # lambda_s1 - lambda_s2
        r0, r1 = h0 / h, h1 / h
        if sde:
            e2 = np.exp(-2.0 * h)
            c_x = s_t / s_s * np.exp(-h)
            b0 = a_t * (1.0 - e2)
            b1_heun = a_t * ((1.0 - e2) / (-2.0 * h) + 1.0)
            b1_mid = 0.5 * b0
            b2 = a_t * ((1.0 - e2 - 2.0 * h) / (2.0 * h) ** 2 - 0.5)
            st["c_noise"] = s_t * np.sqrt(1.0 - e2)
        else:
            em = np.exp(-h) - 1.0
            c_x = s_t / s_s
            b0 = -a_t * em
            b1_heun = a_t * (em / h + 1.0)
            b1_mid = 0.5 * b0
            b2 = -a_t * ((em + h) / h**2 - 0.5)
        # second order: D1 = (m0 - m1) / r0; third order (diffusers' multistep_dpm_solver_third_order_update):
        # D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1, D1 = D1_0 + q (D1_0 - D1_1), D2 = (D1_0 - D1_1) / (r0 + r1)
        b1 = b1_mid if sched.solver_type == "midpoint" else b1_heun
        second = (b0 + b1 / r0, -b1 / r0, np.zeros(n))
        q = r0 / (r0 + r1)
        d1_0 = np.stack([1 / r0, -1 / r0, np.zeros(n)])
        d1_1 = np.stack([np.zeros(n), 1 / r1, -1 / r1])
        third = b1_heun * ((1 + q) * d1_0 - q * d1_1) + b2 * (d1_0 - d1_1) / (r0 + r1)
        third[0] += b0
    coefs = [np.where(order == 1, b0, np.where(order == 2, second[0], third[0]))]
    coefs += [np.where(order == 1, 0.0, np.where(order == 2, second[k], third[k])) for k in (1, 2)]
    st["c_x"], (st["c_x0"], st["c_prev"], st["c_prev2"]) = c_x, coefs
    st["start_signal"], st["start_noise"] = a_s, s_s
    st["level_signal"] = np.append(a_t[:-1], 1.0)
    st["level_noise"] = np.append(s_t[:-1], 0.0)


def strength_to_start_step(num_steps: int, strength: float) -> int:
    """The first step an img2img run of ``strength`` in [0, 1] executes (diffusers' ``get_timesteps``)."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    init_timestep = min(int(num_steps * strength), num_steps)
    if init_timestep < 1:
        raise ValueError(
            f"strength={strength} with num_steps={num_steps} runs no step; use strength >= {1 / num_steps}"
        )
    return num_steps - init_timestep
