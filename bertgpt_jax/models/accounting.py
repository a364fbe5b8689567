"""Parameter counts and training FLOPs per token (for MFU)."""

from __future__ import annotations

import jax
import numpy as np

from bertgpt_jax.configs import ModelConfig


def count_params(params) -> int:
    """Number of scalars in a params tree (arrays, boxed arrays or ShapeDtypeStructs)."""
    return int(sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params)))


def flops_per_token(cfg: ModelConfig, seq_len: int, num_predictions: int | None = None,
                    heads_only: bool = True) -> float:
    """Training FLOPs per input token: 6 x matmul params touched per token + attention (PaLM appendix B).

    Attention adds 12 * L * D * T (scores and weighted sum, forward + backward). For BERT the MLM head
    (transform + vocabulary projection) runs only at ``num_predictions`` positions per sequence and the
    pooler/NSP once per sequence, so they are scaled by their share of tokens; with ``heads_only`` (what
    the pretraining step runs, ``Bert(..., heads_only=True)``, unless layers are scanned) the last layer
    computes keys and values at every position but the rest only at [CLS] and the masked positions.
    """
    L, D, F, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    per_layer = 4 * D * D + 2 * D * F  # qkv + output projection + two MLP matmuls
    n_matmul = L * per_layer
    attention = 12.0 * L * D * seq_len
    if cfg.is_bert:
        p = seq_len if num_predictions is None else num_predictions
        if heads_only and num_predictions is not None:
            share = (p + 1) / seq_len  # rows of the last layer past its key/value projection
            n_matmul -= (2 * D * D + 2 * D * F) * (1 - share)
            attention -= 12.0 * D * seq_len * (1 - share)
        n_matmul += (D * D + D * V) * p / seq_len  # MLM transform + tied decoder at masked positions
        n_matmul += (D * D + 2 * D) / seq_len  # pooler + NSP, once per sequence
    else:
        n_matmul += D * V  # LM head at every position
    return 6.0 * n_matmul + attention
