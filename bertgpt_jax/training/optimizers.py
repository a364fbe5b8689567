"""AdamW with BERT's weight-decay exclusions, and LAMB for the large-batch BERT recipe."""

from __future__ import annotations

from typing import Any

import jax
import optax

OPTIMIZERS = ("adamw", "lamb")
# Parameters the original BERT optimizer does not decay: LayerNorm (Flax "scale") and every bias.
_NO_DECAY_NAMES = ("bias", "scale")


def decay_mask(params: Any) -> Any:
    """True for leaves that get weight decay: every leaf not named ``bias`` or ``scale`` (LayerNorm)."""

    def decays(path, _leaf) -> bool:
        last = path[-1]
        name = getattr(last, "key", getattr(last, "name", str(last)))
        return str(name) not in _NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(name: str, learning_rate: optax.ScalarOrSchedule, *, weight_decay: float = 0.01,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6) -> optax.GradientTransformation:
    """The update rule, without clipping (the step clips by global norm itself so it can report the norm).

    ``adamw`` is the original ``AdamWeightDecayOptimizer`` (decoupled decay, eps 1e-6) plus Adam's bias
    correction; ``lamb`` is the layer-wise adaptive large-batch optimizer (You et al. 2019).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is not one of {OPTIMIZERS}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if name == "adamw":
        return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    return optax.lamb(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
