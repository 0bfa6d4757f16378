"""On-policy data for ``task=rl``: rollouts of the current policy, scored, in minibatches, checkpointable.

:class:`RolloutIterator` is the task's train iterator. The loop shows it the current train state before every
``next`` (``observe``). When its buffer is used up it runs a rollout: ``rl.rollout_size`` trajectories (this
process's share), ``rl.per_prompt`` of each of a draw of train prompts, sampled by the policy in one jitted,
data-sharded program (:meth:`canvas_jax.train.rl_task.RLTask.rollout`: every state and step log-probability);
scores them with every reward (each kept apart for the metrics; the distribution-level ones see each prompt's
group); and turns the weighted total into advantages normalised per prompt with running statistics
(:class:`~canvas_jax.rl.objectives.PerPromptStats`). Then it serves ``rl.inner_epochs`` shuffled passes over the
buffer in minibatches of ``train.batch_size``: ``states`` [b, S+1, h, w, c], ``log_probs`` [b, S] (the sampling
policy's), ``advantages`` [b], ``text_emb`` and each ``reward_<name>`` [b] (plus ``pt_*``: a batch of the
pre-training data when ``rl.pretrain_weight`` > 0).

Its state (in every checkpoint, per process) holds the buffer, the position in it, the rollout count and the
per-prompt statistics (the same in every process: each updates them with the whole rollout), so a run killed between two checkpoints resumes exactly: prompt draws, sampling keys and
minibatch orders follow from (``train.seed``, rollout index, epoch, process).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from canvas_jax.rl.objectives import PerPromptStats
from core_jax import mesh as mesh_lib
from core_jax.config import ConfigError
from core_jax.task import DataContext


def local_rows(x: jax.Array, mesh) -> np.ndarray:
    """This process's rows of a global batch-sharded array, as numpy."""
    if jax.process_count() == 1:
        return np.asarray(jax.device_get(x))
    return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, mesh_lib.batch_spec(x.ndim)))


def _pack(arrays: dict[str, np.ndarray]) -> str:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _unpack(text: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(base64.b64decode(text))) as f:
        return {k: f[k] for k in f.files}


def shared_advantages(stats: PerPromptStats, prompt_ids: np.ndarray, rewards: np.ndarray, prompts: Sequence[str], *,
                      process_count: int | None = None, process_index: int | None = None,
                      gather=multihost_utils.process_allgather) -> np.ndarray:
    """Advantages of this process's rows (``prompts[prompt_ids[i]]`` scored ``rewards[i]``) with per-prompt statistics
    over every process's rows: each process updates its ``stats`` with the whole rollout (processes in order), so
    all hold the same statistics and a prompt drawn by several processes pools its rewards."""
    count = jax.process_count() if process_count is None else process_count
    if count == 1:
        return stats.update([prompts[i] for i in prompt_ids], rewards)
    index = jax.process_index() if process_index is None else process_index
    ids = np.asarray(gather(np.asarray(prompt_ids, np.int32))).reshape(count, -1)
    everyone = np.asarray(gather(np.asarray(rewards, np.float32))).reshape(count, -1)
    return stats.update([prompts[i] for i in ids.ravel()], everyone.ravel()).reshape(count, -1)[index]


