"""BERT with its pretraining heads (Devlin et al. 2018): post-LN encoder, tanh pooler, MLM + NSP."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bertgpt_jax import sharding as sh
from bertgpt_jax.configs import ModelConfig
from bertgpt_jax.models import masks
from bertgpt_jax.models.heads import MlmHead, NspHead, Pooler
from bertgpt_jax.models.layers import Dropout, Embedding, Stack, constrain_hidden, layer_norm
from bertgpt_jax.models.outputs import BertOutput

MISSING_HEAD_HINT = ("the params carry no {what} (a checkpoint without it, e.g. a BertModel); import with "
                     "bertgpt_jax.convert.from_hf(..., init_missing_heads=True) to start it from a fresh init")


class BertEmbeddings(nn.Module):
    cfg: ModelConfig

    def setup(self):
        cfg, std = self.cfg, self.cfg.initializer_range
        self.word_embeddings = Embedding(cfg.vocab_size, cfg.hidden_size, (sh.VOCAB, sh.EMBED), cfg.dtype,
                                         cfg.param_dtype, std)
        self.position_embeddings = Embedding(cfg.max_position_embeddings, cfg.hidden_size,
                                             (sh.POSITIONS, sh.EMBED), cfg.dtype, cfg.param_dtype, std)
        self.token_type_embeddings = Embedding(cfg.type_vocab_size, cfg.hidden_size, (sh.TYPES, sh.EMBED),
                                               cfg.dtype, cfg.param_dtype, std)
        self.LayerNorm = layer_norm(cfg, None)
        self.dropout = Dropout(cfg.hidden_dropout_prob)

    def __call__(self, input_ids_BxT, token_type_ids_BxT, position_ids_BxT, deterministic: bool):
        x_BxTxD = (self.word_embeddings(input_ids_BxT) + self.position_embeddings(position_ids_BxT)
                   + self.token_type_embeddings(token_type_ids_BxT))
        return self.dropout(self.LayerNorm(x_BxTxD), deterministic=deterministic)

    def attend(self, h_xD: jax.Array) -> jax.Array:
        return self.word_embeddings.attend(h_xD)


class Bert(nn.Module):
    """``apply(params, input_ids, attention_mask, token_type_ids, masked_lm_positions)`` -> BertOutput."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: Optional[jax.Array] = None,
                 token_type_ids: Optional[jax.Array] = None, masked_lm_positions: Optional[jax.Array] = None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 position_ids: Optional[jax.Array] = None, return_mlm_logits: bool = True,
                 heads_only: bool = False) -> BertOutput:
        """``heads_only=True`` (with ``masked_lm_positions``) computes the last layer only where the heads
        read it, [CLS] and the masked positions: the same heads' outputs for ~(P+1)/T of that layer's
        work, and ``last_hidden_state`` None. Pretraining and its evaluation use it."""
        cfg = self.cfg
        B, T = input_ids.shape
        if T > cfg.max_position_embeddings:
            raise ValueError(f"sequence length {T} exceeds max_position_embeddings "
                             f"{cfg.max_position_embeddings}")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        mask = masks.padding_mask(attention_mask) if attention_mask is not None else None
        rows_BxQ = None
        if heads_only and masked_lm_positions is not None and not self.is_initializing():
            if output_hidden_states:
                raise ValueError("heads_only computes the last layer at the heads' positions only; it cannot "
                                 "also return every layer's hidden states")
            rows_BxQ = jnp.concatenate([jnp.zeros((B, 1), jnp.int32), masked_lm_positions.astype(jnp.int32)], 1)

        embeddings = BertEmbeddings(cfg, name="embeddings")
        x_BxTxD = constrain_hidden(embeddings(input_ids, token_type_ids, position_ids, deterministic))
        x_BxTxD, hidden = Stack(cfg, deterministic, pre_ln=False, is_causal=False,
                                output_hidden_states=output_hidden_states, name="encoder")(x_BxTxD, mask, rows_BxQ)
        x_BxQxD = None
        if rows_BxQ is not None:  # row 0 is [CLS], the rest are the masked positions
            x_BxQxD, x_BxTxD = x_BxTxD, None

        params = self.variables.get("params", {})
        init = self.is_initializing()
        pooled_BxD = None
        if init or "pooler" in params:
            pooled_BxD = Pooler(cfg, name="pooler")(x_BxTxD if x_BxQxD is None else x_BxQxD)
        mlm_logits = nsp_logits = mlm_hidden = None
        if masked_lm_positions is not None or init:
            if not init:
                for what, key in (("MLM head", "mlm"), ("NSP head", "nsp"), ("pooler", "pooler")):
                    if key not in params:
                        raise ValueError(MISSING_HEAD_HINT.format(what=what))
            # Gather first: the vocabulary projection runs on B*P rows, never B*T.
            if x_BxQxD is not None:
                h_BxPxD = x_BxQxD[:, 1:]
            else:
                positions_BxP = (masked_lm_positions if masked_lm_positions is not None
                                 else jnp.zeros((B, 1), jnp.int32))
                h_BxPxD = jnp.take_along_axis(x_BxTxD, positions_BxP[:, :, None].astype(jnp.int32), axis=1)
            # return_mlm_logits=False hands a fused loss the decoder's input instead (see training.losses).
            logits = return_mlm_logits or init
            mlm_out = MlmHead(cfg, name="mlm")(h_BxPxD, embeddings.attend, return_logits=logits)
            mlm_logits, mlm_hidden = (mlm_out, None) if logits else (None, mlm_out)
            nsp_logits = NspHead(cfg, name="nsp")(pooled_BxD)
            if masked_lm_positions is None:
                mlm_logits = nsp_logits = mlm_hidden = None
        return BertOutput(last_hidden_state=x_BxTxD, pooler_output=pooled_BxD, hidden_states=hidden,
                          mlm_logits=mlm_logits, nsp_logits=nsp_logits, mlm_hidden=mlm_hidden)
