"""AdamW with BERT's weight-decay exclusions, and LAMB as the reference large-batch BERT recipe defines it.

LAMB follows the reference update (``lamb_optimizer.py`` of google-research/albert, the BERT-large LAMB
recipe): Adam moments without bias correction, ``update = m / (sqrt(v) + eps) + weight_decay * w`` on the
decayed parameters, then ``w -= lr * ratio * update`` with ``ratio = ||w|| / ||update||`` (1 when either norm
is 0). Parameters excluded from weight decay (LayerNorm, biases) are excluded from layer adaptation too
(ratio 1), and the ratio is taken per variable of the original TensorFlow model: the fused attention kernel
``[D, 3, H, K]`` gets one ratio per query, key and value slice, and scanned layers one per layer.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adamw", "lamb")
# Parameters the original BERT optimizer does not decay: LayerNorm (Flax "scale") and every bias.
_NO_DECAY_NAMES = ("bias", "scale")
# Where one parameter array holds several variables of the original model (see variable_axes).
_SCANNED_STACK = "layers"  # models.layers.Stack's scanned layers: leading axis = layer
_FUSED_QKV = "qkv"  # models.layers.SelfAttention's kernel [..., D, 3, H, K]: axis -3 = query/key/value


def _names(path) -> list[str]:
    # A boxed parameter (nn.Partitioned) adds a ``.value`` attribute entry: not part of the name.
    return [str(getattr(p, "key", getattr(p, "idx", p))) for p in path
            if not isinstance(p, jax.tree_util.GetAttrKey)]


def decay_mask(params: Any) -> Any:
    """True for leaves that get weight decay: every leaf not named ``bias`` or ``scale`` (LayerNorm)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: _names(path)[-1] not in _NO_DECAY_NAMES, params)


def variable_axes(params: Any) -> Any:
    """Per leaf, the axes that index separate variables of the original model (a tuple, often empty).

    A scanned stack's leaves (under ``layers``) stack one variable per layer on axis 0; the fused attention
    kernel stacks the query, key and value kernels on its axis -3. LAMB's trust ratio is taken per variable:
    norms reduce over every other axis.
    """

    def axes(path, leaf) -> tuple[int, ...]:
        names = _names(path)
        out = []
        if _SCANNED_STACK in names[:-1]:
            out.append(0)
        if names[-1] == "kernel" and len(names) >= 2 and names[-2] == _FUSED_QKV:
            out.append(jnp.ndim(leaf) - 3)
        return tuple(out)

    return jax.tree_util.tree_map_with_path(axes, params)


class LambState(NamedTuple):
    count: jax.Array  # updates applied so far (the schedule's step)
    mu: Any
    nu: Any


def _per_variable_norm(x: jax.Array, keep: tuple[int, ...]) -> jax.Array:
    reduce = tuple(a for a in range(x.ndim) if a not in keep)
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32)), axis=reduce, keepdims=True))


def lamb(learning_rate: optax.ScalarOrSchedule, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
         weight_decay: float = 0.01, mask=decay_mask, adaptation_mask=None,
         variables=variable_axes) -> optax.GradientTransformation:
    """The reference LAMB update (module docstring). ``mask(params)`` marks the decayed leaves,
    ``adaptation_mask(params)`` the layer-adapted ones (default: ``mask``, as the reference), and
    ``variables(params)`` each leaf's per-variable axes (:func:`variable_axes`)."""
    adaptation_mask = mask if adaptation_mask is None else adaptation_mask

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return LambState(count=jnp.zeros((), jnp.int32), mu=zeros, nu=jax.tree.map(jnp.zeros_like, params))

    def update(grads, state, params=None):
        if params is None:
            raise ValueError("lamb needs the parameters: call update(grads, state, params)")
        lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
        mu = jax.tree.map(lambda m, g: b1 * m + (1.0 - b1) * g, state.mu, grads)
        nu = jax.tree.map(lambda v, g: b2 * v + (1.0 - b2) * jnp.square(g), state.nu, grads)
        decays, adapts, keep = mask(params), adaptation_mask(params), variables(params)

        def step(m, v, w, decay, adapt, axes):
            u = m / (jnp.sqrt(v) + eps)
            if decay and weight_decay:
                u = u + weight_decay * w
            ratio = 1.0
            if adapt:
                w_norm, u_norm = _per_variable_norm(w, axes), _per_variable_norm(u, axes)
                ratio = jnp.where((w_norm > 0) & (u_norm > 0), w_norm / jnp.where(u_norm > 0, u_norm, 1.0), 1.0)
            return (-lr * ratio * u).astype(w.dtype)

        updates = jax.tree.map(step, mu, nu, params, decays, adapts, keep)
        return updates, LambState(count=optax.safe_increment(state.count), mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def advance_count(opt_state: Any) -> Any:
    """``opt_state`` with every ``count`` field one higher: a skipped update still moves the schedule on, so the
    learning rate the optimizer applies next stays the one of the train step's number."""
    if isinstance(opt_state, tuple) and hasattr(opt_state, "_fields"):
        fields = {f: advance_count(getattr(opt_state, f)) for f in opt_state._fields}
        if "count" in fields and fields["count"] is not None:
            fields["count"] = optax.safe_increment(getattr(opt_state, "count"))
        return type(opt_state)(**fields)
    if isinstance(opt_state, (tuple, list)):
        return type(opt_state)(advance_count(s) for s in opt_state)
    if isinstance(opt_state, dict):
        return {k: advance_count(v) for k, v in opt_state.items()}
    return opt_state


def make_optimizer(name: str, learning_rate: optax.ScalarOrSchedule, *, weight_decay: float = 0.01,
                   b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6) -> optax.GradientTransformation:
    """The update rule, without clipping (the step clips by global norm itself so it can report the norm).

    ``adamw`` is the original ``AdamWeightDecayOptimizer`` (decoupled decay, eps 1e-6) plus Adam's bias
    correction; ``lamb`` is the reference LAMB (:func:`lamb`).
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is not one of {OPTIMIZERS}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if name == "adamw":
        return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)
    return lamb(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
