"""Per-step log-probabilities of the stochastic samplers: the Gaussian density of the noise each step injected,
the same when re-evaluated with ``transition_log_prob``, and sampling with them changes nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from canvas_jax.diffusion import Schedule, inpaint_blend, make_plan, sample, step_noise, transition_log_prob

SCHED = Schedule.from_config({"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012})
SHAPE = (3, 4, 4, 2)
NOISE = jnp.asarray(np.random.default_rng(0).standard_normal(SHAPE), jnp.float32)
RNG = jax.random.key(7)
STEPS = 6


def policy(scale):
    """A smooth stand-in for a UNet's noise prediction that depends on the state and the timestep."""
    return lambda x, t: jnp.tanh(scale * x) * (1.0 + t / 1000.0)


def _numpy_log_density(z: np.ndarray, std: float) -> np.ndarray:
    if std == 0:
        return np.zeros(z.shape[0])
    return np.sum(-0.5 * z.astype(np.float64) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi), axis=(1, 2, 3))


@pytest.mark.parametrize("sampler, eta", [("ddpm", 0.0), ("ddim", 1.0), ("ddim", 0.3), ("euler_a", 0.0)])
def test_log_probs_are_the_density_of_the_injected_noise(sampler, eta):
    kw = dict(sampler=sampler, num_steps=STEPS, rng=RNG, eta=eta)
    traj = jax.jit(lambda n: sample(policy(0.5), n, SCHED, return_log_probs=True, **kw))(NOISE)
    plain = jax.jit(lambda n: sample(policy(0.5), n, SCHED, **kw))(NOISE)
    np.testing.assert_allclose(traj.latents, plain, atol=1e-6)
    assert traj.states.shape == (STEPS + 1, *SHAPE) and traj.log_probs.shape == (SHAPE[0], STEPS)
    np.testing.assert_allclose(traj.states[-1], plain, atol=1e-6)
    plan = make_plan(SCHED, sampler, STEPS, eta=eta)
    np.testing.assert_allclose(traj.states[0], np.asarray(NOISE) * plan.init_noise_sigma, rtol=1e-6)
    relog = jax.jit(lambda f, x, y, i: transition_log_prob(policy(f), x, y, SCHED, i, sampler=sampler,
                                                           num_steps=STEPS, eta=eta))
    for i in range(STEPS):
        std = float(plan.steps["c_noise"][i])
        want = _numpy_log_density(np.asarray(step_noise(RNG, i, SHAPE)), std)
        np.testing.assert_allclose(traj.log_probs[:, i], want, rtol=1e-5, atol=1e-3)
        again = relog(0.5, traj.states[i], traj.states[i + 1], jnp.int32(i))  # the step index may be traced
        np.testing.assert_allclose(again, traj.log_probs[:, i], rtol=1e-5, atol=1e-3)
        if std > 0:  # another policy gives the taken step another density
            assert np.abs(relog(0.9, traj.states[i], traj.states[i + 1], jnp.int32(i)) - again).min() > 1e-3
    assert (plan.steps["c_noise"] > 0).sum() >= STEPS - 1


def test_img2img_log_probs_count_from_the_start_step():
    init = NOISE * 0.5
    traj = sample(policy(0.5), NOISE, SCHED, sampler="ddpm", num_steps=STEPS, rng=RNG, start_step=2,
                  init_latents=init, return_log_probs=True)
    assert traj.log_probs.shape == (SHAPE[0], STEPS - 2)
    again = transition_log_prob(policy(0.5), traj.states[0], traj.states[1], SCHED, 2, sampler="ddpm",
                                num_steps=STEPS)
    np.testing.assert_allclose(again, traj.log_probs[:, 0], rtol=1e-5, atol=1e-3)


def test_deterministic_samplers_and_blends_have_no_log_probs():
    for sampler in ("ddim", "dpmpp_2m", "euler", "heun"):
        with pytest.raises(ValueError, match="no transition density"):
            sample(policy(0.5), NOISE, SCHED, sampler=sampler, num_steps=3, rng=RNG, return_log_probs=True)
    blend = inpaint_blend(NOISE, jnp.ones(SHAPE[:3] + (1,)), NOISE)
    with pytest.raises(ValueError, match="mask blend"):
        sample(policy(0.5), NOISE, SCHED, sampler="ddpm", num_steps=3, rng=RNG, blend_fn=blend, return_log_probs=True)
    with pytest.raises(ValueError, match="expected one of \\['ddpm', 'ddim', 'euler_a'\\]"):
        transition_log_prob(policy(0.5), NOISE, NOISE, SCHED, 0, sampler="dpmpp_2m_sde", num_steps=3)
