"""BERT with its pretraining heads (Devlin et al. 2018): post-LN encoder, tanh pooler, MLM + NSP."""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bertgpt_jax import sharding as sh
from bertgpt_jax.configs import ModelConfig
from bertgpt_jax.models import losses, masks
from bertgpt_jax.models.heads import MlmHead, NspHead, Pooler
from bertgpt_jax.models.layers import Block, Dropout, Embedding, Stack, constrain_hidden, layer_norm
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

    def token_table(self) -> jax.Array:
        """The token table [V, D], which the MLM decoder shares."""
        return self.word_embeddings.table()


def _row_index(shape: tuple[int, ...], rows_BxQ: jax.Array, axis: int) -> jax.Array:
    """Positions, in a row-major array of ``shape``, of the elements taken at ``rows_BxQ`` along ``axis``
    (batch on axis 0): what :class:`Dropout` needs to drop exactly what the full array drops there."""
    strides = np.cumprod((1,) + tuple(shape[::-1]))[::-1][1:]
    out_shape = list(shape)
    out_shape[axis] = rows_BxQ.shape[1]
    index = jnp.zeros(out_shape, jnp.uint32)
    for a in range(len(shape)):
        if a == axis:
            coord = rows_BxQ.astype(jnp.uint32).reshape(
                [shape[0]] + [1] * (axis - 1) + [rows_BxQ.shape[1]] + [1] * (len(shape) - axis - 1))
        else:
            coord = jax.lax.broadcasted_iota(jnp.uint32, out_shape, a)
        index = index + coord * jnp.uint32(strides[a])
    return index


class HeadsOnlyLayer(Block):
    """BERT's last encoder layer computed only at the rows the pretraining heads read ([CLS] and the masked
    positions), with keys and values from every position: the same parameters and, dropout included, the
    same values as those rows of the full layer, for ~(P + 1) / T of its queries, output projection and MLP.
    """

    def __call__(self, x_BxTxD: jax.Array, mask: Optional[jax.Array], rows_BxQ: jax.Array):
        if self.pre_ln or self.is_causal:
            raise ValueError("HeadsOnlyLayer is BERT's post-LN bidirectional layer")
        B, T, D = x_BxTxD.shape
        H = self.cfg.num_attention_heads
        attn = self.attention
        x_BxQxD = jnp.take_along_axis(x_BxTxD, rows_BxQ[:, :, None], axis=1)
        kernel, bias = attn.qkv.weights((D,))
        q_BxQxHxK = attn.qkv.apply_weights(x_BxQxD, kernel[:, 0], bias[0])
        kv_BxTx2xHxK = attn.qkv.apply_weights(x_BxTxD, kernel[:, 1:], bias[1:])
        ctx_BxQxHxK = attn.attend(q_BxQxHxK, kv_BxTx2xHxK[:, :, 0], kv_BxTx2xHxK[:, :, 1], mask,
                                  dropout_index=_row_index((B, H, T, T), rows_BxQ, axis=2))
        hidden_index = _row_index((B, T, D), rows_BxQ, axis=1)
        x_BxQxD = self.ln_attn(x_BxQxD + self.dropout(attn.out(ctx_BxQxHxK), index=hidden_index))
        x_BxQxD = self.ln_mlp(x_BxQxD + self.dropout(self.mlp(x_BxQxD), index=hidden_index))
        return constrain_hidden(x_BxQxD), None


