"""Parity of our samplers with diffusers' scheduler loops, and their single-program compilation."""

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from canvas_jax.diffusion import (
    SAMPLERS,
    Schedule,
    inpaint_blend,
    make_plan,
    sample,
    step_noise,
    strength_to_start_step,
)

warnings.filterwarnings("ignore", module="diffusers")

SD = {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012}
SD15 = SD | {"_class_name": "PNDMScheduler", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
             "clip_sample": False}  # fmt: skip
SDXL = SD15 | {"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "leading", "interpolation_type": "linear",
               "use_karras_sigmas": False, "prediction_type": "epsilon"}  # fmt: skip
SD21_TRAILING = SD15 | {"prediction_type": "v_prediction", "timestep_spacing": "trailing"}
SAMPLE_LINSPACE = {"beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "sample", "timestep_spacing": "linspace"}
COSINE = {"beta_schedule": "squaredcos_cap_v2"}
ZERO_SNR = SD | {"rescale_betas_zero_snr": True, "prediction_type": "v_prediction", "timestep_spacing": "trailing"}

SHAPE = (2, 4, 6, 6)
RNG = jax.random.key(42)
_rs = np.random.RandomState(0)
NOISE = _rs.randn(*SHAPE).astype(np.float32)
INIT = (0.7 * _rs.randn(*SHAPE)).astype(np.float32)
MASK = (_rs.rand(1, 1, 6, 6) > 0.5).astype(np.float32)


def _case(sampler, config, steps=10, **kw):
    name = kw.pop("id")
    return pytest.param(sampler, config, steps, kw, id=f"{sampler}-{name}")


NEW_DPM = ("dpmpp_2m_sde", "dpmpp_3m", "dpmpp_3m_sde")  # fewer of the sweeps below: they share dpmpp_2m's code
BASE = tuple(s for s in SAMPLERS if s not in NEW_DPM)

CASES = (
    [_case(s, SD15, id="sd15") for s in SAMPLERS]
    + [_case(s, SDXL, id="sdxl-leading") for s in BASE]
    + [_case(s, SD21_TRAILING, id="v-trailing") for s in BASE + ("dpmpp_2m_sde",)]
    + [_case(s, SAMPLE_LINSPACE, id="sample-linspace") for s in BASE if s != "euler_a"]  # diffusers: no sample
    + [_case(s, SD, start_step=3, img2img=True, id="img2img-start3") for s in SAMPLERS]
    + [_case(s, SD, inpaint=True, id="inpaint") for s in BASE + ("dpmpp_2m_sde",)]
    + [
        _case("ddpm", COSINE, id="cosine"),
        _case("ddim", COSINE | {"prediction_type": "v_prediction"}, eta=1.0, id="cosine-v-eta1"),
        _case("dpmpp_2m", COSINE | {"prediction_type": "sample"}, id="cosine-sample"),
        _case("euler", COSINE, atol=2e-3, id="cosine"),  # starts at sigma 2e4: float32 ulps of 2e4 are 2e-3
        _case("dpmpp_2m", COSINE, karras=True, id="cosine-karras"),  # unrounded (truncated) Karras timesteps
        _case("euler", SDXL, karras=True, id="karras"),
        _case("heun", SD, karras=True, id="karras"),
        _case("dpmpp_2m", SDXL, karras=True, id="karras"),
        _case("euler", SD | {"timestep_spacing": "trailing"}, karras=True, start_step=2, img2img=True, id="k-img2img"),
        _case("dpmpp_2m", SD, 20, karras=True, start_step=5, img2img=True, inpaint=True, id="karras-inpaint-20"),
        _case("heun", SD, start_step=4, img2img=True, inpaint=True, id="img2img-inpaint"),
        _case("dpmpp_2m", SD | {"solver_type": "heun"}, 16, id="solver-heun-16"),
        _case("dpmpp_2m", SD | {"final_sigmas_type": "sigma_min"}, 16, id="sigma-min-second-order-final"),
        _case("dpmpp_2m", SD | {"euler_at_final": True, "lower_order_final": False}, id="euler-at-final"),
        _case("dpmpp_2m_sde", SD | {"solver_type": "heun"}, 16, id="solver-heun-16"),
        _case("dpmpp_2m_sde", SDXL, karras=True, id="karras"),
        _case("dpmpp_2m_sde", SAMPLE_LINSPACE, id="sample-linspace"),
        _case("dpmpp_3m", SD | {"final_sigmas_type": "sigma_min"}, 16, id="sigma-min-third-order-final"),
        _case("dpmpp_3m", SD21_TRAILING | {"lower_order_final": False}, id="v-trailing-no-lower-final"),
        _case("dpmpp_3m_sde", SD, 20, karras=True, start_step=5, img2img=True, inpaint=True, id="karras-inpaint-20"),
        _case("euler", SD | {"final_sigmas_type": "sigma_min"}, id="sigma-min"),
        _case("ddim", SD | {"timestep_spacing": "linspace"}, eta=0.5, id="linspace-eta05"),
        _case("ddim", SD | {"clip_sample": True, "prediction_type": "sample"}, id="clip"),
        _case("heun", SD | {"clip_sample": True, "prediction_type": "sample"}, id="clip"),
        _case("ddpm", SD | {"variance_type": "fixed_large"}, id="fixed-large"),
        _case("ddpm", SD | {"timestep_spacing": "trailing"}, 7, id="trailing-7"),
    ]
    + [_case(s, ZERO_SNR, id="zero-snr") for s in ("ddpm", "ddim", "euler", "euler_a", "dpmpp_2m", "dpmpp_3m_sde")]
)


@functools.lru_cache
def _step_noises(steps: int) -> np.ndarray:
    return np.asarray(jax.jit(jax.vmap(lambda i: step_noise(RNG, i, SHAPE)))(jnp.arange(steps)))


@pytest.mark.parametrize("sampler, config, steps, kw", CASES)
def test_final_sample_matches_diffusers(sampler, config, steps, kw, diffusers_ref):
    sched = Schedule.from_config(config)
    eta, karras, start = kw.get("eta", 0.0), kw.get("karras"), kw.get("start_step", 0)
    init = INIT if kw.get("img2img") else None
    blend = (INIT, MASK) if kw.get("inpaint") else None
    step_noises = _step_noises(steps)
    ref = diffusers_ref.run(
        sampler, config, steps, NOISE, eta=eta, use_karras_sigmas=karras, start_step=start,
        init_latents=init, blend=blend, step_noises=step_noises,
    )  # fmt: skip

    blend_fn = inpaint_blend(jnp.asarray(INIT), jnp.asarray(MASK), jnp.asarray(NOISE)) if blend else None
    run = jax.jit(
        functools.partial(
            sample, functools.partial(diffusers_ref.toy_model, jnp), sched=sched, sampler=sampler,
            num_steps=steps, eta=eta, use_karras_sigmas=karras, start_step=start, blend_fn=blend_fn,
        )
    )
    ours = run(jnp.asarray(NOISE), rng=RNG, init_latents=None if init is None else jnp.asarray(init))

    np.testing.assert_allclose(np.asarray(ours), ref, rtol=0, atol=kw.get("atol", 1e-4))
    assert np.abs(ref).max() > 0.1  # the toy model left something to compare


def _as_diffusers_timesteps(sampler, timesteps):
    if sampler == "heun":  # diffusers lists Heun's second evaluation as a step of its own
        return np.concatenate([timesteps[:1], np.repeat(timesteps[1:], 2)])
    return timesteps


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [7, 25])
def test_timesteps_and_init_sigma_match_diffusers(sampler, spacing, steps, diffusers_ref):
    config = SD15 | {"timestep_spacing": spacing}
    plan = make_plan(Schedule.from_config(config), sampler, steps)
    np.testing.assert_array_equal(
        _as_diffusers_timesteps(sampler, plan.timesteps), diffusers_ref.timesteps(sampler, config, steps)
    )
    sch = diffusers_ref.scheduler(sampler, config)
    sch.set_timesteps(steps)
    assert plan.init_noise_sigma == pytest.approx(float(sch.init_noise_sigma), rel=1e-6)
    if plan.sigmas is not None:
        ref_sigmas = sch.sigmas.numpy()
        if sampler == "heun":
            ref_sigmas = np.concatenate([ref_sigmas[:1], ref_sigmas[1:-1:2], ref_sigmas[-1:]])
        np.testing.assert_allclose(plan.sigmas, ref_sigmas, rtol=1e-6)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m"])
