"""Boolean attention masks (True = attend), shaped [B, 1, T, S] for ``jax.nn.dot_product_attention``."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from bertgpt_jax.configs import check_positions


def check_length(length: int, max_position_embeddings: int) -> None:
    """An input longer than the position table is an error, not a silent clamp of the lookup."""
    check_positions(length, max_position_embeddings, "sequence length")


def padding_mask(attention_mask_BxS: jax.Array) -> jax.Array:
    """Keys that are real tokens (mask value 1) may be attended to by every query."""
    return attention_mask_BxS.astype(bool)[:, None, None, :]


def segment_mask(segment_ids_BxT: jax.Array) -> jax.Array:
    """Tokens attend only within their own segment (packed documents do not see each other)."""
    return (segment_ids_BxT[:, :, None] == segment_ids_BxT[:, None, :])[:, None]


def combine(*masks: Optional[jax.Array]) -> Optional[jax.Array]:
    """Logical AND of the masks that are present; None when none is."""
    present = [m for m in masks if m is not None]
    if not present:
        return None
    out = present[0]
    for m in present[1:]:
        out = jnp.logical_and(out, m)
    return out
