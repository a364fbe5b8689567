"""Learning-rate schedules: the original BERT ``optimization.py`` schedule, and two others named for what they do.

``bert`` (the default) is the original's: polynomial decay from step 0 over ``num_train_steps``,
``lr(s) = init_lr * (1 - s / num_train_steps) ** power``, and before ``num_warmup_steps`` the warmup value
``init_lr * s / num_warmup_steps`` replaces it (so step 0 applies rate 0, as the original's first update).
``warmup_then_decay`` warms up to the peak at step ``num_warmup_steps - 1`` (rate ``init_lr * (s + 1) / W``)
and then decays over the remaining ``num_train_steps - num_warmup_steps`` steps; every post-warmup rate is
``T / (T - W)`` times the original's at the same step. ``constant`` holds the peak after that warmup.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

SCHEDULES = ("bert", "warmup_then_decay", "constant")


def _check(learning_rate: float, num_train_steps: int, num_warmup_steps: int) -> None:
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    if num_train_steps <= 0:
        raise ValueError(f"num_train_steps must be positive, got {num_train_steps}")
    if not 0 <= num_warmup_steps <= num_train_steps:
        raise ValueError(f"num_warmup_steps {num_warmup_steps} must lie in [0, num_train_steps={num_train_steps}]")


def bert_schedule(learning_rate: float, num_train_steps: int, num_warmup_steps: int = 0,
                  power: float = 1.0, end_learning_rate: float = 0.0) -> optax.Schedule:
    """The original ``optimization.py`` schedule (module docstring); ``power`` 1 is the published recipes'."""
    _check(learning_rate, num_train_steps, num_warmup_steps)

    def schedule(step):
        s = jnp.minimum(jnp.asarray(step, jnp.float32), num_train_steps)  # tf.train.polynomial_decay, cycle=False
        decayed = (learning_rate - end_learning_rate) * (1.0 - s / num_train_steps) ** power + end_learning_rate
        if not num_warmup_steps:
            return decayed
        warm = learning_rate * jnp.asarray(step, jnp.float32) / num_warmup_steps
        return jnp.where(jnp.asarray(step) < num_warmup_steps, warm, decayed)

    return schedule


def warmup_then_decay(learning_rate: float, num_train_steps: int, num_warmup_steps: int = 0,
                      kind: str = "decay", power: float = 1.0, end_learning_rate: float = 0.0) -> optax.Schedule:
    """``learning_rate`` reached linearly by step ``num_warmup_steps - 1``, then decayed polynomially to
    ``end_learning_rate`` over the remaining steps (``kind="decay"``) or held (``kind="constant"``)."""
    if kind not in ("decay", "constant"):
        raise ValueError(f"warmup_then_decay kind {kind!r} is not one of ('decay', 'constant')")
    _check(learning_rate, num_train_steps, num_warmup_steps)
    decay_steps = max(num_train_steps - num_warmup_steps, 1)
    if kind == "constant":
        decay = optax.constant_schedule(learning_rate)
    else:
        decay = optax.polynomial_schedule(learning_rate, end_learning_rate, power=power, transition_steps=decay_steps)
    if num_warmup_steps == 0:
        return decay
    # Step s of warmup uses lr * (s + 1) / warmup, so the very first update is not zero.
    warmup = optax.linear_schedule(learning_rate / num_warmup_steps, learning_rate, num_warmup_steps - 1) \
        if num_warmup_steps > 1 else optax.constant_schedule(learning_rate)
    return optax.join_schedules([warmup, decay], [num_warmup_steps])


def make_schedule(kind: str, learning_rate: float, num_train_steps: int, num_warmup_steps: int = 0,
                  power: float = 1.0) -> optax.Schedule:
    """The schedule ``kind`` (one of :data:`SCHEDULES`) with these settings."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule {kind!r} is not one of {SCHEDULES}")
    if kind == "bert":
        return bert_schedule(learning_rate, num_train_steps, num_warmup_steps, power)
    return warmup_then_decay(learning_rate, num_train_steps, num_warmup_steps,
                             "constant" if kind == "constant" else "decay", power)
