"""The fine-tuning objectives against values worked out by hand."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from canvas_jax.errors import InputError
from canvas_jax.rl.objectives import PerPromptStats, clipped_policy_loss, diffusion_dpo_loss


def test_diffusion_dpo_loss_by_hand():
    # pair 1: the policy improved the chosen image's error relative to the reference; pair 2: it did the opposite
    err_w, err_l = jnp.array([0.10, 0.30]), jnp.array([0.20, 0.20])
    ref_w, ref_l = jnp.array([0.15, 0.25]), jnp.array([0.20, 0.20])
    loss, m = diffusion_dpo_loss(err_w, err_l, ref_w, ref_l, beta=10.0)
    inside = [-5.0 * ((0.10 - 0.20) - (0.15 - 0.20)), -5.0 * ((0.30 - 0.20) - (0.25 - 0.20))]  # 0.25, -0.25
    want = -np.mean([math.log(1 / (1 + math.exp(-v))) for v in inside])
    assert float(loss) == pytest.approx(want, rel=1e-6)
    assert float(m["implicit_acc"]) == 0.5 and float(m["reward_margin"]) == pytest.approx(0.0, abs=1e-6)
    # equal to the reference everywhere: log 2, whatever beta
    same, _ = diffusion_dpo_loss(ref_w, ref_l, ref_w, ref_l, beta=5000.0)
    assert float(same) == pytest.approx(math.log(2), rel=1e-6)


def test_clipped_policy_loss_by_hand():
    old = jnp.zeros(4)
    new = jnp.log(jnp.array([1.5, 0.5, 1.05, 1.0]))
    adv = jnp.array([1.0, 1.0, -2.0, 3.0])
    loss, m = clipped_policy_loss(new, old, adv, clip=0.2)
    # per element max(-A r, -A clip(r)): -1.2 (clipped above), -0.5, 2.1, -3.0
    assert float(loss) == pytest.approx(np.mean([-1.2, -0.5, 2.1, -3.0]), rel=1e-6)
    assert float(m["clip_frac"]) == 0.5
    assert float(m["approx_kl"]) == pytest.approx(0.5 * np.mean(np.log([1.5, 0.5, 1.05, 1.0]) ** 2), rel=1e-5)
    with pytest.raises(InputError, match="clip=0"):
        clipped_policy_loss(new, old, adv, clip=0)


def test_per_prompt_stats_use_the_batch_until_a_prompt_has_enough():
    stats = PerPromptStats(buffer_size=4, min_count=3)
    first = stats.update(["a", "a", "b"], [1.0, 3.0, 2.0])  # nobody has 3 yet: batch mean 2, std sqrt(2/3)
    np.testing.assert_allclose(first, np.array([-1.0, 1.0, 0.0]) / (math.sqrt(2 / 3) + 1e-6), rtol=1e-6)
    second = stats.update(["a", "b"], [5.0, 2.0])  # "a" now holds 1, 3, 5: its own stats
    assert second[0] == pytest.approx((5.0 - 3.0) / (np.std([1.0, 3.0, 5.0]) + 1e-6), rel=1e-6)
    assert second[1] == pytest.approx((2.0 - 3.5) / (np.std([5.0, 2.0]) + 1e-6), rel=1e-6)  # "b" has 2: batch
    restored = PerPromptStats()
    restored.load_state(json.loads(json.dumps(stats.state())))
    assert restored.update(["a"], [7.0]) == pytest.approx(stats.update(["a"], [7.0]))
    assert list(restored.buffers["a"]) == [1.0, 3.0, 5.0, 7.0]
    restored.update(["a"], [9.0])  # the buffer keeps the last buffer_size rewards
    assert list(restored.buffers["a"]) == [3.0, 5.0, 7.0, 9.0]
    with pytest.raises(InputError, match="one reward per prompt"):
        stats.update(["a"], [1.0, 2.0])


def test_every_process_holds_the_same_per_prompt_stats():
    """Two processes (simulated: a fake all-gather of both processes' rows) each normalise their own rows with
    statistics over the whole rollout; both end with the statistics one process gets from the concatenated rollout."""
    from canvas_jax.train.rollouts import shared_advantages

    names = ["a", "b", "c"]
    rows = [(np.array([0, 0, 1, 1]), np.array([1.0, 3.0, 2.0, 6.0])),  # process 0: "a" x2, "b" x2
            (np.array([1, 1, 2, 2]), np.array([4.0, 0.0, 5.0, 7.0]))]  # process 1: "b" x2, "c" x2
    single = PerPromptStats(buffer_size=8, min_count=3)
    want = single.update([names[i] for i in np.concatenate([r[0] for r in rows])], np.concatenate([r[1] for r in rows]))

    def gather(x):  # what process_allgather returns: every process's array, stacked in process order
        return np.stack([ids if x.dtype == np.int32 else rewards.astype(np.float32) for ids, rewards in rows])

    stats = [PerPromptStats(buffer_size=8, min_count=3) for _ in rows]
    for rollout in range(2):  # the second rollout uses the pooled buffers ("b": 4 rewards from both processes)
        got = [shared_advantages(stats[index], ids, rewards, names, process_count=2, process_index=index,
                                 gather=gather) for index, (ids, rewards) in enumerate(rows)]
        if rollout == 0:
            np.testing.assert_allclose(np.concatenate(got), want, rtol=1e-6)
        assert stats[0].state() == stats[1].state()
    assert len(stats[0].buffers["b"]) == 8
    solo = PerPromptStats(buffer_size=8, min_count=3)
    np.testing.assert_array_equal(shared_advantages(solo, rows[0][0], rows[0][1], names, process_count=1),
                                  PerPromptStats(buffer_size=8, min_count=3).update(["a", "a", "b", "b"], rows[0][1]))
