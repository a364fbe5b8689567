"""The jit-compiled train and eval steps: one function for every mesh shape and every task, state donated.

Gradient accumulation scans over microbatches; the loss is normalised by the whole batch's counts so any
number of microbatches gives the same gradient. A non-finite loss or gradient leaves the weights
untouched (the step reports ``finite=False`` and the loop stops or skips, by flag).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bertgpt_jax import sharding
from bertgpt_jax.tasks.base import Task
from bertgpt_jax.training import optimizers
from bertgpt_jax.training.state import TrainState


@dataclasses.dataclass(frozen=True)
class StepConfig:
    grad_accum_steps: int = 1
    clip_grad_norm: float = 1.0  # 0 disables clipping
    # Dropout off gives bitwise-reproducible losses in tests; training keeps it on.
    deterministic: bool = False


def _microbatches(batch: dict, n: int) -> dict:
    # Microbatch i takes rows i, i+n, i+2n, ...: each keeps its rows on the devices that hold them, so
    # splitting needs no communication.
    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} rows is not divisible by grad_accum_steps {n}")
        return jnp.swapaxes(x.reshape(x.shape[0] // n, n, *x.shape[1:]), 0, 1)

    return jax.tree.map(split, batch)


def make_train_step(task: Task, optimizer: optax.GradientTransformation, schedule: optax.Schedule,
                    step_cfg: StepConfig = StepConfig()) -> Callable:
    """``train_step(state, batch) -> (state, metrics)``, not yet jitted (see :func:`jit_train_step`)."""
    accum = step_cfg.grad_accum_steps

    def loss_fn(params, batch, rng, totals):
        sums = task.loss_sums(params, batch, deterministic=step_cfg.deterministic, dropout_rng=rng)
        return task.objective(sums, totals), sums

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        totals = task.counts(batch)
        step_rng = jax.random.fold_in(state.rng, state.step)
        if accum == 1:
            (objective, sums), grads = grad_fn(state.params, batch, step_rng, totals)
        else:
            def body(carry, xs):
                index, micro = xs
                (obj, sums), g = grad_fn(state.params, micro, jax.random.fold_in(step_rng, index), totals)
                acc_obj, acc_sums, acc_g = carry
                return (acc_obj + obj, jax.tree.map(jnp.add, acc_sums, sums), jax.tree.map(jnp.add, acc_g, g)), None

            micro = _microbatches(batch, accum)
            first = jax.tree.map(lambda x: x[0], micro)
            sums0 = jax.eval_shape(lambda p: loss_fn(p, first, step_rng, totals)[1], state.params)
            zeros = (jnp.zeros((), jnp.float32), jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums0),
                     jax.tree.map(jnp.zeros_like, state.params))
            (objective, sums, grads), _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
        grad_norm = optax.tree.norm(grads)
        if step_cfg.clip_grad_norm > 0:
            scale = jnp.minimum(1.0, step_cfg.clip_grad_norm / jnp.maximum(grad_norm, 1e-12))
            grads = jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)
        finite = jnp.isfinite(objective) & jnp.isfinite(grad_norm)

        def update(operands):
            params, opt_state, grads = operands
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        # A branch, not a select per leaf: the skip costs nothing and the update is not read twice.
        def skip(operands):
            # The optimizer's step count still moves on, so its schedule stays at the train step's number.
            return operands[0], optimizers.advance_count(operands[1])

        params, opt_state = jax.lax.cond(finite, update, skip, (state.params, state.opt_state, grads))
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        metrics = {"loss": objective, "grad_norm": grad_norm, "learning_rate": schedule(state.step),
                   "finite": finite, **sums}
        return new_state, metrics

    return train_step


def batch_shardings(mesh: jax.sharding.Mesh, batch: dict) -> dict:
    """Every feature's leading (batch) axis split over (data, fsdp)."""
    return {k: sharding.batch_sharding(mesh, len(v.shape)) for k, v in batch.items()}


def jit_train_step(train_step: Callable, mesh: jax.sharding.Mesh, state_shardings: TrainState,
                   batch_shard: dict) -> Callable:
    """Compiles once; the state is donated so parameters and moments are updated in place."""
    jitted = jax.jit(train_step, in_shardings=(state_shardings, batch_shard),
                     out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)

    def run(state, batch):
        # Tracing needs the mesh and rules for the model's logical constraints.
        with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
            return jitted(state, batch)

    run.jitted = jitted
    return run


def make_eval_step(task: Task, mesh: jax.sharding.Mesh) -> Callable:
    """``eval_step(params, batch) -> sums`` (deterministic), summed on the host across batches."""

    def eval_step(params: Any, batch: dict) -> dict:
        return task.loss_sums(params, batch, deterministic=True)

    # The batch keeps the sharding it was placed with (eval batches may carry is_real_example).
    jitted = jax.jit(eval_step, out_shardings=sharding.replicated(mesh))

    def run(params, batch):
        with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
            return jitted(params, batch)

    return run
