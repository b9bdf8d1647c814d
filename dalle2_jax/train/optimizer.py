"""The unCLIP optimizer: AdamW, linear warm-up then constant or cosine, global-norm clipping.

Weight decay skips biases and normalisation scales (every parameter of rank < 2), as the
paper and most large-model recipes do.
"""

from __future__ import annotations

import jax
import ml_collections
import optax


def learning_rate_schedule(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to `cfg.learning_rate`, then constant or cosine to `end_lr`."""
    warmup = int(cfg.get("warmup_steps", 0))
    peak = float(cfg.learning_rate)
    kind = cfg.get("schedule", "constant")
    if kind == "constant":
        if not warmup:
            return optax.constant_schedule(peak)
        ramp = optax.linear_schedule(0.0, peak, warmup)
        return optax.join_schedules([ramp, optax.constant_schedule(peak)], [warmup])
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, peak, warmup, max(num_steps, warmup + 1), end_value=float(cfg.get("end_lr", 0.0))
        )
    raise ValueError(f"Unknown learning-rate schedule {kind!r}; use 'constant' or 'cosine'.")


def decay_mask(params) -> object:
    """True for kernels and embeddings (rank >= 2), False for biases and norm scales."""
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(
    cfg: ml_collections.ConfigDict, num_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with clipping from `cfg` (fields: learning_rate, b1, b2, eps, weight_decay,
    warmup_steps, schedule, end_lr, grad_clip_norm)."""
    schedule = learning_rate_schedule(cfg, num_steps)
    chain = []
    if cfg.get("grad_clip_norm"):
        chain.append(optax.clip_by_global_norm(float(cfg.grad_clip_norm)))
    chain.append(
        optax.adamw(
            schedule,
            b1=float(cfg.get("b1", 0.9)),
            b2=float(cfg.get("b2", 0.999)),
            eps=float(cfg.get("eps", 1e-8)),
            weight_decay=float(cfg.get("weight_decay", 0.0)),
            mask=decay_mask,
        )
    )
    return optax.chain(*chain), schedule
