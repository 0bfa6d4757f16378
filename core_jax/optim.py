"""Optimizer and learning-rate schedule from config (optax)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import optax


@dataclasses.dataclass
class OptimConfig:
    name: Literal["adamw", "adam", "sgd", "lion", "adafactor"] = "adamw"
    learning_rate: float = 1e-3
    schedule: Literal["constant", "cosine", "linear"] = "constant"
    warmup_steps: int = 0
    end_learning_rate_factor: float = 0.0  # final lr = learning_rate * this (cosine, linear)
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    momentum: float = 0.0  # sgd
    grad_clip_norm: float | None = 1.0


def make_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    peak, end = cfg.learning_rate, cfg.learning_rate * cfg.end_learning_rate_factor
    decay = max(total_steps - cfg.warmup_steps, 1)
    if cfg.schedule == "constant":
        main = optax.constant_schedule(peak)
    elif cfg.schedule == "cosine":
        main = optax.cosine_decay_schedule(peak, decay, alpha=cfg.end_learning_rate_factor)
    else:
        main = optax.linear_schedule(peak, end, decay)
    if cfg.warmup_steps <= 0:
        return main
    warmup = optax.linear_schedule(0.0, peak, cfg.warmup_steps)
    return optax.join_schedules([warmup, main], [cfg.warmup_steps])


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    lr = make_schedule(cfg, total_steps)
    if cfg.name == "adamw":
        opt = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    elif cfg.name == "adam":
        opt = optax.adam(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "lion":
        opt = optax.lion(lr, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay)
    elif cfg.name == "adafactor":
        opt = optax.adafactor(lr, weight_decay_rate=cfg.weight_decay or None)
    else:
        opt = optax.sgd(lr, momentum=cfg.momentum or None)
    if cfg.grad_clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
    return opt
