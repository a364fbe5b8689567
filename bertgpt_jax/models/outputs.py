"""Model outputs: pytrees so they pass through jit, with HF-style field names."""

from __future__ import annotations

from typing import Optional

import jax
from flax import struct


@struct.dataclass
class BertOutput:
    """BERT encoder outputs; head outputs are present only when masked positions were given."""

    last_hidden_state: Optional[jax.Array]  # [B, T, D]; None with heads_only
    pooler_output: Optional[jax.Array] = None  # [B, D]; None when the params carry no pooler
    hidden_states: Optional[tuple] = None  # (embeddings, layer 1, ..., layer L), each [B, T, D]
    mlm_logits: Optional[jax.Array] = None  # [B, P, V] fp32, at the masked positions only
    nsp_logits: Optional[jax.Array] = None  # [B, 2] fp32
    loss_sums: Optional[dict] = None  # given labels: the heads' loss and correct-prediction sums


@struct.dataclass
class GPT2Output:
    """GPT-2 outputs; ``logits`` is None when the caller gave targets or asked for hidden states only."""

    logits: Optional[jax.Array]  # [B, T, V] fp32
    last_hidden_state: jax.Array  # [B, T, D], after the final LayerNorm
    hidden_states: Optional[tuple] = None  # (embeddings, layer 1, ..., final-LN output), each [B, T, D]
    loss_sums: Optional[dict] = None  # given targets: lm_loss_sum, lm_correct_sum
