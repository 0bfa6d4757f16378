import warnings

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from canvas_jax.diffusion import Schedule, add_noise, snr, training_target, velocity

warnings.filterwarnings("ignore", module="diffusers")

SD15_CONFIG = {  # runwayml/stable-diffusion-v1-5 scheduler/scheduler_config.json
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

SCHEDULE_CONFIGS = [
    {},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    {"beta_schedule": "squaredcos_cap_v2"},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "rescale_betas_zero_snr": True},
    {"num_train_timesteps": 37, "beta_start": 0.001, "beta_end": 0.03},
]


def _config_id(config: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in config.items()) or "default"


@pytest.mark.parametrize("config", SCHEDULE_CONFIGS, ids=_config_id)
def test_betas_and_alphas_cumprod_match_diffusers(config):
    ours = Schedule.from_config(config)
    ref = DDPMScheduler.from_config(config)
    if config.get("rescale_betas_zero_snr"):
        # torch's CPU float32 sqrt is not correctly rounded (ours is); the rescale's cancellation
        # sqrt(a_t) - sqrt(a_T) amplifies those ulps in late betas.
        np.testing.assert_allclose(ours.betas, ref.betas.numpy(), rtol=0, atol=5e-6)
        np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=0, atol=1e-6)
    else:  # bit for bit
        np.testing.assert_array_equal(ours.betas, ref.betas.numpy())
        np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod.numpy())


def test_trained_betas_are_used_as_given():
    betas = np.linspace(0.001, 0.05, 20)
    ours = Schedule.from_config({"num_train_timesteps": 20, "trained_betas": betas.tolist()})
    np.testing.assert_allclose(ours.alphas_cumprod, np.cumprod(1 - betas.astype(np.float32)), rtol=1e-6)
    with pytest.raises(ValueError, match="trained_betas must be a tuple of num_train_timesteps=1000"):
        Schedule.from_config({"trained_betas": betas.tolist()})


def test_from_config_ignores_unneeded_keys_and_round_trips():
    sched = Schedule.from_config(SD15_CONFIG | {"solver_order": 3, "algorithm_type": "dpmsolver++"})
    assert sched.beta_schedule == "scaled_linear" and sched.steps_offset == 1 and not sched.set_alpha_to_one
    assert (sched.algorithm_type, sched.solver_order) == ("dpmsolver++", 3)  # read: DPM samplers check them
    assert sched.timestep_spacing is None  # not given: each sampler takes its diffusers class default
    assert Schedule.from_config(sched.to_config()) == sched
    assert hash(Schedule.from_config(sched.to_config())) == hash(sched)


@pytest.mark.parametrize(
    "key, value, allowed",
    [
        ("beta_schedule", "cosine", "squaredcos_cap_v2"),
        ("prediction_type", "flow_prediction", "v_prediction"),
        ("timestep_spacing", "uniform", "trailing"),
        ("variance_type", "learned_range", "fixed_small"),
        ("final_sigmas_type", "max", "sigma_min"),
        ("thresholding", True, "False"),
        ("use_exponential_sigmas", True, "False"),
        ("timestep_type", "continuous", "discrete"),
        ("interpolation_type", "log_linear", "linear"),
        ("algorithm_type", "sde-dpmsolver", "sde-dpmsolver++"),
        ("algorithm_type", "deis", "dpmsolver++"),
        ("solver_order", 1, "3"),
        ("lower_order_final", "yes", "bool"),
    ],
)
def test_unsupported_values_name_the_key_and_the_choices(key, value, allowed):
    with pytest.raises(ValueError, match=key) as err:
        Schedule.from_config({key: value})
    assert allowed in str(err.value)


def test_add_noise_and_velocity_match_diffusers():
    config = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
    sched, ref = Schedule.from_config(config), DDPMScheduler.from_config(config)
    rs = np.random.RandomState(0)
    x0, noise = rs.randn(3, 4, 5, 5).astype(np.float32), rs.randn(3, 4, 5, 5).astype(np.float32)
    t = np.array([0, 517, 999])
    tx0, tnoise, tt = torch.from_numpy(x0), torch.from_numpy(noise), torch.from_numpy(t)
    np.testing.assert_allclose(add_noise(sched, x0, noise, t), ref.add_noise(tx0, tnoise, tt).numpy(), atol=1e-6)
    np.testing.assert_allclose(velocity(sched, x0, noise, t), ref.get_velocity(tx0, tnoise, tt).numpy(), atol=1e-6)


def test_snr_and_training_targets():
    sched = Schedule(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = jnp.array([1, 500, 998])
    a = sched.alphas_cumprod[np.asarray(t)]
    np.testing.assert_allclose(snr(sched, t), a / (1 - a), rtol=1e-5)
    assert np.all(np.diff(np.asarray(snr(sched, jnp.arange(1000)))) < 0)  # SNR falls with t
    x0 = jnp.ones((3, 2, 2, 4))
    noise = -jnp.ones((3, 2, 2, 4))
    assert jnp.array_equal(training_target(sched, x0, noise, t), noise)
    v_sched = Schedule(prediction_type="v_prediction")
    np.testing.assert_allclose(training_target(v_sched, x0, noise, t), velocity(v_sched, x0, noise, t))
    assert jnp.array_equal(training_target(Schedule(prediction_type="sample"), x0, noise, t), x0)
    # x_t = sqrt(a) x0 + sqrt(1-a) eps and v together recover x0 = sqrt(a) x_t - sqrt(1-a) v
    x_t, v = add_noise(v_sched, x0, noise, t), velocity(v_sched, x0, noise, t)
    a = jnp.asarray(v_sched.alphas_cumprod)[t][:, None, None, None]
    np.testing.assert_allclose(jnp.sqrt(a) * x_t - jnp.sqrt(1 - a) * v, x0, atol=1e-5)


def test_training_helpers_reject_float_timesteps():
    with pytest.raises(TypeError, match="timesteps must be integers"):
        add_noise(Schedule(), jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.array([1.0, 2.0]))
