"""Diffusion maths for canvas_jax: noise schedules, samplers and classifier-free guidance.

    sched = Schedule.from_config(json.load(open("scheduler/scheduler_config.json")))
    latents = sample(model_fn, noise, sched, sampler="dpmpp_2m", num_steps=25)
"""

from canvas_jax.diffusion.guidance import cfg, cfg_from_batch, rescale_noise_cfg
from canvas_jax.diffusion.plans import SAMPLERS, Plan, make_plan, strength_to_start_step
from canvas_jax.diffusion.samplers import (
    LOG_PROB_SAMPLERS,
    NoiseLevel,
    Trajectory,
    gaussian_log_prob,
    inpaint_blend,
    noise_latents,
    sample,
    step_noise,
    transition_log_prob,
    transition_mean,
)
from canvas_jax.diffusion.schedules import (
    Schedule,
    add_noise,
    snr,
    training_target,
    velocity,
)

__all__ = [
    "LOG_PROB_SAMPLERS",
    "SAMPLERS",
    "NoiseLevel",
    "Trajectory",
    "Plan",
    "Schedule",
    "add_noise",
    "cfg",
    "gaussian_log_prob",
    "cfg_from_batch",
    "inpaint_blend",
    "make_plan",
    "noise_latents",
    "rescale_noise_cfg",
    "sample",
    "snr",
    "step_noise",
    "strength_to_start_step",
    "training_target",
    "transition_log_prob",
    "transition_mean",
    "velocity",
]
