"""BERT with one fine-tuning output layer (Devlin et al. 2018, section 4), as the original scripts add it.

- :class:`SequenceClassifier`: pooled [CLS] -> dropout -> dense to ``num_labels`` (``num_labels=1``: a
  regression score, trained with squared error), as ``run_classifier.py``'s ``create_model``.
- :class:`TokenClassifier`: every position's hidden state -> dropout -> dense to ``num_labels``.
- :class:`SpanClassifier`: every position -> dense to (start, end) logits, as ``run_squad.py`` (no dropout).

The encoder is :class:`~bertgpt_jax.models.bert.Bert` under the name ``bert`` (its pretraining heads
dropped: see :func:`strip_pretraining_heads`); the output layer is ``classifier`` (``qa_outputs`` for spans),
the names transformers uses. Output weights start as the original's ``truncated_normal(stddev=0.02)`` (a
normal cut at two standard deviations, not rescaled), biases at zero. Given labels, each model returns its
own loss sums (``loss_sums``), as the pretraining heads do.
"""

from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from bertgpt_jax import sharding as sh
from bertgpt_jax.configs import ModelConfig
from bertgpt_jax.models import losses
from bertgpt_jax.models.bert import Bert
from bertgpt_jax.models.layers import Dropout

PRETRAINING_HEADS = ("mlm", "nsp")


def original_truncated_normal(stddev: float):
    """TF 1's ``truncated_normal_initializer``: N(0, 1) redrawn outside [-2, 2], times ``stddev``."""

    def init(key, shape, dtype=jnp.float32):
        return (jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32) * stddev).astype(dtype)

    return init


class OutputLayer(nn.Module):
    """``y = x . W + b`` with W [D, num_outputs] in fp32 logits; the fine-tuning output layer."""

    cfg: ModelConfig
    num_outputs: int

    @nn.compact
    def __call__(self, x_xD: jax.Array) -> jax.Array:
        cfg = self.cfg
        kernel = self.param("kernel", nn.with_logical_partitioning(
            original_truncated_normal(cfg.initializer_range), (sh.EMBED, sh.CLASSES)),
            (cfg.hidden_size, self.num_outputs), cfg.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (sh.CLASSES,)),
                          (self.num_outputs,), cfg.param_dtype)
        y = jnp.einsum("...d,dc->...c", x_xD.astype(cfg.dtype), kernel.astype(cfg.dtype),
                       preferred_element_type=jnp.float32)
        return y + bias.astype(jnp.float32)


def strip_pretraining_heads(params: dict) -> dict:
    """``params`` without the encoder's MLM/NSP heads, which fine-tuning never reads (they are created by
    ``Bert``'s init and would otherwise take optimizer state)."""
    out = dict(params)
    out["bert"] = {k: v for k, v in params["bert"].items() if k not in PRETRAINING_HEADS}
    return out


def _encode(cfg: ModelConfig, input_ids, attention_mask, token_type_ids, deterministic, output_hidden_states=False,
            heads_only=False):
    return Bert(cfg, name="bert")(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                  deterministic=deterministic, output_hidden_states=output_hidden_states,
                                  heads_only=heads_only)


