"""The jitted train step: micro-batch gradient accumulation, AdamW update, EMA, metrics."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

from dalle2_jax.train.state import TrainState


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    """EMA decay with warm-up, min(decay, (1 + step) / (10 + step)), so early EMA tracks params."""
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def _split_micro_batches(batch: dict, num_micro: int) -> dict:
    """[B, ...] -> [num_micro, B / num_micro, ...] taking strided rows, so every micro-batch
    keeps an equal share of each device's local rows (no cross-device shuffling)."""

    def split(x):
        if x.shape[0] % num_micro:
            raise ValueError(
                f"Batch size {x.shape[0]} is not divisible by grad_accum_steps={num_micro}."
            )
        x = x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def make_train_step(
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    ema_decay: float,
    grad_accum_steps: int = 1,
    skip_nonfinite: bool = False,
) -> Callable:
    """`train_step(state, batch, key, frozen=None) -> (state, metrics)`; `loss_fn(params,
    batch, rng)` (or `loss_fn(params, batch, rng, frozen)` when the step is given parameters
    that are read but not trained, e.g. a frozen CLIP) returns (scalar loss, dict of scalar
    metrics). The step key is `fold_in(key, step)`.

    With `skip_nonfinite`, a step whose loss or gradient norm is NaN/Inf applies no update:
    params, EMA and optimizer state stay as they were and only the step advances (so the next
    step draws its own key and batch, as an uninterrupted run would); the trainer counts it."""

    def grads_and_metrics(params, batch, rng, frozen):
        def objective(p, b, r):
            return loss_fn(p, b, r) if frozen is None else loss_fn(p, b, r, frozen)

        grad_fn = jax.value_and_grad(objective, has_aux=True)
        if grad_accum_steps == 1:
            (loss, aux), grads = grad_fn(params, batch, rng)
            return loss, aux, grads

        micro = _split_micro_batches(batch, grad_accum_steps)
        zeros = jax.tree.map(jnp.zeros_like, params)

        def body(carry, xs):
            i, mb = xs
            (loss, aux), grads = grad_fn(params, mb, jax.random.fold_in(rng, i))
            acc_grads, acc_loss, acc_aux = carry
            acc_grads = jax.tree.map(jnp.add, acc_grads, grads)
            acc_aux = jax.tree.map(jnp.add, acc_aux, aux)
            return (acc_grads, acc_loss + loss, acc_aux), None

        _, aux_shape = jax.eval_shape(objective, params, jax.tree.map(lambda x: x[0], micro), rng)
        aux0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), aux_shape)
        idx = jnp.arange(grad_accum_steps)
        (grads, loss, aux), _ = jax.lax.scan(body, (zeros, jnp.float32(0.0), aux0), (idx, micro))
        scale = 1.0 / grad_accum_steps
        return (
            loss * scale,
            jax.tree.map(lambda a: a * scale, aux),
            jax.tree.map(lambda g: g * scale, grads),
        )

    def train_step(state: TrainState, batch: dict, key: jax.Array, frozen=None):
        rng = jax.random.fold_in(key, state.step)
        loss, aux, grads = grads_and_metrics(state.params, batch, rng, frozen)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        d = ema_decay_at(state.step, ema_decay)
        ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, state.ema_params, params)
        grad_norm = optax.tree.norm(grads)
        metrics = {
            "loss": loss,
            "grad_norm": grad_norm,
            "learning_rate": schedule(state.step),
            **aux,
        }
        new_state = state.replace(
            step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state
        )
        if skip_nonfinite:
            finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
            unchanged = state.replace(step=state.step + 1)
            new_state = jax.tree.map(
                lambda new, old: jnp.where(finite, new, old), new_state, unchanged
            )
        return new_state, metrics

    return train_step