@pytest.mark.parametrize("config", [SDXL, COSINE], ids=["sdxl", "cosine"])
def test_karras_timesteps_match_diffusers(sampler, config, diffusers_ref):
    plan = make_plan(Schedule.from_config(config), sampler, 12, use_karras_sigmas=True)
    ref = diffusers_ref.timesteps(sampler, config, 12, use_karras_sigmas=True)
    np.testing.assert_allclose(_as_diffusers_timesteps(sampler, plan.timesteps), ref, rtol=0, atol=1e-4)


def test_trailing_spacing_keeps_num_steps_where_diffusers_adds_one(diffusers_ref):
    # np.arange(1000, 0, -1000 / 61) has 62 entries, so diffusers schedules a 62nd step at timestep -1.
    ref = diffusers_ref.timesteps("ddim", SD | {"timestep_spacing": "trailing"}, 61)
    plan = make_plan(Schedule.from_config(SD | {"timestep_spacing": "trailing"}), "ddim", 61)
    assert len(ref) == 62 and ref[-1] == -1
    np.testing.assert_array_equal(plan.timesteps, ref[:61])


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s not in ("dpmpp_2m_sde", "dpmpp_3m")])  # 3m_sde has both
def test_whole_loop_is_one_program_traced_once(sampler, diffusers_ref):
    traces = []

    def model_fn(x, t):
        traces.append(t)
        return diffusers_ref.toy_model(jnp, x, t)

    sched = Schedule.from_config(SD15)
    sites = 3 if sampler == "heun" else 1  # model calls in the loop body (Heun: two) + Heun's final Euler step
    for steps in (5, 12):
        traces.clear()
        jaxpr = jax.make_jaxpr(
            functools.partial(sample, model_fn, sched=sched, sampler=sampler, num_steps=steps)
        )(jnp.asarray(NOISE), rng=RNG).jaxpr
        assert len(traces) == sites
        top_level = [eqn.primitive.name for eqn in jaxpr.eqns]
        assert top_level.count("scan") == 1
        assert top_level.count("tanh") == (1 if sampler == "heun" else 0)  # the loop body holds the others

        traces.clear()
        run = jax.jit(functools.partial(sample, model_fn, sched=sched, sampler=sampler, num_steps=steps))
        run(jnp.asarray(NOISE), rng=RNG)
        run(jnp.asarray(NOISE) + 1, rng=jax.random.key(1))
        assert len(traces) == sites  # traced once, not per step nor per call
        run.lower(jnp.asarray(NOISE), rng=RNG).compile()