class Bert(nn.Module):
    """``apply(params, input_ids, attention_mask, token_type_ids, masked_lm_positions, ...)`` -> BertOutput.

    With ``masked_lm_positions`` the heads run: MLM logits at those positions and NSP logits. Given labels
    (``masked_lm_ids`` with ``masked_lm_weights``, ``next_sentence_labels`` with ``example_weights``) the
    heads return their loss sums instead of the MLM logits (``loss_sums``: ``mlm_loss_sum``,
    ``mlm_correct_sum``, ``nsp_loss_sum``, ``nsp_correct_sum``), the MLM cross-entropy fused with the tied
    decoder.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: Optional[jax.Array] = None,
                 token_type_ids: Optional[jax.Array] = None, masked_lm_positions: Optional[jax.Array] = None,
                 deterministic: bool = True, output_hidden_states: bool = False,
                 position_ids: Optional[jax.Array] = None, masked_lm_ids: Optional[jax.Array] = None,
                 masked_lm_weights: Optional[jax.Array] = None, next_sentence_labels: Optional[jax.Array] = None,
                 example_weights: Optional[jax.Array] = None, heads_only: bool = False) -> BertOutput:
        """``heads_only=True`` computes the last layer only where the heads read it: [CLS] and the masked
        positions, or [CLS] alone without ``masked_lm_positions`` (the pooler's input). The heads' and the
        pooler's outputs are the same, ``last_hidden_state`` is None. Pretraining, its evaluation and
        sequence classification use it."""
        cfg = self.cfg
        B, T = input_ids.shape
        masks.check_length(T, cfg.max_position_embeddings)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        if position_ids is None:
            position_ids = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
        mask = masks.padding_mask(attention_mask) if attention_mask is not None else None
        init = self.is_initializing()
        heads_only = heads_only and not init and not cfg.scan_layers
        if heads_only and output_hidden_states:
            raise ValueError("heads_only computes the last layer at the heads' positions only; it cannot "
                             "also return every layer's hidden states")
        rows_BxQ = None
        if masked_lm_positions is not None:  # row 0 is [CLS], the rest are the masked positions
            rows_BxQ = jnp.concatenate([jnp.zeros((B, 1), jnp.int32), masked_lm_positions.astype(jnp.int32)], 1)
        elif heads_only:
            rows_BxQ = jnp.zeros((B, 1), jnp.int32)

        embeddings = BertEmbeddings(cfg, name="embeddings")
        x_BxTxD = constrain_hidden(embeddings(input_ids, token_type_ids, position_ids, deterministic))
        encoder = Stack(cfg, deterministic, pre_ln=False, is_causal=False, output_hidden_states=output_hidden_states,
                        last_layer=HeadsOnlyLayer if heads_only else None, name="encoder")
        x_BxTxD, hidden = encoder(x_BxTxD, mask, (rows_BxQ,) if heads_only else ())
        x_BxQxD = x_BxTxD if heads_only else None
        if heads_only:
            x_BxTxD = None
        elif rows_BxQ is not None:
            x_BxQxD = jnp.take_along_axis(x_BxTxD, rows_BxQ[:, :, None], axis=1)

        params = self.variables.get("params", {})
        pooled_BxD = None
        if init or "pooler" in params:
            pooled_BxD = Pooler(cfg, name="pooler")(x_BxTxD if x_BxQxD is None else x_BxQxD)
        out = BertOutput(last_hidden_state=x_BxTxD, pooler_output=pooled_BxD, hidden_states=hidden)
        if masked_lm_positions is None and not init:
            return out
        if not init:
            for what, key in (("MLM head", "mlm"), ("NSP head", "nsp"), ("pooler", "pooler")):
                if key not in params:
                    raise ValueError(MISSING_HEAD_HINT.format(what=what))
        # The vocabulary projection runs on B*P gathered rows, never B*T.
        h_BxPxD = x_BxQxD[:, 1:] if x_BxQxD is not None else x_BxTxD[:, :1]
        mlm, nsp = MlmHead(cfg, name="mlm"), NspHead(cfg, name="nsp")
        nsp_logits = nsp(pooled_BxD)
        if masked_lm_ids is None and next_sentence_labels is None:
            mlm_logits = mlm(h_BxPxD, embeddings.token_table())
            if init:
                return out
            return out.replace(mlm_logits=mlm_logits, nsp_logits=nsp_logits)
        sums = {}
        if masked_lm_ids is not None:
            sums["mlm_loss_sum"], sums["mlm_correct_sum"] = mlm(h_BxPxD, embeddings.token_table(), masked_lm_ids,
                                                                masked_lm_weights)
        if next_sentence_labels is not None:
            weights_B = jnp.ones((B,), jnp.float32) if example_weights is None else example_weights
            sums["nsp_loss_sum"], sums["nsp_correct_sum"] = losses.weighted_sums(
                nsp_logits, next_sentence_labels.reshape(B), weights_B.reshape(B))
        return out.replace(nsp_logits=nsp_logits, loss_sums=sums)
