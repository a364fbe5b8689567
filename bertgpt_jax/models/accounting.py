"""Parameter counts and training FLOPs per token (for MFU)."""

from __future__ import annotations

import jax
import numpy as np

from bertgpt_jax.configs import ModelConfig


def count_params(params) -> int:
    """Number of scalars in a params tree (arrays, boxed arrays or ShapeDtypeStructs)."""
    return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)))


def flops_per_token(cfg: ModelConfig, seq_len: int, num_predictions: int | None = None) -> float:
    """Training FLOPs per input token: 6 x matmul params touched per token + attention (PaLM appendix B).

    Attention adds 12 * L * D * T (scores and weighted sum, forward + backward). For BERT the MLM head
    (transform + vocabulary projection) runs only at ``num_predictions`` positions per sequence and the
    pooler/NSP once per sequence, so they are scaled by their share of tokens.
    """
    L, D, F, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    per_layer = 4 * D * D + 2 * D * F  # qkv + output projection + two MLP matmuls
    n_matmul = L * per_layer
    if cfg.is_bert:
        p = seq_len if num_predictions is None else num_predictions
        n_matmul += (D * D + D * V) * p / seq_len  # MLM transform + tied decoder at masked positions
        n_matmul += (D * D + 2 * D) / seq_len  # pooler + NSP, once per sequence
    else:
        n_matmul += D * V  # LM head at every position
    return 6.0 * n_matmul + 12.0 * L * D * seq_len
