"""Reference runs of diffusers' schedulers (torch, float32) for the parity tests (fixture ``diffusers_ref``).

``reference_run`` drives a diffusers scheduler the way diffusers' SD pipelines do (txt2img, img2img
``get_timesteps`` + ``add_noise``, the 4-channel inpainting blend), with ``toy_model`` as the denoiser,
and feeds the stochastic schedulers' ``randn_tensor`` the same per-step noise our sampler draws.
"""

from __future__ import annotations

import sys
import types
from contextlib import nullcontext
from unittest import mock

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
)

from canvas_jax.diffusion.plans import DPM_SAMPLERS

CLASSES = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler_a": EulerAncestralDiscreteScheduler,
    "heun": HeunDiscreteScheduler,
    **{name: DPMSolverMultistepScheduler for name in DPM_SAMPLERS},
}


def toy_model(xp, x, t):
    """A deterministic denoiser, non-linear in x and t; ``xp`` is ``torch`` or ``jax.numpy``. Roughly the
    identity of its (scaled) input, it keeps every prediction type's x0 estimate, and so the samples, O(1)."""
    t = t / 1000.0
    return 0.9 * x + 0.2 * xp.tanh(x) * xp.cos(3.0 * t) + 0.1 * x * xp.sin(2.0 * t + 0.5) + 0.02 * t


def make_scheduler(sampler: str, config: dict, use_karras_sigmas: bool | None = None):
    config = dict(config)
    if sampler in DPM_SAMPLERS:
        algorithm_type, solver_order = DPM_SAMPLERS[sampler]
        config.update(algorithm_type=algorithm_type, solver_order=solver_order)
    if use_karras_sigmas is not None:
        config["use_karras_sigmas"] = use_karras_sigmas
    return CLASSES[sampler].from_config(config)


def reference_timesteps(sampler: str, config: dict, num_steps: int, use_karras_sigmas=None) -> np.ndarray:
    sch = make_scheduler(sampler, config, use_karras_sigmas)
    sch.set_timesteps(num_steps)
    return sch.timesteps.numpy()


def reference_run(
    sampler: str,
    config: dict,
    num_steps: int,
    noise: np.ndarray,
    *,
    eta: float = 0.0,
    use_karras_sigmas: bool | None = None,
    start_step: int = 0,
    init_latents: np.ndarray | None = None,
    blend: tuple[np.ndarray, np.ndarray] | None = None,
    step_noises: np.ndarray | None = None,
) -> np.ndarray:
    """Final latents of a diffusers sampling loop.

    ``init_latents``: img2img start (noised to ``start_step``); ``blend=(original_latents, mask)``: the
    inpainting blend after each scheduler step; ``step_noises[i]``: the noise of solver step i.
    """
    sch = make_scheduler(sampler, config, use_karras_sigmas)
    sch.set_timesteps(num_steps)
    order = sch.order
    noise_t = torch.from_numpy(noise)
    # img2img / inpainting pipelines (get_timesteps) start at a begin index; we always set one (0 for
    # txt2img), which steps in order even where diffusers' lookup of the first timestep would trip over
    # duplicate timesteps (DPM++ with Karras sigmas on squaredcos_cap_v2).
    timesteps = sch.timesteps[start_step * order :]
    if hasattr(sch, "set_begin_index"):
        sch.set_begin_index(start_step * order)
    if init_latents is None:
        latents = noise_t * sch.init_noise_sigma
    else:
        latents = sch.add_noise(torch.from_numpy(init_latents), noise_t, timesteps[:1])

    current = {"step": start_step}

    def fake_randn(shape, generator=None, device=None, dtype=None, layout=None):
        assert step_noises is not None, f"{sampler} drew noise but the test gave none"
        return torch.from_numpy(np.asarray(step_noises[current["step"]])).to(dtype or torch.float32)

    module = sys.modules[type(sch).__module__]
    extra = {"eta": eta} if sampler == "ddim" else {}
    patch = mock.patch.object(module, "randn_tensor", fake_randn) if hasattr(module, "randn_tensor") else nullcontext()
    with patch:
        for i, t in enumerate(timesteps):
            current["step"] = start_step + (i + 1) // 2 if order == 2 else start_step + i
            model_in = sch.scale_model_input(latents, t)
            out = toy_model(torch, model_in, t.to(torch.float32))
            latents = sch.step(out, t, latents, **extra, return_dict=False)[0]
            if blend is not None:
                proper = torch.from_numpy(blend[0])
                if i < len(timesteps) - 1:
                    proper = sch.add_noise(proper, noise_t, torch.tensor([timesteps[i + 1]]))
                mask = torch.from_numpy(blend[1])
                latents = (1 - mask) * proper + mask * latents
    return latents.numpy()


@pytest.fixture(scope="session")
def diffusers_ref():
    return types.SimpleNamespace(
        run=reference_run, timesteps=reference_timesteps, scheduler=make_scheduler, toy_model=toy_model
    )