class SequenceClassifier(nn.Module):
    """``apply(params, input_ids, attention_mask, token_type_ids)`` -> logits [B, num_labels] (fp32);
    with ``labels`` (and ``example_weights``) the dict ``cls_loss_sum``, ``cls_correct_sum``
    (classification) or ``cls_loss_sum`` of squared errors (``num_labels == 1``), plus ``logits``.

    ``layer_mix=True`` reads, instead of the pooled [CLS], a learned softmax-weighted sum of every layer's
    [CLS] state (embeddings and each layer) times a learned scale (ELMo's scalar mix, the paper's
    feature-based approach), then dropout and the dense layer; ``freeze_encoder=True`` stops gradients
    into the encoder. With the pooled head the encoder's last layer is computed at [CLS] only
    (``Bert(..., heads_only=True)``), unless layers are scanned.
    """

    cfg: ModelConfig
    num_labels: int
    layer_mix: bool = False
    freeze_encoder: bool = False

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True,
                 labels: Optional[jax.Array] = None, example_weights: Optional[jax.Array] = None):
        cfg = self.cfg
        # The pooled head reads only [CLS]: the last layer runs its queries, output projection and MLP there
        # alone (keys and values at every position), the same values for ~1/T of that work.
        out = _encode(cfg, input_ids, attention_mask, token_type_ids, deterministic,
                      output_hidden_states=self.layer_mix, heads_only=not self.layer_mix)
        if self.layer_mix:
            cls_LxBxD = jnp.stack([h[:, 0] for h in out.hidden_states]).astype(jnp.float32)
            if self.freeze_encoder:
                cls_LxBxD = jax.lax.stop_gradient(cls_LxBxD)
            L = cls_LxBxD.shape[0]
            w_L = self.param("mix_weights", nn.with_logical_partitioning(nn.initializers.zeros, (None,)), (L,),
                             jnp.float32)
            gamma = self.param("mix_scale", nn.with_logical_partitioning(nn.initializers.ones, ()), (),
                               jnp.float32)
            pooled_BxD = gamma * jnp.einsum("l,lbd->bd", jax.nn.softmax(w_L), cls_LxBxD)
        else:
            if out.pooler_output is None:
                raise ValueError("the encoder params carry no pooler; sequence classification reads the pooled "
                                 "[CLS] output")
            pooled_BxD = out.pooler_output
            if self.freeze_encoder:
                pooled_BxD = jax.lax.stop_gradient(pooled_BxD)
        h_BxD = Dropout(cfg.hidden_dropout_prob)(pooled_BxD, deterministic=deterministic)
        logits_BxC = OutputLayer(cfg, self.num_labels, name="classifier")(h_BxD)
        if labels is None:
            return logits_BxC
        B = logits_BxC.shape[0]
        w_B = jnp.ones((B,), jnp.float32) if example_weights is None else example_weights.astype(jnp.float32)
        if self.num_labels == 1:
            err_B = logits_BxC[:, 0] - labels.reshape(B).astype(jnp.float32)
            return {"cls_loss_sum": jnp.sum(err_B * err_B * w_B), "logits": logits_BxC}
        loss, correct = losses.weighted_sums(logits_BxC, labels.reshape(B), w_B)
        return {"cls_loss_sum": loss, "cls_correct_sum": correct, "logits": logits_BxC}


class TokenClassifier(nn.Module):
    """Per-token logits [B, T, num_labels]; with ``labels`` [B, T] and ``label_weights`` [B, T] (1 on the
    first piece of each word, 0 elsewhere) the sums ``tok_loss_sum``, ``tok_correct_sum``."""

    cfg: ModelConfig
    num_labels: int

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True,
                 labels: Optional[jax.Array] = None, label_weights: Optional[jax.Array] = None):
        cfg = self.cfg
        out = _encode(cfg, input_ids, attention_mask, token_type_ids, deterministic)
        h_BxTxD = Dropout(cfg.hidden_dropout_prob)(out.last_hidden_state, deterministic=deterministic)
        logits_BxTxC = OutputLayer(cfg, self.num_labels, name="classifier")(h_BxTxD)
        if labels is None:
            return logits_BxTxC
        loss, correct = losses.weighted_sums(logits_BxTxC, labels, label_weights.astype(jnp.float32))
        return {"tok_loss_sum": loss, "tok_correct_sum": correct, "logits": logits_BxTxC}


class SpanClassifier(nn.Module):
    """Start and end logits [B, T] each (fp32); with ``start_positions``/``end_positions`` [B] and
    ``example_weights`` the sums ``start_loss_sum``, ``end_loss_sum`` (and their correct counts)."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, input_ids, attention_mask=None, token_type_ids=None, deterministic: bool = True,
                 start_positions: Optional[jax.Array] = None, end_positions: Optional[jax.Array] = None,
                 example_weights: Optional[jax.Array] = None):
        out = _encode(self.cfg, input_ids, attention_mask, token_type_ids, deterministic)
        logits_BxTx2 = OutputLayer(self.cfg, 2, name="qa_outputs")(out.last_hidden_state)
        start_BxT, end_BxT = logits_BxTx2[..., 0], logits_BxTx2[..., 1]
        if start_positions is None:
            return start_BxT, end_BxT
        B = start_BxT.shape[0]
        w_B = jnp.ones((B,), jnp.float32) if example_weights is None else example_weights.astype(jnp.float32)
        s_loss, s_ok = losses.weighted_sums(start_BxT, start_positions.reshape(B), w_B)
        e_loss, e_ok = losses.weighted_sums(end_BxT, end_positions.reshape(B), w_B)
        return {"start_loss_sum": s_loss, "start_correct_sum": s_ok, "end_loss_sum": e_loss,
                "end_correct_sum": e_ok, "start_logits": start_BxT, "end_logits": end_BxT}
