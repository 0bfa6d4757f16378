"""The losses of preference and reward fine-tuning, as pure functions of per-example quantities.

* :func:`diffusion_dpo_loss`: Diffusion-DPO (Wallace et al., 2023): the policy should lower its denoising error on
  the chosen image more than on the rejected one, relative to a frozen reference, for the same noise and
  timestep; ``-log sigmoid(-beta / 2 * ((e_w - e_l) - (ref_w - ref_l)))``.
* :func:`clipped_policy_loss`: DDPO's PPO-style objective (Black et al., 2023) on per-step log-probabilities
  of sampler transitions: importance ratio against the policy that sampled, clipped to ``1 +- clip``.
* :class:`PerPromptStats`: advantages normalised by the running mean and std of each prompt's rewards (DDPO's
  per-prompt stat tracking), with state that a checkpoint can hold.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from canvas_jax.errors import InputError


def diffusion_dpo_loss(err_w: jax.Array, err_l: jax.Array, ref_err_w: jax.Array, ref_err_l: jax.Array,
                       beta: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Diffusion-DPO on per-pair denoising errors ``[B]`` (mean squared error of the prediction against its
    target, per example) of the policy and the frozen reference on the chosen (``w``) and rejected (``l``)
    images. Returns (loss, metrics): ``implicit_acc`` (pairs the policy ranks right relative to the reference),
    ``reward_margin`` (mean ``beta / 2`` times the reference-relative error gap in favour of the chosen)."""
    inside = -0.5 * beta * ((err_w - err_l) - (ref_err_w - ref_err_l))
    loss = -jnp.mean(jax.nn.log_sigmoid(inside))
    return loss, {"dpo_loss": loss, "implicit_acc": jnp.mean((inside > 0).astype(jnp.float32)),
                  "reward_margin": jnp.mean(inside), "err_chosen": jnp.mean(err_w), "err_rejected": jnp.mean(err_l)}


def clipped_policy_loss(log_probs: jax.Array, old_log_probs: jax.Array, advantages: jax.Array, clip: float,
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """PPO's clipped surrogate: ``mean(max(-A r, -A clip(r, 1 - clip, 1 + clip)))`` with ``r = exp(lp - old)``.
    All inputs broadcast together (e.g. ``[B]`` per sampled step). Metrics: ``approx_kl`` (``0.5 mean((lp -
    old)^2)``) and ``clip_frac`` (the fraction of ratios outside the clip range)."""
    if not clip > 0:
        raise InputError(f"clip={clip}: expected a positive clip range (e.g. 1e-4 as DDPO, 0.2 as PPO)")
    diff = log_probs - old_log_probs
    ratio = jnp.exp(diff)
    loss = jnp.mean(jnp.maximum(-advantages * ratio, -advantages * jnp.clip(ratio, 1.0 - clip, 1.0 + clip)))
    return loss, {"policy_loss": loss, "approx_kl": 0.5 * jnp.mean(jnp.square(diff)),
                  "clip_frac": jnp.mean((jnp.abs(ratio - 1.0) > clip).astype(jnp.float32))}


class PerPromptStats:
    """Advantages ``(r - mean) / (std + 1e-6)`` with each prompt's mean and std over its last ``buffer_size``
    rewards (this batch's included), or over the whole batch while a prompt has fewer than ``min_count``."""

    def __init__(self, buffer_size: int = 32, min_count: int = 16):
        if buffer_size < 1 or not 1 <= min_count <= buffer_size:
            raise InputError(f"PerPromptStats: buffer_size={buffer_size}, min_count={min_count}; expected "
                             "buffer_size >= 1 and 1 <= min_count <= buffer_size")
        self.buffer_size, self.min_count = buffer_size, min_count
        self.buffers: dict[str, collections.deque] = {}

    def update(self, prompts: Sequence[str], rewards) -> np.ndarray:
        rewards = np.asarray(rewards, np.float64)
        if rewards.shape != (len(prompts),):
            raise InputError(f"PerPromptStats.update: expected one reward per prompt ({len(prompts)}), "
                             f"got shape {rewards.shape}")
        out = np.zeros(len(prompts), np.float32)
        prompts = list(prompts)
        for prompt in dict.fromkeys(prompts):
            rows = [i for i, p in enumerate(prompts) if p == prompt]
            buf = self.buffers.setdefault(prompt, collections.deque(maxlen=self.buffer_size))
            buf.extend(rewards[rows].tolist())
            ref = np.asarray(buf) if len(buf) >= self.min_count else rewards
            out[rows] = (rewards[rows] - ref.mean()) / (ref.std() + 1e-6)
        return out

    def state(self) -> dict:
        """JSON-able state (for a checkpoint); :meth:`load_state` restores it."""
        return {"buffer_size": self.buffer_size, "min_count": self.min_count,
                "buffers": {p: list(b) for p, b in self.buffers.items()}}

    def load_state(self, state: dict) -> None:
        self.buffer_size, self.min_count = int(state["buffer_size"]), int(state["min_count"])
        self.buffers = {p: collections.deque(v, maxlen=self.buffer_size) for p, v in state["buffers"].items()}
