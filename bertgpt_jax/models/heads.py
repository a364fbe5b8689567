"""BERT's pooler and pretraining heads. Each head computes its logits, or, given labels, its own loss sums.

The MLM head decodes with the tied token table (passed in by the model that owns it) and computes its
cross-entropy fused with the decoder (``models.losses.decoder_sums``), so nothing outside the model names
a parameter path.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bertgpt_jax import sharding as sh
from bertgpt_jax.configs import ModelConfig
from bertgpt_jax.models import losses
from bertgpt_jax.models.layers import ACTIVATIONS, dense, layer_norm


class Pooler(nn.Module):
    """tanh(W h_[CLS] + b): the sentence representation NSP and classifiers read."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        cfg = self.cfg
        return jnp.tanh(dense(cfg, (cfg.hidden_size,), (sh.EMBED, sh.MLP), name="dense")(x_BxTxD[:, 0]))


class MlmHead(nn.Module):
    """Transform + LayerNorm + tied decoder + output bias, applied to already-gathered positions."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, h_BxPxD: jax.Array, table_VxD: jax.Array, labels_BxP: Optional[jax.Array] = None,
                 weights_BxP: Optional[jax.Array] = None):
        """Logits [B, P, V] in fp32; with ``labels_BxP`` (and ``weights_BxP``) instead the pair
        (sum of weighted NLL, sum of weighted correct predictions)."""
        cfg = self.cfg
        h_BxPxD = dense(cfg, (cfg.hidden_size,), (sh.EMBED, sh.MLP), name="transform")(h_BxPxD)
        h_BxPxD = layer_norm(cfg, "LayerNorm")(ACTIVATIONS[cfg.hidden_act](h_BxPxD))
        bias_V = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (sh.VOCAB,)),
                            (cfg.vocab_size,), cfg.param_dtype)
        if labels_BxP is None:
            logits = jnp.einsum("bpd,vd->bpv", h_BxPxD, table_VxD.astype(h_BxPxD.dtype),
                                preferred_element_type=jnp.float32)
            return logits + bias_V.astype(jnp.float32)
        B, P, D = h_BxPxD.shape
        weights_BxP = jnp.ones((B, P), jnp.float32) if weights_BxP is None else weights_BxP
        return losses.decoder_sums(h_BxPxD.reshape(B * P, D), table_VxD, bias_V, labels_BxP.reshape(B * P),
                                   weights_BxP.reshape(B * P))


class NspHead(nn.Module):
    """Two-way classifier on the pooled output; fp32 logits."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, pooled_BxD: jax.Array) -> jax.Array:
        return dense(self.cfg, (2,), (sh.EMBED, sh.CLASSES), out_dtype=jnp.float32, name="dense")(pooled_BxD)
