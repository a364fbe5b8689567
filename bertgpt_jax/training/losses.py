"""Pretraining losses as (sum, count) pairs, so microbatches and devices add up exactly."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def token_nll(logits_NxV: jax.Array, labels_N: jax.Array) -> jax.Array:
    """Negative log-likelihood per row in fp32, without a one-hot: logsumexp minus the label's logit."""
    logits_NxV = logits_NxV.astype(jnp.float32)
    label_logit_N = jnp.take_along_axis(logits_NxV, labels_N[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return jax.nn.logsumexp(logits_NxV, axis=-1) - label_logit_N


def _real_B(batch: dict, n: int) -> jax.Array:
    # Eval batches padded to full size mark their padding rows with is_real_example = 0.
    real = batch.get("is_real_example")
    return jnp.ones((n,), jnp.float32) if real is None else real.reshape(-1).astype(jnp.float32)


def bert_sums(mlm_logits_BxPxV: jax.Array, nsp_logits_Bx2: jax.Array, batch: dict) -> dict:
    """Sums and counts for MLM (weighted by ``masked_lm_weights``) and NSP (every example)."""
    weights_BxP = batch["masked_lm_weights"].astype(jnp.float32)
    nll_BxP = token_nll(mlm_logits_BxPxV, batch["masked_lm_ids"])
    correct_BxP = (jnp.argmax(mlm_logits_BxPxV, axis=-1) == batch["masked_lm_ids"]).astype(jnp.float32)
    labels_B = batch["next_sentence_labels"].reshape(-1)
    nsp_nll_B = token_nll(nsp_logits_Bx2, labels_B)
    nsp_correct_B = (jnp.argmax(nsp_logits_Bx2, axis=-1) == labels_B).astype(jnp.float32)
    real_B = _real_B(batch, labels_B.shape[0])
    return {
        "mlm_loss_sum": jnp.sum(nll_BxP * weights_BxP),
        "mlm_correct_sum": jnp.sum(correct_BxP * weights_BxP),
        "mlm_count": jnp.sum(weights_BxP),
        "nsp_loss_sum": jnp.sum(nsp_nll_B * real_B),
        "nsp_correct_sum": jnp.sum(nsp_correct_B * real_B),
        "nsp_count": jnp.sum(real_B),
    }


def _gpt_weights(batch: dict) -> jax.Array:
    targets_BxT = batch["targets"]
    return (targets_BxT >= 0).astype(jnp.float32) * _real_B(batch, targets_BxT.shape[0])[:, None]


def gpt_sums(logits_BxTxV: jax.Array, batch: dict) -> dict:
    """Sum of next-token NLL over target positions; a negative target (padding) counts for nothing."""
    targets_BxT = batch["targets"]
    weights_BxT = _gpt_weights(batch)
    nll_BxT = token_nll(logits_BxTxV, jnp.maximum(targets_BxT, 0))
    correct_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT).astype(jnp.float32)
    return {
        "lm_loss_sum": jnp.sum(nll_BxT * weights_BxT),
        "lm_correct_sum": jnp.sum(correct_BxT * weights_BxT),
        "lm_count": jnp.sum(weights_BxT),
    }


def objective(sums: dict, totals: dict) -> jax.Array:
    """The scalar trained on: mean MLM NLL + mean NSP NLL (BERT), or mean next-token NLL (GPT).

    ``totals`` holds the counts of the whole global batch, so per-microbatch objectives add up to the
    full-batch mean exactly.
    """
    if "mlm_loss_sum" in sums:
        return (sums["mlm_loss_sum"] / jnp.maximum(totals["mlm_count"], 1.0)
                + sums["nsp_loss_sum"] / jnp.maximum(totals["nsp_count"], 1.0))
    return sums["lm_loss_sum"] / jnp.maximum(totals["lm_count"], 1.0)


def counts(batch: dict, is_bert: bool) -> dict:
    """The denominators of :func:`objective`, computed from the batch before the forward pass."""
    if is_bert:
        return {"mlm_count": jnp.sum(batch["masked_lm_weights"].astype(jnp.float32)),
                "nsp_count": jnp.sum(_real_B(batch, batch["next_sentence_labels"].shape[0]))}
    return {"lm_count": jnp.sum(_gpt_weights(batch))}


def summarize(sums: dict) -> dict:
    """Host-side means from accumulated sums: loss, accuracies, perplexity."""
    out = {}
    if "mlm_loss_sum" in sums:
        mlm = sums["mlm_loss_sum"] / max(sums["mlm_count"], 1.0)
        nsp = sums["nsp_loss_sum"] / max(sums["nsp_count"], 1.0)
        out.update({"loss": mlm + nsp, "masked_lm_loss": mlm, "next_sentence_loss": nsp,
                    "masked_lm_accuracy": sums["mlm_correct_sum"] / max(sums["mlm_count"], 1.0),
                    "next_sentence_accuracy": sums["nsp_correct_sum"] / max(sums["nsp_count"], 1.0)})
    else:
        lm = sums["lm_loss_sum"] / max(sums["lm_count"], 1.0)
        out.update({"loss": lm, "perplexity": math.exp(min(lm, 50.0)),
                    "accuracy": sums["lm_correct_sum"] / max(sums["lm_count"], 1.0)})
    return out
