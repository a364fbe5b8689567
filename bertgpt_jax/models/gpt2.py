"""GPT-2 language model (Radford et al. 2019): pre-LN causal decoder, LM head tied to the token table."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bertgpt_jax import sharding as sh
from bertgpt_jax.configs import ModelConfig
from bertgpt_jax.models import losses, masks
from bertgpt_jax.models.layers import CACHE, Dropout, Embedding, Stack, constrain_hidden, layer_norm
from bertgpt_jax.models.outputs import GPT2Output


class GPT2(nn.Module):
    """``apply(params, input_ids, attention_mask, segment_ids, position_ids, targets)`` -> GPT2Output.

    ``segment_ids`` marks packed documents (attention stays within a document); ``position_ids`` then
    restart per document. Given ``targets`` (and ``target_weights``) the LM head returns its loss sums
    (``loss_sums``: ``lm_loss_sum``, ``lm_correct_sum``), projecting onto the vocabulary chunk by chunk
    so no [B, T, V] logits exist; ``return_logits=False`` skips the projection altogether.

    Incremental decoding (``bertgpt_jax.inference.generation``): with the ``cache`` collection mutable each
    attention layer appends this call's keys and values to its cache; ``attention_mask`` then covers the
    cache's S slots and ``position_ids`` are the tokens' own positions.
    """

    cfg: ModelConfig

    def setup(self):
        cfg, std = self.cfg, self.cfg.initializer_range
        self.wte = Embedding(cfg.vocab_size, cfg.hidden_size, (sh.VOCAB, sh.EMBED), cfg.dtype,
                             cfg.param_dtype, std)
        self.wpe = Embedding(cfg.max_position_embeddings, cfg.hidden_size, (sh.POSITIONS, sh.EMBED), cfg.dtype,
                             cfg.param_dtype, 0.01)
        self.ln_f = layer_norm(cfg, None)

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: Optional[jax.Array] = None,
                 segment_ids: Optional[jax.Array] = None, position_ids: Optional[jax.Array] = None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 return_logits: bool = True, targets: Optional[jax.Array] = None,
                 target_weights: Optional[jax.Array] = None) -> GPT2Output:
        cfg = self.cfg
        B, T = input_ids.shape
        decoding = self.is_mutable_collection(CACHE) and not self.is_initializing()
        if not decoding:  # decoding: T counts cache slots, positions are given
            masks.check_length(T, cfg.max_position_embeddings)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        # Causality is the attention's own flag; padding and packed documents add a mask.
        mask = masks.combine(masks.padding_mask(attention_mask) if attention_mask is not None else None,
                             masks.segment_mask(segment_ids) if segment_ids is not None else None)

        x_BxTxD = self.wte(input_ids) + self.wpe(position_ids)
        x_BxTxD = Dropout(cfg.hidden_dropout_prob)(x_BxTxD, deterministic=deterministic)
        x_BxTxD = constrain_hidden(x_BxTxD)
        x_BxTxD, hidden = Stack(cfg, deterministic, pre_ln=True, is_causal=True,
                                output_hidden_states=output_hidden_states, name="h")(x_BxTxD, mask)
        x_BxTxD = self.ln_f(x_BxTxD)
        if hidden is not None:
            # HF convention: the last entry is the final-LayerNorm output.
            hidden = hidden[:-1] + (x_BxTxD,)
        out = GPT2Output(logits=None, last_hidden_state=x_BxTxD, hidden_states=hidden)
        if targets is not None:
            weights_BxT = jnp.ones((B, T), jnp.float32) if target_weights is None else target_weights
            loss_sum, correct_sum = losses.lm_head_sums(x_BxTxD, self.wte.table(), targets, weights_BxT)
            return out.replace(loss_sums={"lm_loss_sum": loss_sum, "lm_correct_sum": correct_sum})
        return out.replace(logits=self.wte.attend(x_BxTxD)) if return_logits else out

    def logits(self, x_xD: jax.Array) -> jax.Array:
        """The tied LM head on final hidden states (``apply(..., method=GPT2.logits)``), fp32."""
        return self.wte.attend(x_xD)
