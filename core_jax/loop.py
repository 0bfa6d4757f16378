"""The one generic train loop. Model packages plug in through a :class:`core_jax.task.Task`.

A run: mesh -> state created already sharded (``jit`` with output shardings) -> restore the latest
checkpoint if any -> jitted, donated train steps (gradient accumulation, optax, EMA, bf16 compute,
NaN/Inf guard) over global batches -> periodic logging, eval, checkpoints and user hooks -> a final
checkpoint. SIGTERM/SIGINT save a checkpoint at the current step and raise :class:`core_jax.stopping.Stopped`
(console entries exit 143/130); :meth:`Trainer.request_stop` (a time limit) saves and returns.

Multi-process: every process takes the same decisions (stop, best checkpoint, early stop) at the same
step: stop requests are gathered from all processes, best-metric decisions are taken on process 0 (which
alone reads and writes ``best.json``) and broadcast.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from core_jax import config as config_lib
from core_jax import mesh as mesh_lib
from core_jax.checkpoint import CheckpointConfig, Checkpointer
from core_jax.metrics import MetricWriter
from core_jax.optim import OptimConfig, make_optimizer, make_schedule
from core_jax.stopping import Stopped
from core_jax.task import DataContext, Task

log = logging.getLogger(__name__)


@dataclasses.dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 32  # global, across all processes
    grad_accum_steps: int = 1  # the batch is split into this many micro-batches
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end
    eval_batches: int = 0  # 0 = the whole eval set
    ema_decay: float | None = None
    # EMA decay at update t (from 0) is min(ema_decay, (1 + t) / (10 + t)), as diffusers' EMAModel: the
    # average forgets the random init within the first hundreds of steps (false: ema_decay from step 0)
    ema_warmup: bool = True
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    nan_policy: Literal["skip", "stop"] = "skip"
    best_metric: str | None = None  # an eval metric: its best value's state is kept in RUN_DIR/best
    best_mode: Literal["max", "min"] = "max"
    early_stop_patience: int = 0  # stop after this many evals without a new best (0 = never)
    run_dir: str = "runs/default"
    resume: bool = True
    progress: bool = True
    tensorboard: bool = True
    checkpoint: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)


@dataclasses.dataclass
class Hook:
    """``fn(trainer, step, state)`` every ``every`` steps (and at the end when ``at_end``), on all processes."""

    every: int
    fn: Callable[["Trainer", int, dict], None]
    at_end: bool = True


class TimeLimit:
    """A hook ``fn`` that stops training (:meth:`Trainer.request_stop`: checkpoint at the current step, then
    ``fit`` returns) once ``seconds`` of wall time have passed since its first call (the first step:
    compilation and anything run before training do not count). ``stopped`` tells whether it fired. Process
    0's clock decides; the loop stops every process at the same step."""

    def __init__(self, seconds: float):
        self.seconds, self.start, self.stopped = float(seconds), None, False

    def __call__(self, trainer: "Trainer", step: int, state: dict) -> None:
        now = time.monotonic()
        self.start = now if self.start is None else self.start
        if not self.stopped and now - self.start > self.seconds and jax.process_index() == 0:
            self.stopped = True
            trainer.request_stop()


def time_limit_hook(seconds: float, every: int = 1) -> Hook:
    """A :class:`Hook` running :class:`TimeLimit` every ``every`` steps (``hook.fn.stopped`` after the run)."""
    return Hook(every=every, fn=TimeLimit(seconds), at_end=False)


class NonFiniteError(RuntimeError):
    pass


