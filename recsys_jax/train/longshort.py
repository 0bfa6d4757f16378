"""Long- and short-term interests: train the long-term encoder, the short-term HSTU with and without it,
and evaluate long only / short only / both on the future window (``recsys-jax longshort train``).

Steps of :func:`run` (protocol in :mod:`recsys_jax.data.long_history`):

1. full histories (no truncation) of the interaction file; each user's last ``window`` events are the test
   future window, the rest is the training prefix;
2. ``long``: the :class:`~recsys_jax.models.long_term.LongTermEncoder` trained with the dense all-action
   loss (at a random cutoff, the embedding of the history strictly before it must retrieve each of the
   next ``window`` events: sampled softmax per future event); with ``long_residual`` (``fusion=score``) it is
   trained through the frozen short model's scores at the same cutoff instead (the short stage runs first), so
   the long scores add what the short model misses;
3. the long-term table, recomputed in batch for every user as of its query time (strictly before it);
4. ``short``: the HSTU over the last ``short_len`` events; ``both``: the same HSTU conditioned on the
   frozen long encoder's embedding (``fusion``), trained on the same data, loss and schedule (dense
   all-action targets at every position); in training the long embedding is computed at a random
   cutoff inside the window and only the positions whose targets all come after it count; with
   ``fusion=score`` the long encoder's item table is copied into ``both`` (frozen) and the HSTU is
   trained through the summed logits (short + w x long);
5. future-window recall@k and next-item hr@k of the three, written to ``RUN_DIR/results.json``.

This is its own small loop (optax, ``nnx.jit``), not ``core_jax.loop.Trainer``: the three stages share
data and the frozen encoder, and the stage outputs (weights, table) are stored as safetensors in the run
folder (:mod:`recsys_jax.serving.long_table`); no resume mid-stage.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from safetensors.numpy import load_file
from tqdm import tqdm

from core_jax import config as config_lib
from core_jax.config import ConfigError
from core_jax.state_dict import load_state_dict
from recsys_jax.data.formats import read_interactions
from recsys_jax.data.long_history import long_train_batch, query_position, short_train_batch
from recsys_jax.data.sequences import Sequences, build_sequences, pad_sequence
from recsys_jax.eval.evaluate import last_real
from recsys_jax.eval.future_window import evaluate_vectors
from recsys_jax.models.embeddings import l2_normalize
from recsys_jax.models.hstu import HSTUConfig
from recsys_jax.models.long_short import FUSIONS, LongShortConfig
from recsys_jax.models.long_term import LongTermConfig
from recsys_jax.serving.long_table import LongTable, build_long_table, build_models, encode_long, save_run
from recsys_jax.train.losses import SampledSoftmaxConfig, sampled_softmax_loss


@dataclasses.dataclass
class LongShortData:
    input: str = ""  # interaction file (ratings.dat[.gz], ...)
    format: str = "movielens"
    window: int = 10  # future window (events): evaluated, and the dense all-action targets
    short_len: int = 50  # recent events the short-term HSTU reads
    max_users: int = 0  # > 0: only the first users (tests)


@dataclasses.dataclass
class StageConfig:
    steps: int = 1000
    batch_size: int = 128
    learning_rate: float = 1e-3


@dataclasses.dataclass
class LongShortRunConfig:
    data: LongShortData = dataclasses.field(default_factory=LongShortData)
    long: LongTermConfig = dataclasses.field(default_factory=LongTermConfig)
    hstu: HSTUConfig = dataclasses.field(default_factory=lambda: HSTUConfig(
        embed_dim=64, attention_dim=64, linear_dim=64, max_seq_len=51, dropout=0.2))
    fusion: LongShortConfig = dataclasses.field(default_factory=LongShortConfig)
    loss: SampledSoftmaxConfig = dataclasses.field(default_factory=lambda: SampledSoftmaxConfig(
        num_negatives=128, temperature=0.05))
    # the long encoder's loss (one embedding per user x window targets: a full softmax over the items is cheap
    # at ML-1M's 3.7k items; uniform sampled negatives leave out the items' popularity)
    long_loss: SampledSoftmaxConfig = dataclasses.field(default_factory=lambda: SampledSoftmaxConfig(
        num_negatives=128, temperature=0.05))
    long_train: StageConfig = dataclasses.field(default_factory=StageConfig)
    short_train: StageConfig = dataclasses.field(default_factory=StageConfig)
    ks: list[int] = dataclasses.field(default_factory=lambda: [10, 50, 200])
    seed: int = 0
    run_dir: str = "runs/recsys/longshort"
    # the models to train; the others are loaded from the finished run folder `init_from` (same configs), e.g.
    # stages=[both] fusion.fusion=prefix init_from=RUN: another fusion on the same long encoder and short baseline
    stages: list[str] = dataclasses.field(default_factory=lambda: ["long", "short", "both"])
    init_from: str = ""
    # start both's HSTU from the trained short model (then fine-tuned through the fusion) instead of random init
    both_from_short: bool = False
    both_steps: int = -1  # training steps of both (-1: short_train.steps); 0 with both_from_short: no fine-tuning
    # fusion=score: train the long encoder *through the frozen short model's scores* (at each cutoff the logits are
    # short + fusion.score_weight x long), so it learns what the short model misses; the short stage runs first
    long_residual: bool = False


def load_config(path=None, overrides=()) -> LongShortRunConfig:
    cfg = config_lib.load(LongShortRunConfig, path, overrides)
    try:
        cfg.long.validate()
        cfg.loss.validate()
        cfg.long_loss.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.fusion.fusion not in FUSIONS:
        raise ConfigError(f"config key 'fusion.fusion': expected one of {FUSIONS}, got {cfg.fusion.fusion!r}")
    need = cfg.data.short_len + (cfg.fusion.fusion == "prefix")
    if cfg.hstu.max_seq_len < need:
        raise ConfigError(f"config key 'hstu.max_seq_len': {cfg.hstu.max_seq_len} < {need} (data.short_len"
                          f"{' + 1 for the prefix token' if cfg.fusion.fusion == 'prefix' else ''})")
    if set(cfg.stages) - {"long", "short", "both"}:
        raise ConfigError(f"config key 'stages': expected a subset of ['long', 'short', 'both'], got {cfg.stages}")
    if set(cfg.stages) != {"long", "short", "both"} and not cfg.init_from:
        raise ConfigError(f"config key 'init_from': stages={cfg.stages} leaves models untrained; name the run "
                          "folder to load them from")
    if cfg.long_residual and cfg.fusion.fusion != "score":
        raise ConfigError(f"config key 'long_residual': needs fusion.fusion=score (the long encoder is trained "
                          f"through the short model's scores), got fusion.fusion={cfg.fusion.fusion!r}")
    if cfg.data.window < 1 or cfg.data.short_len < 1:
        raise ConfigError("config keys 'data.window' / 'data.short_len': must be >= 1")
    return cfg


def load_sequences(d: LongShortData) -> Sequences:
    """Every user's full history (no ``max_seq_len`` cut)."""
    if not d.input:
        raise ConfigError("config key 'data.input': the interaction file is required")
    return build_sequences(read_interactions(d.format, d.input), max_seq_len=None)