class RolloutIterator:
    """Minibatches of on-policy rollouts (see the module docstring) for ``task`` (an ``RLTask``)."""

    def __init__(self, task, ctx: DataContext, prompts: Sequence[str], pretrain=None):
        rl = task.cfg.rl
        self.task, self.ctx, self.prompts, self.pretrain = task, ctx, list(prompts), pretrain
        if rl.rollout_size % ctx.process_count or (rl.rollout_size // ctx.process_count) % rl.per_prompt:
            raise ConfigError(f"config key 'rl.rollout_size': {rl.rollout_size} must divide into the "
                              f"{ctx.process_count} processes' shares, each a multiple of rl.per_prompt "
                              f"({rl.per_prompt})")
        self.size = rl.rollout_size // ctx.process_count  # this process's trajectories per rollout
        if self.size % ctx.batch_size:
            raise ConfigError(f"config key 'train.batch_size': {ctx.batch_size * ctx.process_count} must divide "
                              f"rl.rollout_size ({rl.rollout_size}): each minibatch is a part of a rollout")
        self.per_epoch = self.size // ctx.batch_size
        self.steps_per_rollout = rl.inner_epochs * self.per_epoch
        self.stats = PerPromptStats(rl.stats_buffer, rl.stats_min_count)
        self.buffer: dict[str, np.ndarray] | None = None
        self.buffer_prompts: list[str] = []
        self.position = self.rollouts = 0
        self._trainer = self._state = None

    def __iter__(self):
        return self

    def observe(self, trainer, state) -> None:
        """The current train state (the loop calls this before every ``next``); held until that ``next``."""
        self._trainer, self._state = trainer, state

    def _rollout(self) -> None:
        if self._state is None:
            raise RuntimeError("RolloutIterator: no train state to sample from; the loop calls observe(trainer, "
                               "state) before next()")
        rl, ctx = self.task.cfg.rl, self.ctx
        k = self.rollouts
        rng = np.random.default_rng([ctx.seed, k, ctx.process_index])
        groups = self.size // rl.per_prompt
        picks = np.repeat(rng.choice(len(self.prompts), groups, replace=groups > len(self.prompts)), rl.per_prompt)
        prompts = [self.prompts[i] for i in picks]
        key = jax.random.fold_in(jax.random.key(ctx.seed + 17), k)
        states, log_probs, images = self.task.rollout(self._trainer, self._state, prompts, key)
        total, parts = self.task.rewards.scores(images, prompts)
        advantages = shared_advantages(self.stats, picks, total, self.prompts)
        self.buffer = {"states": states, "log_probs": log_probs, "advantages": advantages.astype(np.float32),
                       "reward_total": total, **{f"reward_{n}": v for n, v in parts.items()}}
        self.buffer_prompts, self.position, self.rollouts = prompts, 0, k + 1

    def __next__(self) -> dict:
        try:
            if self.buffer is None or self.position >= self.steps_per_rollout:
                self._rollout()
        finally:
            self._state = None  # the loop donates it to the step: never sample from it again
        epoch, i = divmod(self.position, self.per_epoch)
        order = np.random.default_rng([self.ctx.seed, self.rollouts - 1, epoch, self.ctx.process_index]).permutation(
            self.size)
        rows = order[i * self.ctx.batch_size:(i + 1) * self.ctx.batch_size]
        self.position += 1
        batch = {k: v[rows] for k, v in self.buffer.items()}
        batch["text_emb"] = self.task.text_embeddings([self.buffer_prompts[r] for r in rows])
        if self.pretrain is not None:
            batch.update({f"pt_{k}": v for k, v in next(self.pretrain).items()})
        return batch

    # checkpointed per process by the loop (Grain's handler stores bytes for iterators that are not Grain's)
    def get_state(self) -> bytes:
        state = {"rollouts": self.rollouts, "position": self.position, "stats": self.stats.state(),
                 "prompts": self.buffer_prompts, "buffer": None if self.buffer is None else _pack(self.buffer),
                 "pretrain": None if self.pretrain is None else self.pretrain.get_state()}
        if isinstance(state["pretrain"], bytes):  # a CachedIterator's state
            state["pretrain"] = {"bytes": base64.b64encode(state["pretrain"]).decode("ascii")}
        return json.dumps(state).encode()

    def start_prefetch(self) -> None:  # Grain's restore calls it
        if hasattr(self.pretrain, "start_prefetch"):
            self.pretrain.start_prefetch()

    def set_state(self, state: bytes) -> None:
        state = json.loads(state.decode() if isinstance(state, bytes) else state)
        self.rollouts, self.position = int(state["rollouts"]), int(state["position"])
        self.stats.load_state(state["stats"])
        self.buffer_prompts = list(state["prompts"])
        self.buffer = None if state["buffer"] is None else _unpack(state["buffer"])
        inner = state.get("pretrain")
        if self.pretrain is not None and inner is not None:
            self.pretrain.set_state(base64.b64decode(inner["bytes"]) if "bytes" in inner else inner)