def _cast_floats(tree, dtype):
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _flops(compiled) -> float | None:
    try:
        ca = compiled.cost_analysis()
    except Exception:  # some backends have no cost analysis
        return None
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    flops = (ca or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


class Trainer:
    """Runs ``task`` with a run config that has ``train``, ``optim`` and ``mesh`` sections."""

    def __init__(self, task: Task, cfg: Any, *, hooks: Sequence[Hook] = (), mesh=None):
        self.task, self.cfg, self.hooks = task, cfg, list(hooks)
        # what the optimizer trains: the task's nnx filter (e.g. LoRA weights only), by default every
        # nnx.Param; everything else in the model is carried, sharded and checkpointed but frozen
        self.trainable = getattr(task, "trainable", nnx.Param)
        self.tc: TrainConfig = cfg.train
        self.oc: OptimConfig = cfg.optim
        self.mesh = mesh or mesh_lib.make_mesh(cfg.mesh)
        self.rules = cfg.mesh.rules
        self.is_main = jax.process_index() == 0
        tc = self.tc
        if tc.batch_size % (jax.process_count() * tc.grad_accum_steps):
            raise config_lib.ConfigError(
                f"config key 'train.batch_size': {tc.batch_size} must divide by processes x grad_accum_steps "
                f"({jax.process_count()} x {tc.grad_accum_steps})")
        micro = tc.batch_size // tc.grad_accum_steps
        if micro % mesh_lib.batch_divisor(self.mesh):
            raise config_lib.ConfigError(
                f"config key 'train.batch_size': micro-batch {micro} must divide by the data-parallel "
                f"devices ({mesh_lib.batch_divisor(self.mesh)})")
        self.tx = make_optimizer(self.oc, tc.steps)
        self.lr = make_schedule(self.oc, tc.steps)
        self.compute_dtype = jnp.bfloat16 if tc.compute_dtype == "bfloat16" else jnp.float32
        self._build_state_shardings()
        self.checkpointer = Checkpointer(os.path.join(tc.run_dir, "checkpoints"), tc.checkpoint)
        self.best_checkpointer = Checkpointer(os.path.join(tc.run_dir, "best"), CheckpointConfig(keep=1)) \
            if tc.best_metric else None
        self._last_eval, self._last_eval_step = {}, None
        self._eval_fn = None
        self._programs: dict = {}  # batch shapes -> (compiled train step, flops); see _compile
        self.compile_times: dict = {}  # batch shapes -> compile seconds
        self._stop_signal: int | None = None  # set by the SIGTERM/SIGINT handler
        self._stop_requested = False  # set by request_stop (a time limit)

    # ----------------------------------------------------------------- state
    def _init_model_state(self, rng):
        model = self.task.create_model(nnx.Rngs(rng))
        _, params, rest = nnx.split(model, self.trainable, ...)
        return params, rest

    def _build_state_shardings(self):
        abstract_model = nnx.eval_shape(lambda: self.task.create_model(nnx.Rngs(0)))
        self.graphdef, abs_params, abs_rest = nnx.split(abstract_model, self.trainable, ...)
        param_specs = mesh_lib.state_specs(abs_params, self.mesh, self.rules)
        rest_specs = mesh_lib.state_specs(abs_rest, self.mesh, self.rules)
        abs_opt = jax.eval_shape(self.tx.init, abs_params)
        opt_specs = _opt_specs(self.tx, abs_opt, param_specs)
        specs = {"step": P(), "params": param_specs, "rest": rest_specs, "opt": opt_specs, "nan_skips": P()}
        if self.tc.ema_decay:
            specs["ema"] = param_specs
        self.state_shardings = mesh_lib.named(self.mesh, specs)
        abs_state = jax.eval_shape(self._init_state, jax.random.key(0))
        self.abstract_state = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abs_state, self.state_shardings)

    def _init_state(self, rng):
        params, rest = self._init_model_state(rng)
        state = {"step": jnp.int32(0), "params": params, "rest": rest, "opt": self.tx.init(params),
                 "nan_skips": jnp.int32(0)}
        if self.tc.ema_decay:
            state["ema"] = jax.tree.map(jnp.copy, params)
        return state

    def init_state(self) -> dict:
        """A fresh state, created sharded (never materialised on one device)."""
        init = jax.jit(self._init_state, out_shardings=self.state_shardings)
        return init(jax.random.key(self.tc.seed))

    def model(self, state: dict, *, ema: bool = False) -> nnx.Module:
        """The nnx module for ``state`` (its EMA weights with ``ema=True``)."""
        params = state["ema"] if ema and "ema" in state else state["params"]
        return nnx.merge(self.graphdef, params, state["rest"])

    # ----------------------------------------------------------------- steps
    def _train_step(self, state, batch):
        tc, graphdef = self.tc, self.graphdef
        rng = jax.random.fold_in(jax.random.key(tc.seed + 1), state["step"])

        def loss_fn(params, rest, micro, r):
            # copy=True: a fresh module per trace, so stateful layers (dropout RNG counts) can update
            model = nnx.merge(graphdef, _cast_floats(params, self.compute_dtype), rest, copy=True)
            loss, metrics = self.task.loss(model, _cast_floats(micro, self.compute_dtype), r)
            new_rest = nnx.state(model, nnx.Not(self.trainable))
            return loss.astype(jnp.float32), (metrics, new_rest)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        a = tc.grad_accum_steps
        if a == 1:
            (loss, (metrics, rest)), grads = grad_fn(state["params"], state["rest"], batch, rng)
        else:
            micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // a, a, *x.shape[1:]).swapaxes(0, 1), batch)

            def body(carry, xs):
                g_sum, rest = carry
                mb, i = xs
                (l, (m, rest)), g = grad_fn(state["params"], rest, mb, jax.random.fold_in(rng, i))
                return (jax.tree.map(jnp.add, g_sum, g), rest), (l, m)

            zeros = jax.tree.map(jnp.zeros_like, state["params"])
            (grads, rest), (losses, ms) = jax.lax.scan(body, (zeros, state["rest"]), (micro, jnp.arange(a)))
            grads = jax.tree.map(lambda g: g / a, grads)
            loss, metrics = losses.mean(), jax.tree.map(lambda m: m.mean(0), ms)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state["params"])
        updates, opt = self.tx.update(grads, state["opt"], state["params"])
        params = jax.tree.map(jnp.add, state["params"], updates)
        new = {"step": state["step"] + 1, "params": params, "rest": rest, "opt": opt, "nan_skips": state["nan_skips"]}
        if tc.ema_decay:
            d = tc.ema_decay
            if tc.ema_warmup:
                t = state["step"].astype(jnp.float32)
                d = jnp.minimum(d, (1.0 + t) / (10.0 + t))
            new["ema"] = jax.tree.map(lambda e, p: d * e + (1 - d) * p, state["ema"], params)
        finite = jnp.isfinite(loss) & _all_finite(grads)
        # NaN/Inf guard: keep the old state (but advance the step) when the loss or a gradient is not finite.
        # A cond, not a select per leaf: XLA would copy the chain of ~one flag per leaf into every leaf's select
        # (a 400k-line program for a tiny UNet on CPU, most of its compile time).
        new = jax.lax.cond(finite, lambda n, o: n, lambda n, o: o, new, {**state, "step": new["step"]})
        new["nan_skips"] = state["nan_skips"] + (~finite).astype(jnp.int32)
        metrics = {"loss": loss, **metrics, "grad_norm": _global_norm(grads), "nonfinite": ~finite}
        return new, metrics

    def _eval_step(self, state, batch):
        params = state["ema"] if "ema" in state else state["params"]
        model = nnx.merge(self.graphdef, _cast_floats(params, self.compute_dtype), state["rest"])
        return self.task.eval_step(model, _cast_floats(batch, self.compute_dtype))

    def _compile(self, state, batch):
        """(compiled train step, its FLOPs) for ``batch``'s shapes: compiled ahead of time once per distinct
        batch shape (length-bucketed data gives a few) and cached; each compile is logged with its time
        (``self.compile_times``: shape -> seconds)."""
        key = _batch_key(batch)
        if key not in self._programs:
            t0 = time.perf_counter()
            batch_shardings = jax.tree.map(lambda x: x.sharding, batch)
            replicated = NamedSharding(self.mesh, P())
            step = jax.jit(self._train_step, in_shardings=(self.state_shardings, batch_shardings),
                           out_shardings=(self.state_shardings, replicated), donate_argnums=0)
            compiled = step.lower(state, batch).compile()
            self._programs[key] = compiled, _flops(compiled)
            self.compile_times[key] = seconds = time.perf_counter() - t0
            log.info("compiled train step program %d (%s) in %.1f s", len(self._programs), _shapes_text(batch),
                     seconds)
        return self._programs[key]

    # ----------------------------------------------------------------- run
    def _data_context(self, seed_offset: int = 0) -> DataContext:
        return DataContext(seed=self.tc.seed + seed_offset, batch_size=self.tc.batch_size // jax.process_count(),
                           process_index=jax.process_index(), process_count=jax.process_count())

    def restore_or_init(self, data_iter=None) -> dict:
        if self.tc.resume and self.checkpointer.latest_step() is not None:
            step, state = self.checkpointer.restore(self.abstract_state, data_iter)
            log.info("resumed from step %d in %s", step, self.checkpointer.directory)
            return state
        return self.init_state()

    def _on_signal(self, signum, frame):
        self._stop_signal = signum

    def request_stop(self) -> None:
        """Stop after the current step with a checkpoint; ``fit`` then returns (a finished run, exit 0).
        Called on one process, it stops all of them at the same step."""
        self._stop_requested = True

    def _stop_decision(self) -> tuple[int, bool]:
        """(signal number or 0, stop requested) over all processes, so that every process stops at the same
        step and with the same exit status."""
        local = np.array([self._stop_signal or 0, self._stop_requested], np.int32)
        if jax.process_count() > 1:
            every = np.asarray(multihost_utils.process_allgather(local)).reshape(-1, 2)
            local = np.array([every[:, 0].max(), every[:, 1].max()], np.int32)
        return int(local[0]), bool(local[1])

    def fit(self) -> tuple[dict, dict]:
        """Train to ``train.steps``; returns (state, last metrics). Resumes from the run's checkpoints."""
        tc = self.tc
        os.makedirs(tc.run_dir, exist_ok=True)
        cfg_dict = config_lib.to_dict(self.cfg)
        if self.is_main:
            config_lib.save(self.cfg, os.path.join(tc.run_dir, "config.yaml"))
        data = self.task.train_data(self._data_context())
        state = self.restore_or_init(data)
        writer = MetricWriter(tc.run_dir, enabled=self.is_main, tensorboard=tc.tensorboard,
                              console=tqdm.write if tc.progress else print)
        old_handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        start = int(jax.device_get(state["step"]))
        bar = tqdm(total=tc.steps, initial=start, disable=not (self.is_main and tc.progress), desc="train")
        flops_sum = 0.0  # the steps' FLOPs since the last log (batch shapes may differ per step)
        last, t0, n0, metrics = {}, time.perf_counter(), start, {}
        try:
            observe = getattr(data, "observe", None)  # on-policy data (RL rollouts) samples from the current state
            for step in range(start + 1, tc.steps + 1):
                if observe is not None:
                    observe(self, state)
                batch = mesh_lib.global_batch(next(data), self.mesh)
                compiles = len(self._programs)
                c0 = time.perf_counter()
                step_fn, flops = self._compile(state, batch)
                if len(self._programs) > compiles:  # compile time does not count as training time
                    t0 = t0 + (time.perf_counter() - c0) if compiles else time.perf_counter()
                    if self.is_main and writer.console is not None:
                        writer.console(f"[compile {step}] train step program {len(self._programs)} "
                                       f"({_shapes_text(batch)}): {self.compile_times[_batch_key(batch)]:.1f} s")
                flops_sum += flops or 0.0
                state, metrics = step_fn(state, batch)
                bar.update(1)
                if step % tc.log_every == 0 or step == tc.steps:
                    last = self._log(writer, step, metrics, state, t0, step - n0, flops_sum)
                    t0, n0, flops_sum = time.perf_counter(), step, 0.0
                if tc.eval_every and step % tc.eval_every == 0 and step != tc.steps:
                    if self._eval_and_track(writer, step, state, cfg_dict):
                        log.warning("early stopping at step %d: no new best %s for %d evals",
                                    step, tc.best_metric, tc.early_stop_patience)
                        self.checkpointer.save(step, state, data, cfg_dict, force=True)
                        return state, last
                if tc.checkpoint.every and step % tc.checkpoint.every == 0:
                    self.checkpointer.save(step, state, data, cfg_dict)
                for h in self.hooks:
                    if step % h.every == 0 and step != tc.steps:
                        h.fn(self, step, state)
                signum, requested = self._stop_decision()
                if signum or requested:
                    why = signal.Signals(signum).name if signum else "stop requested"
                    log.warning("%s: saving a checkpoint at step %d and stopping", why, step)
                    self.checkpointer.save(step, state, data, cfg_dict, force=True)
                    if signum:
                        raise Stopped(signum, step, tc.run_dir)
                    return state, last
            end = int(jax.device_get(state["step"]))
            self.checkpointer.save(end, state, data, cfg_dict, force=True)
            eval_metrics = self._last_eval if self._last_eval_step == end else None
            if eval_metrics is None:
                self._eval_and_track(writer, end, state, cfg_dict)
                eval_metrics = self._last_eval
            last = {**last, **{f"eval_{k}": v for k, v in eval_metrics.items()}}
            for h in self.hooks:
                if h.at_end:
                    h.fn(self, end, state)
            return state, last
        finally:
            bar.close()
            self.checkpointer.wait()
            if self.best_checkpointer:
                self.best_checkpointer.wait()
            writer.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)

    def _log(self, writer, step, metrics, state, t0, n_steps, flops_sum) -> dict:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        skips = int(jax.device_get(state["nan_skips"]))
        dt = max(time.perf_counter() - t0, 1e-9)
        m.update(nan_skips=skips, examples_per_s=self.tc.batch_size * n_steps / dt, lr=float(self.lr(step - 1)))
        if flops_sum:
            m["flops_per_s"] = flops_sum / dt
        m.pop("nonfinite", None)
        writer.write(step, m)
        if skips and self.tc.nan_policy == "stop":
            raise NonFiniteError(
                f"non-finite loss or gradients at {skips} step(s) up to step {step}; stopping "
                "(train.nan_policy=stop; use train.nan_policy=skip to skip such steps)")
        return m

    def _eval_and_track(self, writer, step, state, cfg_dict) -> bool:
        """Evaluate, log, keep the best state; True when early stopping says stop."""
        metrics = self.evaluate(state)
        self._last_eval, self._last_eval_step = metrics, step
        if not metrics:
            return False
        writer.write(step, metrics, prefix="eval")
        tc = self.tc
        if not tc.best_metric:
            return False
        if tc.best_metric not in metrics:
            raise config_lib.ConfigError(f"config key 'train.best_metric': '{tc.best_metric}' is not an eval "
                                         f"metric (have {sorted(metrics)})")
        better, stop = self._best_decision(step, metrics[tc.best_metric])
        if better:  # a collective save: every process takes part
            self.best_checkpointer.save(step, state, config=cfg_dict, force=True)
        return stop

    def _best_decision(self, step: int, value: float) -> tuple[bool, bool]:
        """(new best, early stop) decided on process 0, which alone reads and writes ``RUN_DIR/best.json``,
        and broadcast, so that every process saves the best checkpoint and stops at the same evals."""
        tc = self.tc
        decision = np.zeros(2, np.int32)
        if self.is_main:
            path = os.path.join(tc.run_dir, "best.json")
            best = {"step": None, "value": None, "evals_since": 0}
            if os.path.exists(path):
                with open(path) as f:
                    best = json.load(f)
            old = best["value"]
            better = old is None or (value > old if tc.best_mode == "max" else value < old)
            if better:
                best = {"step": step, "value": value, "metric": tc.best_metric, "evals_since": 0}
            else:
                best["evals_since"] += 1
            with open(path, "w") as f:
                json.dump(best, f)
            decision[:] = better, bool(tc.early_stop_patience) and best["evals_since"] >= tc.early_stop_patience
        if jax.process_count() > 1:
            decision = np.asarray(multihost_utils.broadcast_one_to_all(decision))
        return bool(decision[0]), bool(decision[1])

    def evaluate(self, state) -> dict:
        """Eval metrics over ``task.eval_data``: per-batch values averaged, or, when the task's eval_step
        returns a ``count``, per-batch sums divided by the total count (exact weighted means)."""
        data = self.task.eval_data(self._data_context(seed_offset=1))
        if data is None:
            return {}
        if self._eval_fn is None:
            self._eval_fn = jax.jit(self._eval_step)
        step = self._eval_fn
        sums, n = None, 0
        for i, batch in enumerate(data):
            if self.tc.eval_batches and i >= self.tc.eval_batches:
                break
            m = jax.device_get(step(state, mesh_lib.global_batch(batch, self.mesh)))
            sums = m if sums is None else jax.tree.map(np.add, sums, m)
            n += 1
        if not sums:
            return {}
        if "count" in sums:  # the task returned per-batch sums: normalise by the total count
            count = float(sums.pop("count"))
            return {k: float(v) / max(count, 1.0) for k, v in sums.items()}
        return {k: float(v) / n for k, v in sums.items()}


def _batch_key(batch) -> tuple:
    return (jax.tree.structure(batch), tuple((x.shape, x.dtype) for x in jax.tree.leaves(batch)))


def _shapes_text(batch) -> str:
    """The batch's distinct array shapes, e.g. ``batch shapes [128, 40], [128]``."""
    return "batch shapes " + ", ".join(dict.fromkeys(str(list(x.shape)) for x in jax.tree.leaves(batch)))


def _global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in jax.tree.leaves(tree)))


def _opt_specs(tx, abs_opt, param_specs):
    """Shardings for the optimizer state: parameter-shaped parts follow the parameters, the rest is replicated."""
    return optax.tree_map_params(tx, lambda _, s: s, abs_opt, param_specs,
                                 transform_non_params=lambda _: P(), is_leaf=lambda x: isinstance(x, P))