def test_strength_to_start_step_follows_diffusers_get_timesteps():
    assert strength_to_start_step(10, 1.0) == 0
    assert strength_to_start_step(10, 0.75) == 3  # int(7.5) = 7 steps run
    assert strength_to_start_step(50, 0.3) == 35
    with pytest.raises(ValueError, match="runs no step"):
        strength_to_start_step(10, 0.05)
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        strength_to_start_step(10, 1.5)


def _simple_model(x, t):
    return jnp.tanh(x) * (1.0 - t / 1000.0)


def test_img2img_at_full_strength_starts_from_noised_init_latents():
    sched = Schedule.from_config(SD15)
    noise, init = jnp.asarray(NOISE), jnp.asarray(INIT)
    with_init = sample(_simple_model, noise, sched, sampler="ddim", num_steps=4, init_latents=init)
    without = sample(_simple_model, noise, sched, sampler="ddim", num_steps=4)
    assert not np.allclose(with_init, without)  # the first timestep is 751, not pure noise


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"sampler": "plms"}, "sampler='plms' is not supported"),
        ({"sampler": "euler_a"}, "pass rng"),
        ({"sampler": "ddim", "eta": 1.0}, "pass rng"),
        ({"sampler": "ddim", "use_karras_sigmas": True}, "use_karras_sigmas=True needs one of"),
        ({"sampler": "euler", "eta": 0.5}, "eta=0.5 only applies to sampler='ddim'"),
        ({"sampler": "euler", "start_step": 4}, r"start_step must be an int in \[0, num_steps=4\)"),
        ({"sampler": "euler", "num_steps": 0}, r"num_steps must be an int in \[1, 1000\]"),
        ({"sampler": "euler", "init_latents": jnp.zeros((1, 4, 6, 6))}, "init_latents shape"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    kwargs = {"num_steps": 4} | kwargs
    with pytest.raises(ValueError, match=match):
        sample(_simple_model, jnp.asarray(NOISE), Schedule.from_config(SD15), **kwargs)


def test_config_karras_flag_applies_only_where_diffusers_reads_it():
    with_flag, without = Schedule.from_config(SD15 | {"use_karras_sigmas": True}), Schedule.from_config(SD15)
    assert not np.array_equal(make_plan(with_flag, "euler", 10).sigmas, make_plan(without, "euler", 10).sigmas)
    # EulerAncestralDiscreteScheduler and DDIM have no Karras option: the config flag is ignored...
    np.testing.assert_array_equal(make_plan(with_flag, "euler_a", 10).sigmas, make_plan(without, "euler_a", 10).sigmas)
    np.testing.assert_array_equal(make_plan(with_flag, "ddim", 10).timesteps, make_plan(without, "ddim", 10).timesteps)
    # ...while the explicit argument works for every sigma-based sampler
    karras_a = make_plan(without, "euler_a", 10, use_karras_sigmas=True)
    np.testing.assert_allclose(karras_a.sigmas, make_plan(with_flag, "euler", 10).sigmas)


def test_dpm_samplers_reject_a_config_of_another_dpm_variant():
    sde = Schedule.from_config(SD15 | {"_class_name": "DPMSolverMultistepScheduler", "solver_order": 2,
                                       "algorithm_type": "sde-dpmsolver++"})
    asks_sde = r"asks for \{'algorithm_type': 'sde-dpmsolver\+\+'\}: use sampler='dpmpp_2m_sde'"
    with pytest.raises(ValueError, match=asks_sde):
        make_plan(sde, "dpmpp_2m", 10)  # used to run plain DPM++ 2M
    assert make_plan(sde, "dpmpp_2m_sde", 10).stochastic
    assert make_plan(sde, "dpmpp_3m_sde", 10).stochastic  # solver_order=2 is the default: no request
    make_plan(sde, "euler", 10)  # the Euler scheduler does not read DPM-Solver keys
    with pytest.raises(ValueError, match="solver_order': 3}: use sampler='dpmpp_3m_sde'"):
        make_plan(Schedule.from_config(SD15 | {"solver_order": 3}), "dpmpp_2m_sde", 10)
    # diffusers saves its defaults into every config: they leave the choice to the sampler
    default = Schedule.from_config(SD15 | {"algorithm_type": "dpmsolver++", "solver_order": 2})
    assert make_plan(default, "dpmpp_3m_sde", 10).stochastic


def test_sde_sampler_noise_comes_from_rng():
    sched, noise = Schedule.from_config(SD15), jnp.asarray(NOISE)
    with pytest.raises(ValueError, match="pass rng"):
        sample(_simple_model, noise, sched, sampler="dpmpp_2m_sde", num_steps=4)
    run = jax.jit(functools.partial(sample, _simple_model, sched=sched, sampler="dpmpp_2m_sde", num_steps=4))
    a, b, c = run(noise, rng=RNG), run(noise, rng=RNG), run(noise, rng=jax.random.key(7))
    np.testing.assert_array_equal(a, b)
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-2