def _optimizer(model, stage: StageConfig):
    return nnx.Optimizer(model, optax.adam(stage.learning_rate), wrt=nnx.Param)


def _long_step(model, opt, batch, rng, loss_cfg):
    def loss_fn(m):
        u = m(batch["items"], batch["timestamps"], batch["as_of"], deterministic=False)
        user = jnp.broadcast_to(u[:, None, :], batch["targets"].shape + u.shape[-1:])
        return sampled_softmax_loss(user, batch["targets"], batch["targets"] > 0, m.item_embeddings(False), rng,
                                    loss_cfg)
    (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    opt.update(model, grads)
    return loss


def _long_residual_step(model, opt, batch, short, rng, loss_cfg, weight):
    """The long encoder's step through the frozen short model: logits ``(s . e + weight * l . e_long) / T`` over the
    targets after the cutoff, ``s`` / ``e`` the short model's unit vector at the cutoff and item table (constants)."""
    ids = batch["short_ids"]
    s = l2_normalize(last_real(short(ids, batch["short_ts"], None, deterministic=True), ids > 0))
    e = l2_normalize(short.item_embeddings())
    s, e = jax.lax.stop_gradient(s), jax.lax.stop_gradient(e)
    loss_cfg = dataclasses.replace(loss_cfg, l2_normalize=False)  # each part is unit; the concatenation is not

    def loss_fn(m):
        u = jnp.concatenate([s, weight * m(batch["items"], batch["timestamps"], batch["as_of"], deterministic=False)],
                            axis=-1)
        user = jnp.broadcast_to(u[:, None, :], batch["targets"].shape + u.shape[-1:])
        table = jnp.concatenate([e, m.item_embeddings(False)], axis=-1)
        return sampled_softmax_loss(user, batch["targets"], batch["targets"] > 0, table, rng, loss_cfg)
    (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    opt.update(model, grads)
    return loss


def short_loss(model, batch, long, rng, loss_cfg: SampledSoftmaxConfig, *, deterministic: bool = False):
    """``(loss, metrics)`` of a short / fused model on a :func:`short_train_batch` (dense targets per position).
    ``fusion=score``: the logits are ``(s . e + w * l . e_long) / temperature`` as the model gives them (each part
    is a unit vector; L2-normalising the concatenation would undo ``w``)."""
    if model.fusion == "score":
        loss_cfg = dataclasses.replace(loss_cfg, l2_normalize=False)
    u = model(batch["item_ids"], batch["timestamps"], long, deterministic=deterministic)  # [B, L, D]
    user = jnp.broadcast_to(u[:, :, None, :], batch["targets"].shape + u.shape[-1:])
    mask = batch["mask"][..., None] & (batch["targets"] > 0)
    return sampled_softmax_loss(user, batch["targets"], mask, model.item_embeddings(deterministic), rng, loss_cfg)


def _short_step(model, opt, batch, long, rng, loss_cfg):
    (loss, _), grads = nnx.value_and_grad(lambda m: short_loss(m, batch, long, rng, loss_cfg), has_aux=True)(model)
    opt.update(model, grads)
    return loss


_long_step_jit = nnx.jit(_long_step, static_argnames=("loss_cfg",))
_short_step_jit = nnx.jit(_short_step, static_argnames=("loss_cfg",))
_long_residual_step_jit = nnx.jit(_long_residual_step, static_argnames=("loss_cfg", "weight"))


def train_long(encoder, seqs: Sequences, train_end: np.ndarray, cfg: LongShortRunConfig, log=print,
               short=None) -> list[float]:
    """Train the long encoder (dense all-action loss); with ``short`` (``long_residual``), through that frozen
    short model's scores."""
    st, rng = cfg.long_train, np.random.default_rng(cfg.seed)
    opt, key, losses = _optimizer(encoder, st), jax.random.key(cfg.seed), []
    users = np.flatnonzero(train_end >= 2)
    for step in tqdm(range(st.steps), desc="long", leave=False):
        b = long_train_batch(seqs.items, seqs.timestamps, train_end, rng.choice(users, st.batch_size), rng,
                             max_len=cfg.long.max_len, window=cfg.data.window,
                             short_len=cfg.data.short_len if short is not None else 0,
                             skip_recent=cfg.long.skip_recent)
        b = {k: jnp.asarray(v) for k, v in b.items()}
        key, sub = jax.random.split(key)
        # the loss stays on device: no host sync per step, the next batch is built while this one runs
        if short is None:
            losses.append(_long_step_jit(encoder, opt, b, sub, cfg.long_loss))
        else:
            losses.append(_long_residual_step_jit(encoder, opt, b, short, sub, cfg.long_loss, cfg.fusion.score_weight))
        if (step + 1) % max(1, st.steps // 5) == 0:
            log(f"long step {step + 1}: loss {np.mean(jax.device_get(losses[-50:])):.4f}")
    return [float(x) for x in jax.device_get(losses)]


def train_short(model, encoder, seqs: Sequences, train_end: np.ndarray, cfg: LongShortRunConfig, name: str,
                log=print) -> list[float]:
    """Train ``model`` (short or both); ``encoder`` (frozen) gives the long input when the model fuses one."""
    st, rng = cfg.short_train, np.random.default_rng(cfg.seed + 1)
    if name == "both" and cfg.both_steps >= 0:
        st = dataclasses.replace(st, steps=cfg.both_steps)
    opt, key, losses = _optimizer(model, st), jax.random.key(cfg.seed + 1), []
    fused = model.fusion != "none"
    if model.fusion == "score":  # the long model's item scores: its item table, frozen
        model.set_long_items(encoder.item_embeddings())
    users = np.flatnonzero(train_end >= 2)
    for step in tqdm(range(st.steps), desc=name, leave=False):
        b = short_train_batch(seqs.items, seqs.timestamps, train_end, rng.choice(users, st.batch_size), rng,
                              short_len=cfg.data.short_len, window=cfg.data.window,
                              long_len=cfg.long.max_len if fused else 0, long_skip_recent=cfg.long.skip_recent)
        long = encode_long(encoder, b.pop("long")) if fused else None  # stays on device
        key, sub = jax.random.split(key)
        losses.append(_short_step_jit(model, opt, {k: jnp.asarray(v) for k, v in b.items()}, long, sub, cfg.loss))
        if (step + 1) % max(1, st.steps // 5) == 0:
            log(f"{name} step {step + 1}: loss {np.mean(jax.device_get(losses[-50:])):.4f}")
    return [float(x) for x in jax.device_get(losses)]


_short_users = nnx.jit(lambda m, ids, ts, long: last_real(m(ids, ts, long, deterministic=True), ids > 0))


def short_user_vectors(model, seqs: Sequences, users: np.ndarray, query: np.ndarray, short_len: int,
                       long: np.ndarray | None, batch_size: int = 256) -> np.ndarray:
    """``[len(users), D]`` embeddings after each user's last ``short_len`` events before ``query``."""
    out = []
    for i in range(0, len(users), batch_size):
        idx = users[i:i + batch_size]
        ids = np.stack([pad_sequence(seqs.items[u][:query[u]], short_len) for u in idx])
        ts = np.stack([pad_sequence(seqs.timestamps[u][:query[u]], short_len, dtype=np.int32) for u in idx])
        lv = None if long is None else jnp.asarray(long[i:i + batch_size])
        out.append(np.asarray(_short_users(model, jnp.asarray(ids), jnp.asarray(ts), lv)))
    return np.concatenate(out)


def eval_inputs(seqs: Sequences, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(users evaluated, query position per user, future [U_eval, window], history to exclude [U_eval, H])``."""
    query = np.asarray([query_position(len(s), window) for s in seqs.items])
    users = np.flatnonzero(query >= 0)
    future = np.stack([pad_sequence(seqs.items[u][query[u]:], window, padding="right") for u in users])
    h = max(int(query[users].max()), 1)
    exclude = np.stack([pad_sequence(seqs.items[u][:query[u]], h) for u in users])
    return users, query, future, exclude


def evaluate_all(models: dict, table: LongTable, seqs: Sequences, cfg: LongShortRunConfig) -> dict:
    """Future-window metrics of long only / short only / both (the table's rows are as of each query time), and
    most-popular (training-prefix counts) beside."""
    users, query, future, exclude = eval_inputs(seqs, cfg.data.window)
    long_rows = table.embeddings[users]
    vectors = {
        "long": long_rows,
        "short": short_user_vectors(models["short"], seqs, users, query, cfg.data.short_len, None),
        "both": short_user_vectors(models["both"], seqs, users, query, cfg.data.short_len, long_rows),
    }
    out = {name: evaluate_vectors(v, np.asarray(models[name].item_embeddings()), future, exclude, cfg.ks)
           for name, v in vectors.items()}
    counts = np.zeros(seqs.num_items + 1, np.float32)  # item counts over the training prefixes
    for u, s in enumerate(seqs.items):
        np.add.at(counts, s[:query[u]] if query[u] >= 0 else s, 1)
    out["most_popular"] = evaluate_vectors(np.ones((len(users), 1), np.float32), counts[:, None] / counts.max(),
                                           future, exclude, cfg.ks)
    return out


def run(cfg: LongShortRunConfig, log=print) -> dict:
    """Train the three models, build the long table, evaluate; write everything to ``cfg.run_dir``."""
    t0 = time.time()
    seqs = load_sequences(cfg.data)
    if cfg.data.max_users:
        seqs = dataclasses.replace(seqs, items=seqs.items[:cfg.data.max_users],
                                   timestamps=seqs.timestamps[:cfg.data.max_users])
    lengths = np.asarray([len(s) for s in seqs.items])
    query = np.asarray([query_position(n, cfg.data.window) for n in lengths])
    train_end = np.where(query >= 0, query, lengths)  # users too short to evaluate train on everything
    log(f"{len(lengths)} users, {lengths.sum()} events, history length median {int(np.median(lengths))} "
        f"max {lengths.max()}; {int((query >= 0).sum())} evaluated")
    models = build_models(_model_dict(cfg), seqs.num_items, nnx.Rngs(cfg.seed, dropout=cfg.seed + 1))
    timings, losses = {}, {}
    for name in ("short", "long", "both") if cfg.long_residual else ("long", "short", "both"):
        if name not in cfg.stages:
            load_state_dict(models[name], load_file(os.path.join(cfg.init_from, name, "model.safetensors")),
                            what=f"{name} of {cfg.init_from}")
            continue
        t = time.time()
        if name == "long":
            losses[name] = train_long(models["long"], seqs, train_end, cfg, log,
                                      short=models["short"] if cfg.long_residual else None)
        else:
            if name == "both" and cfg.both_from_short:
                nnx.update(models["both"].hstu, nnx.state(models["short"].hstu, nnx.Param))
            losses[name] = train_short(models[name], models["long"], seqs, train_end, cfg, name, log)
        timings[f"train_{name}_s"] = round(time.time() - t, 1)
    t = time.time()
    evaluated = np.flatnonzero(query >= 0)
    as_of = np.asarray([seqs.timestamps[u][query[u]] if query[u] >= 0 else np.iinfo(np.int32).max
                        for u in range(len(lengths))])
    table = build_long_table(models["long"], [seqs.user_map.to_original(u) for u in range(len(lengths))],
                             seqs.items, seqs.timestamps, as_of)
    timings["long_table_s"] = round(time.time() - t, 1)
    results = evaluate_all(models, table, seqs, cfg)
    results["relative_gain_recall@50"] = _gain(results, 50)
    results["meta"] = {"users": len(lengths), "evaluated": len(evaluated), "events": int(lengths.sum()),
                       "max_history": int(lengths.max()), "window": cfg.data.window, "short_len": cfg.data.short_len,
                       "fusion": cfg.fusion.fusion, "long_encoder": cfg.long.encoder,
                       "final_loss": {k: float(np.mean(v[-50:])) for k, v in losses.items() if v},
                       "stages": list(cfg.stages), "init_from": cfg.init_from or None,
                       "both_from_short": cfg.both_from_short, "long_residual": cfg.long_residual,
                       **({"score_weight": float(models["both"].long_weight[0])} if cfg.fusion.fusion == "score"
                          else {}),
                       **timings, "total_s": round(time.time() - t0, 1)}
    save_run(cfg.run_dir, _model_dict(cfg), models, seqs.item_map, seqs.user_map, table)
    with open(os.path.join(cfg.run_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    return results


def _gain(results: dict, k: int) -> float | None:
    key = f"recall@{k}"
    if key not in results["both"]:
        return None
    best = max(results["long"][key], results["short"][key])
    return round(results["both"][key] / best - 1.0, 4) if best > 0 else None


def _model_dict(cfg: LongShortRunConfig) -> dict:
    return {"long": dataclasses.asdict(cfg.long), "hstu": dataclasses.asdict(cfg.hstu),
            "fusion": dataclasses.asdict(cfg.fusion), "short_len": cfg.data.short_len}
