"""Placing batches onto the mesh: each process's share of a global batch becomes one global jax array."""

from __future__ import annotations

import jax
import numpy as np

from bertgpt_jax import sharding as sharding_lib


def place(batch: dict, mesh: jax.sharding.Mesh, global_batch: int) -> dict:
    """This process's rows of a global batch (dicts of numpy arrays, as every task's iterators yield) ->
    global jax arrays with the leading axis split over (data, fsdp)."""
    out = {}
    for name, value in batch.items():
        x = np.asarray(value)
        shape = (global_batch,) + x.shape[1:]
        out[name] = jax.make_array_from_process_local_data(sharding_lib.batch_sharding(mesh, x.ndim), x, shape)
    return out
