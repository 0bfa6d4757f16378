"""Multi-reward policy-gradient fine-tuning (``task=rl``) of ``init_from``'s UNet: DDPO with PPO clipping.

The sampler (``rl.sampler``: DDIM with ``rl.eta`` > 0, DDPM or Euler ancestral; ``rl.num_steps`` steps,
``rl.guidance_scale``) is the policy: each step is a Gaussian ``x' ~ N(mean_theta(x), std^2)``. Training
alternates (:class:`~canvas_jax.train.rollouts.RolloutIterator`, the train data):

1. rollout: sample ``rl.rollout_size`` trajectories of train prompts (``rl.per_prompt`` per prompt) with the
   current weights in one jitted program sharded over the mesh's data axis (:meth:`RLTask.rollout`), keeping
   every state and each step's log-density;
2. reward: ``rl.rewards`` (:func:`canvas_jax.rl.rewards.parse_rewards`: several with weights, e.g.
   ``checker=1,diversity=0.1``; each logged as ``reward_<name>``, the weighted sum as ``reward_total``; the
   diversity reward is computed over each prompt's group); advantages normalised per prompt with running
   statistics (``rl.stats_buffer``, ``rl.stats_min_count``), clipped to ``+- rl.adv_clip``;
3. ``rl.inner_epochs`` passes over the rollout in minibatches of ``train.batch_size``, one optimizer step each:
   the PPO clipped surrogate (:func:`~canvas_jax.rl.objectives.clipped_policy_loss`, ``rl.clip_range``) of every
   noisy step's importance ratio ``exp(log p_theta - log p_old)`` (or, with ``rl.timestep_fraction`` < 1, of a
   random subset of the steps drawn per minibatch, as DDPO's ``timestep_fraction``), plus ``rl.kl_weight`` times
   the KL of each step's Gaussian to the base model's (the reference of
   :class:`~canvas_jax.train.dpo_task.ReferenceTask`: LoRA adapters off, or the frozen copy under full
   fine-tuning) and ``rl.pretrain_weight`` times the base's
   denoising loss on ``data.dataset`` (arXiv 2401.12244's pre-training regulariser).

Train and evaluation prompts are disjoint: ``rl.train_prompts=shapes`` are the single-shape Shapes prompts without
a held-out colour/shape pair, ``rl.eval_prompts=shapes`` the ones with one (or prompt files; an overlap, or a
held-out Shapes pair among the train prompts, is an error). Every ``train.eval_every`` steps and at the end
:meth:`RLTask.heldout_eval` samples the eval prompts with fixed keys and logs each reward and the strict Shapes
adherence (``split: heldout`` in ``metrics.jsonl``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding

from canvas_jax.diffusion import cfg_from_batch, gaussian_log_prob, make_plan, sample, transition_mean
from canvas_jax.errors import InputError
from canvas_jax.models.latent_diffusion import LatentDiffusion
from canvas_jax.rl.objectives import clipped_policy_loss
from canvas_jax.rl.rewards import CheckerReward, parse_rewards
from canvas_jax.train.dpo_task import ReferenceTask
from canvas_jax.train.rollouts import RolloutIterator, local_rows
from core_jax import mesh as mesh_lib
from core_jax.config import ConfigError
from core_jax.metrics import MetricWriter
from core_jax.task import DataContext


def rl_prompts(cfg) -> tuple[list[str], list[str]]:
    """(train prompts, eval prompts) of ``cfg.rl`` (see the module docstring); disjoint, or ConfigError."""
    from canvas_jax.data import shapes
    from canvas_jax.rl.collect import read_prompts

    rl = cfg.rl
    scfg = shapes.ShapesConfig(**{"resolution": cfg.data.image_size, **cfg.data.options})
    train = shapes.seen_prompts(scfg) if rl.train_prompts == "shapes" else read_prompts(rl.train_prompts)
    evals = shapes.heldout_prompts(scfg) if rl.eval_prompts == "shapes" else read_prompts(rl.eval_prompts)
    both = sorted(set(train) & set(evals))
    if both:
        raise ConfigError(f"config keys 'rl.train_prompts' / 'rl.eval_prompts': {len(both)} prompt(s) in both, e.g. "
                          f"{both[0]!r}; expected disjoint train and evaluation prompts")
    if "shapes" in (rl.train_prompts, rl.eval_prompts):
        for prompt in train:
            try:
                specs = shapes.parse_caption(prompt)
            except InputError:
                continue
            held = [s for s in specs if scfg.is_heldout(s)]
            if held:
                raise ConfigError(f"config key 'rl.train_prompts': {prompt!r} holds the held-out pair "
                                  f"({held[0].color}, {held[0].shape}); held-out Shapes pairs never appear in training")
    if not evals:
        raise ConfigError("config key 'rl.eval_prompts': no evaluation prompt (the Shapes config holds out no pair?)")
    return train, evals


class RLTask(ReferenceTask):
    """Policy-gradient fine-tuning of ``init_from``'s UNet toward ``rl.rewards`` (LoRA adapters or every weight)."""

    def __init__(self, cfg, *, data_fn=None):
        super().__init__(cfg, data_fn=data_fn)  # data_fn: the pre-training data (rl.pretrain_weight > 0)
        rl = cfg.rl
        self.eta = float(rl.eta) if rl.sampler == "ddim" else 0.0
        self.train_prompts, self.eval_prompts = rl_prompts(cfg)
        self.rewards = parse_rewards(rl.rewards)
        plan = make_plan(self.sched, rl.sampler, rl.num_steps, eta=self.eta)
        self.noisy_steps = np.nonzero(plan.steps["c_noise"] > 0)[0]  # steps with a density (DDPM's last has none)
        self.steps_per_update = max(1, round(rl.timestep_fraction * len(self.noisy_steps)))
        self.uncond = self.text_embeddings([""]) if rl.guidance_scale != 1.0 else None
        self._rollout_fn = None

    # ------------------------------------------------------------------ policy
    def text_embeddings(self, prompts: list[str]) -> np.ndarray:
        """The frozen text encoder's token states [B, T, D] (cached per distinct prompt)."""
        tok = self.tokenizer(list(prompts))
        return self.cache.lookup(tok["input_ids"], tok["attention_mask"])

    def guided(self, unet, ctx: jax.Array):
        """``model_fn(x, t)`` of ``unet`` on context ``ctx`` with ``rl.guidance_scale`` (empty-prompt negative)."""
        scale = self.cfg.rl.guidance_scale
        if scale == 1.0:
            return lambda x, t: unet(x, t, ctx)
        both = jnp.concatenate([jnp.broadcast_to(jnp.asarray(self.uncond, ctx.dtype), ctx.shape), ctx])
        return lambda x, t: cfg_from_batch(unet(jnp.concatenate([x, x]), t, both), scale)

    def sample(self, model: LatentDiffusion, ctx: jax.Array, key: jax.Array):
        """(states [B, S+1, h, w, c], log-probs [B, S], uint8 images [B, H, W, 3]) of one rollout."""
        rl, vae = self.cfg.rl, model.vae
        side = self.cfg.data.image_size // vae.downsample_factor
        noise = jax.random.normal(jax.random.fold_in(key, 0), (ctx.shape[0], side, side,
                                                               model.unet.config["out_channels"]), jnp.float32)
        traj = sample(self.guided(model.unet, ctx), noise, self.sched, sampler=rl.sampler, num_steps=rl.num_steps,
                      rng=jax.random.fold_in(key, 1), eta=self.eta, return_log_probs=True)
        images = vae.decode(traj.latents / vae.scaling_factor + vae.shift_factor).astype(jnp.float32)
        images = jnp.round(jnp.clip(images / 2.0 + 0.5, 0.0, 1.0) * 255.0).astype(jnp.uint8)
        return jnp.moveaxis(traj.states, 0, 1), traj.log_probs, images

    def rollout(self, trainer, state: dict, prompts: list[str], key: jax.Array):
        """:meth:`sample` of this process's ``prompts`` (its share of the global batch) with the weights of
        ``state``, as one jitted program sharded over the data axis; returns this process's rows as numpy."""
        mesh = trainer.mesh
        if self._rollout_fn is None:
            graphdef = trainer.graphdef
            out = tuple(NamedSharding(mesh, mesh_lib.batch_spec(n)) for n in (5, 2, 4))
            self._rollout_fn = jax.jit(lambda p, r, c, k: self.sample(nnx.merge(graphdef, p, r), c, k),
                                       out_shardings=out)
        ctx = mesh_lib.global_batch(self.text_embeddings(prompts), mesh)
        if ctx.shape[0] % mesh_lib.batch_divisor(mesh):
            raise ConfigError(f"a rollout of {ctx.shape[0]} samples does not divide over the "
                              f"{mesh_lib.batch_divisor(mesh)} data-parallel devices")
        outs = self._rollout_fn(state["params"], state["rest"], ctx, key)
        return tuple(local_rows(x, mesh) for x in outs)

    # ------------------------------------------------------------------ Task
    def _step_means(self, unet, ctx, x, steps):
        """The Gaussian mean ``[n, B, ...]`` and std ``[n]`` of trajectory ``steps`` ``[n]`` from their states ``x``
        ``[n, B, ...]``."""
        rl, fn = self.cfg.rl, self.guided(unet, ctx)

        def body(_, xs):
            state, step = xs
            return None, transition_mean(fn, state, self.sched, step, sampler=rl.sampler, num_steps=rl.num_steps,
                                         eta=self.eta)

        _, (mean, std) = jax.lax.scan(body, None, (x, jnp.asarray(steps)))
        return mean, std

    def step_subset(self, rng: jax.Array) -> jax.Array:
        """``rl.timestep_fraction`` < 1: the trajectory steps one update trains on, a random ``steps_per_update``
        of the noisy steps, in order, the same for the whole minibatch."""
        return jnp.sort(jax.random.permutation(rng, jnp.asarray(self.noisy_steps))[:self.steps_per_update])

    def loss(self, model: LatentDiffusion, batch, rng):
        rl = self.cfg.rl
        missing = [k for k in ("states", "log_probs", "advantages", "text_emb") if k not in batch]
        if missing:
            raise KeyError(f"batch has no {missing} (keys: {sorted(batch)}); task=rl trains on RolloutIterator batches")
        steps = self.noisy_steps
        if self.steps_per_update < len(steps):
            rng, sub = jax.random.split(rng)
            steps = self.step_subset(sub)
        states, ctx = batch["states"].astype(jnp.float32), batch["text_emb"]
        x, x_next = jnp.moveaxis(states[:, steps], 1, 0), jnp.moveaxis(states[:, steps + 1], 1, 0)
        mean, std = self._step_means(model.unet, ctx, x, steps)
        log_probs = jax.vmap(gaussian_log_prob)(x_next, mean, std).T  # [B, n]
        adv = jnp.clip(batch["advantages"].astype(jnp.float32), -rl.adv_clip, rl.adv_clip)
        loss, metrics = clipped_policy_loss(log_probs, batch["log_probs"][:, steps].astype(jnp.float32), adv[:, None],
                                            rl.clip_range)
        if rl.kl_weight > 0:
            with self.reference_unet(model) as reference:
                base_mean, _ = self._step_means(reference, ctx, x, steps)
            sq = jnp.sum(jnp.square(mean - jax.lax.stop_gradient(base_mean)).reshape(*mean.shape[:2], -1), axis=-1)
            kl = jnp.mean(sq / (2.0 * jnp.square(std)[:, None]))
            loss, metrics["kl"] = loss + rl.kl_weight * kl, kl
        if rl.pretrain_weight > 0:
            mse, w = self.per_example_loss(model, {k[3:]: v for k, v in batch.items() if k.startswith("pt_")}, rng)
            pretrain = jnp.mean(w * mse)
            loss, metrics["pretrain_loss"] = loss + rl.pretrain_weight * pretrain, pretrain
        metrics.update({k: jnp.mean(v) for k, v in batch.items() if k.startswith("reward_")})
        metrics["advantage_abs"] = jnp.mean(jnp.abs(adv))
        return loss, metrics

    def train_data(self, ctx: DataContext):
        pretrain = None
        if self.cfg.rl.pretrain_weight > 0:
            pretrain = self._wrap(self.data_fn(self.cfg, self.tokenizer, ctx, "train", False))
        return RolloutIterator(self, ctx, self.train_prompts, pretrain)

    def eval_data(self, ctx: DataContext):
        return None  # evaluation samples: heldout_eval (a hook)

    # ------------------------------------------------------------------ held-out evaluation
    def heldout_eval(self, trainer, step: int, state: dict) -> dict:
        """Sample the eval prompts (``rl.eval_per_prompt`` each, fixed keys) with the current weights; log and
        return each reward's mean and, for Shapes prompts, the strict checker's adherence."""
        rl = self.cfg.rl
        rows = [p for p in self.eval_prompts[:rl.eval_prompts_max] for _ in range(rl.eval_per_prompt)]
        rows = rows[:len(rows) - len(rows) % mesh_lib.batch_divisor(trainer.mesh)]
        if not rows:
            return {}
        share = len(rows) // jax.process_count()
        mine = rows[jax.process_index() * share:(jax.process_index() + 1) * share]
        _, _, images = self.rollout(trainer, state, mine, jax.random.key(self.cfg.train.seed + 4242))
        total, parts = self.rewards.scores(images, mine)
        sums = {"reward_total": total.sum(), **{f"reward_{n}": v.sum() for n, v in parts.items()}}
        try:
            sums["adherence"] = CheckerReward(strict=True)(images, mine).sum()
        except InputError:
            pass  # not Shapes prompts: no strict verdict
        values = np.asarray(list(sums.values()) + [len(mine)], np.float64)
        if jax.process_count() > 1:
            values = np.asarray(multihost_utils.process_allgather(values)).reshape(-1, values.size).sum(0)
        metrics = {k: float(v / values[-1]) for k, v in zip(sums, values)}
        writer = MetricWriter(trainer.tc.run_dir, enabled=jax.process_index() == 0, tensorboard=False)
        try:
            writer.write(step, metrics, prefix="heldout")
        finally:
            writer.close()
        return metrics
