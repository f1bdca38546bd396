"""The optimizer and learning-rate schedule built from `config.train`.

AdamW (Loshchilov & Hutter 2019) with linear warmup and cosine decay, or RMSprop with Keras's
settings for the original project's model; both optionally behind global-norm clipping.
"""

from __future__ import annotations

from typing import Any

import jax
import optax

from jaxcomposer.config_lib import TrainConfig


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    peak, warmup = cfg.learning_rate, cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        main = optax.constant_schedule(peak)
    elif cfg.lr_schedule == "cosine":
        main = optax.cosine_decay_schedule(peak, decay_steps=max(cfg.num_steps - warmup, 1))
    else:
        raise ValueError(
            f"train.lr_schedule must be 'cosine' or 'constant', got {cfg.lr_schedule!r}"
        )
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def _matrices_only(params: Any) -> Any:
    # Weight decay on matrices only: decaying biases and norm scales just fights the data.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(cfg)
    if cfg.optimizer == "adamw":
        opt = optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=_matrices_only)
    elif cfg.optimizer == "rmsprop":
        # Keras RMSprop: v = rho v + (1 - rho) g^2, step = lr g / (sqrt(v) + eps), v0 = 0.
        parts = [optax.scale_by_rms(decay=0.9, eps=1e-7, eps_in_sqrt=False)]
        if cfg.weight_decay > 0:
            parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=_matrices_only))
        opt = optax.chain(*parts, optax.scale_by_learning_rate(schedule))
    else:
        raise ValueError(f"train.optimizer must be 'adamw' or 'rmsprop', got {cfg.optimizer!r}")
    if cfg.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
    return opt, schedule
