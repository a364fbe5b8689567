"""Learning-rate schedules: linear warmup, then linear or polynomial decay (the BERT recipes)."""

from __future__ import annotations

import optax

SCHEDULES = ("linear", "polynomial", "constant")


def warmup_then_decay(learning_rate: float, num_train_steps: int, num_warmup_steps: int = 0,
                      kind: str = "linear", power: float = 1.0, end_learning_rate: float = 0.0) -> optax.Schedule:
    """``learning_rate`` reached linearly over ``num_warmup_steps``, then decayed to ``end_learning_rate``.

    ``linear`` is ``polynomial`` with power 1 (what the original ``optimization.py`` does); ``constant``
    holds the peak after warmup.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule {kind!r} is not one of {SCHEDULES}")
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be positive, got {learning_rate}")
    if num_train_steps <= 0:
        raise ValueError(f"num_train_steps must be positive, got {num_train_steps}")
    if not 0 <= num_warmup_steps <= num_train_steps:
        raise ValueError(f"num_warmup_steps {num_warmup_steps} must lie in [0, num_train_steps={num_train_steps}]")
    decay_steps = max(num_train_steps - num_warmup_steps, 1)
    if kind == "constant":
        decay = optax.constant_schedule(learning_rate)
    else:
        decay = optax.polynomial_schedule(learning_rate, end_learning_rate,
                                          power=1.0 if kind == "linear" else power,
                                          transition_steps=decay_steps)
    if num_warmup_steps == 0:
        return decay
    # Step s of warmup uses lr * (s + 1) / warmup, so the very first update is not zero.
    warmup = optax.linear_schedule(learning_rate / num_warmup_steps, learning_rate, num_warmup_steps - 1) \
        if num_warmup_steps > 1 else optax.constant_schedule(learning_rate)
    return optax.join_schedules([warmup, decay], [num_warmup_steps])
