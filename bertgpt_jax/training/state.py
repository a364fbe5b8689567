"""The train state and its creation directly into the mesh's shardings (never a full unsharded copy)."""

from __future__ import annotations

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from bertgpt_jax import sharding
from bertgpt_jax.tasks.base import Task


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data iterator. ``rng`` is raw ``uint32[2]`` key data."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def _state_fn(task: Task, optimizer: optax.GradientTransformation, batch_size: int,
              boxed: bool) -> Callable[[jax.Array], TrainState]:
    def make(seed_key: jax.Array) -> TrainState:
        params_key, train_key = jax.random.split(seed_key)
        example = jax.tree.map(jnp.asarray, task.example_batch(batch_size))
        params = task.init_params(params_key, example)
        # Optax maps over the boxes, so moments carry the parameters' logical axes.
        state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                           rng=train_key)
        return state if boxed else nn.meta.unbox(state)

    return make


def abstract_state(task: Task, optimizer: optax.GradientTransformation,
                   mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh) -> tuple[TrainState, TrainState]:
    """``(abstract_state, shardings)``: shapes/dtypes via ``eval_shape`` and each leaf's NamedSharding."""
    key = jax.random.PRNGKey(0)
    # An AbstractMesh (a pod's mesh planned on a laptop) gives shapes and shardings without devices.
    use_mesh = jax.sharding.use_abstract_mesh if isinstance(mesh, jax.sharding.AbstractMesh) else jax.set_mesh
    with use_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        boxed = jax.eval_shape(_state_fn(task, optimizer, sharding.data_parallel_size(mesh), boxed=True), key)
        specs = nn.get_partition_spec(boxed)
        shardings = nn.logical_to_mesh_sharding(specs, mesh, sharding.RULES)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            nn.meta.unbox(boxed), shardings)
    return abstract, shardings


def create_state(task: Task, optimizer: optax.GradientTransformation, mesh: jax.sharding.Mesh, seed: int,
                 shardings: TrainState | None = None) -> TrainState:
    """A fresh state, each parameter and optimizer moment created on its own shards by one jit."""
    if shardings is None:
        _, shardings = abstract_state(task, optimizer, mesh)
    make = _state_fn(task, optimizer, sharding.data_parallel_size(mesh), boxed=False)
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
