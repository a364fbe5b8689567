"""The train state and its creation directly into the mesh's shardings (never a full unsharded copy)."""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bertgpt_jax import sharding


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data iterator. ``rng`` is raw ``uint32[2]`` key data."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def example_inputs(is_bert: bool, batch: int, seq_len: int, max_predictions: int) -> dict:
    """Zero inputs of the right shapes and dtypes for ``model.init``."""
    ids = jnp.zeros((batch, seq_len), jnp.int32)
    if is_bert:
        return {"input_ids": ids, "input_mask": jnp.ones_like(ids), "segment_ids": ids,
                "masked_lm_positions": jnp.zeros((batch, max_predictions), jnp.int32)}
    return {"input_ids": ids}


def init_params(model: nn.Module, is_bert: bool, inputs: dict, rng: jax.Array) -> Any:
    """``model.init`` on example inputs; returns the (logically boxed) parameters."""
    if is_bert:
        variables = model.init({"params": rng}, inputs["input_ids"], attention_mask=inputs["input_mask"],
                               token_type_ids=inputs["segment_ids"],
                               masked_lm_positions=inputs["masked_lm_positions"], deterministic=True)
    else:
        variables = model.init({"params": rng}, inputs["input_ids"], deterministic=True)
    return variables["params"]


def _state_fn(model: nn.Module, is_bert: bool, optimizer: optax.GradientTransformation, inputs: dict,
              boxed: bool) -> Callable[[jax.Array], TrainState]:
    def make(seed_key: jax.Array) -> TrainState:
        params_key, train_key = jax.random.split(seed_key)
        params = init_params(model, is_bert, inputs, params_key)
        # Optax maps over the boxes, so moments carry the parameters' logical axes.
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                           rng=train_key)
        return state if boxed else nn.meta.unbox(state)

    return make


def abstract_state(model: nn.Module, is_bert: bool, optimizer: optax.GradientTransformation,
                   mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh,
                   seq_len: int, max_predictions: int = 1) -> tuple[TrainState, TrainState]:
    """``(abstract_state, shardings)``: shapes/dtypes via ``eval_shape`` and each leaf's NamedSharding."""
    inputs = example_inputs(is_bert, sharding.data_parallel_size(mesh), seq_len, max_predictions)
    key = jax.random.PRNGKey(0)
    # An AbstractMesh (a pod's mesh planned on a laptop) gives shapes and shardings without devices.
    use_mesh = jax.sharding.use_abstract_mesh if isinstance(mesh, jax.sharding.AbstractMesh) else jax.set_mesh
    with use_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        boxed = jax.eval_shape(_state_fn(model, is_bert, optimizer, inputs, boxed=True), key)
        specs = nn.get_partition_spec(boxed)
        shardings = nn.logical_to_mesh_sharding(specs, mesh, sharding.RULES)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            nn.meta.unbox(boxed), shardings)
    return abstract, shardings


def create_state(model: nn.Module, is_bert: bool, optimizer: optax.GradientTransformation, mesh: jax.sharding.Mesh,
                 seq_len: int, seed: int, max_predictions: int = 1,
                 shardings: TrainState | None = None) -> TrainState:
    """A fresh state, each parameter and optimizer moment created on its own shards by one jit."""
    if shardings is None:
        _, shardings = abstract_state(model, is_bert, optimizer, mesh, seq_len, max_predictions)
    inputs = example_inputs(is_bert, sharding.data_parallel_size(mesh), seq_len, max_predictions)
    make = _state_fn(model, is_bert, optimizer, inputs, boxed=False)
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        return jax.jit(make, out_shardings=shardings)(jax.random.PRNGKey(seed))


def with_params(state: TrainState, params: Any, shardings: TrainState) -> TrainState:
    """``state`` with ``params`` replaced (placed on the state's shardings), e.g. from ``init_checkpoint``."""
    expected = jax.tree.structure(state.params)
    if jax.tree.structure(params) != expected:
        raise ValueError("init_checkpoint parameters do not match the model's parameter tree; "
                         "check that --model describes the checkpoint's architecture")
    for (path, new), old in zip(jax.tree_util.tree_leaves_with_path(params), jax.tree.leaves(state.params)):
        if tuple(new.shape) != tuple(old.shape):
            raise ValueError(f"init_checkpoint parameter {jax.tree_util.keystr(path)} has shape {tuple(new.shape)}, "
                             f"the model expects {tuple(old.shape)}")
    placed = jax.tree.map(lambda p, old, s: jax.device_put(jnp.asarray(p, old.dtype), s),
                          params, state.params, shardings.params)
    return state.replace(params=placed)


def param_count(params: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
