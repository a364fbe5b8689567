"""BERT's pooler and pretraining heads (masked LM at gathered positions, next-sentence prediction)."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from bertgpt_jax import sharding as sh
from bertgpt_jax.configs import ModelConfig
from bertgpt_jax.models.layers import ACTIVATIONS, Dense, layer_norm


class Pooler(nn.Module):
    """tanh(W h_[CLS] + b): the sentence representation NSP and classifiers read."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        cfg = self.cfg
        return jnp.tanh(Dense((cfg.hidden_size,), (sh.EMBED, sh.MLP), cfg.dtype, cfg.param_dtype,
                              cfg.initializer_range, name="dense")(x_BxTxD[:, 0]))


class MlmHead(nn.Module):
    """Transform + LayerNorm + tied decoder + output bias, applied to already-gathered positions."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, h_BxPxD: jax.Array, decode: Callable[[jax.Array], jax.Array],
                 return_logits: bool = True) -> jax.Array:
        """Logits [B, P, V] in fp32; with ``return_logits=False`` the transformed hidden states [B, P, D]
        that the decoder would read (a fused loss then applies the tied table and ``bias`` itself)."""
        cfg = self.cfg
        h_BxPxD = Dense((cfg.hidden_size,), (sh.EMBED, sh.MLP), cfg.dtype, cfg.param_dtype,
                        cfg.initializer_range, name="transform")(h_BxPxD)
        h_BxPxD = layer_norm(cfg, "LayerNorm")(ACTIVATIONS[cfg.hidden_act](h_BxPxD))
        bias_V = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (sh.VOCAB,)),
                            (cfg.vocab_size,), cfg.param_dtype)
        if not return_logits:
            return h_BxPxD
        return decode(h_BxPxD) + bias_V.astype(jnp.float32)


class NspHead(nn.Module):
    """Two-way classifier on the pooled output; fp32 logits."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, pooled_BxD: jax.Array) -> jax.Array:
        cfg = self.cfg
        return Dense((2,), (sh.EMBED, sh.CLASSES), cfg.dtype, cfg.param_dtype, cfg.initializer_range,
                     out_dtype=jnp.float32, name="dense")(pooled_BxD)
