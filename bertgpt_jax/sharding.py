"""Logical axis names, the one rules table that maps them to mesh axes, and mesh construction.

Parameters and activations are annotated with the logical names below; choosing a mesh shape
(data, fsdp, tensor) picks data parallelism, FSDP or tensor parallelism without touching model code.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

# Logical axes.
BATCH = "batch"
LENGTH = "length"
EMBED = "embed"  # the model (hidden) dimension
HEADS = "heads"
KV = "kv"  # per-head dimension
MLP = "mlp"
VOCAB = "vocab"
POSITIONS = "positions"  # rows of the position table
TYPES = "types"  # rows of the segment (token type) table
LAYERS = "layers"  # the stacked axis of scanned layers
NORM = "norm"  # LayerNorm scale/bias
CLASSES = "classes"  # small output heads (NSP, classifiers)

# Mesh axes.
DATA = "data"
FSDP = "fsdp"
TENSOR = "tensor"
MESH_AXES = (DATA, FSDP, TENSOR)

# Logical -> mesh. Batch is split over data and fsdp; weights are split over fsdp along the model
# dimension and over tensor along heads / mlp / vocab (Megatron-style).
RULES: tuple[tuple[str, object], ...] = (
    (BATCH, (DATA, FSDP)),
    (LENGTH, None),
    (EMBED, FSDP),
    (HEADS, TENSOR),
    (KV, None),
    (MLP, TENSOR),
    (VOCAB, TENSOR),
    (POSITIONS, None),
    (TYPES, None),
    (LAYERS, None),
    (NORM, None),
    (CLASSES, None),
)

# One table serves weights and activations: flax skips a rule whose mesh axis is already taken in
# the same spec, so an activation (batch, length, embed) keeps embed unsplit once batch holds fsdp.


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh. One entry may be -1: it takes the remaining devices.

    Axis types are Auto: ``nn.with_logical_constraint`` asserts under Explicit axes.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != 3:
        raise ValueError(f"mesh shape {tuple(shape)} must have 3 entries (data, fsdp, tensor)")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)} may have at most one -1")
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        if known <= 0 or len(devices) % known:
            raise ValueError(f"mesh shape {tuple(shape)} does not divide the {len(devices)} devices")
        shape[shape.index(-1)] = len(devices) // known
    if any(s <= 0 for s in shape):
        raise ValueError(f"mesh shape {tuple(shape)} must have positive entries")
    if int(np.prod(shape)) != len(devices):
        raise ValueError(
            f"mesh shape data={shape[0]} x fsdp={shape[1]} x tensor={shape[2]} = {int(np.prod(shape))} "
            f"devices, but {len(devices)} are available; choose a shape whose product is {len(devices)}")
    return jax.make_mesh(tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def logical_to_spec(logical_axes: Sequence[str | None], rules=RULES) -> PartitionSpec:
    table = dict(rules)
    return PartitionSpec(*(table.get(a) if a is not None else None for a in logical_axes))


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Sharding of an input batch: the leading axis over (data, fsdp), the rest replicated."""
    return NamedSharding(mesh, PartitionSpec((DATA, FSDP), *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_parallel_size(mesh: Mesh) -> int:
    return mesh.shape[DATA] * mesh.shape[FSDP]
