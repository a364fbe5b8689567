"""Cross-entropy as (sum, count) pieces, and the fused output-layer losses the heads use.

Losses are sums over examples (and their "correct" counts); a task divides by the batch's counts, so
microbatches and devices add up exactly. The fused forms apply an output projection and the
cross-entropy as one differentiable op: the backward pass forms softmax minus one-hot once, instead of
differentiating log-softmax, gather and bias-add one by one over [N, V] logits; the causal-LM form goes
chunk by chunk and never holds [B, T, V] logits or their gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def nll_and_correct(logits_NxV: jax.Array, labels_N: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(NLL per row in fp32, 1.0 where the label's logit is the row's maximum).

    "Correct" compares against the row maximum that logsumexp needs anyway instead of running a
    separate argmax over the vocabulary; it differs from ``argmax == label`` only on exact ties.
    """
    label_logit_N, max_N, lse_N = _label_max_lse(logits_NxV.astype(jnp.float32), labels_N)
    return lse_N - label_logit_N, (label_logit_N >= max_N).astype(jnp.float32)


def weighted_sums(logits_NxV: jax.Array, labels_N: jax.Array, weights_N: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of weight * NLL, sum of weight * correct) over rows; any leading shape."""
    nll, correct = nll_and_correct(logits_NxV, labels_N)
    weights_N = weights_N.astype(jnp.float32)
    return jnp.sum(nll * weights_N), jnp.sum(correct * weights_N)


def _label_max_lse(logits_NxV: jax.Array, labels_N: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The label's logit, the row maximum and logsumexp of each row (over the last axis)."""
    label_logit_N = jnp.take_along_axis(logits_NxV, labels_N[..., None].astype(jnp.int32), axis=-1)[..., 0]
    max_N = jax.lax.stop_gradient(jnp.max(logits_NxV, axis=-1))  # the gradient of lse is softmax
    lse_N = max_N + jnp.log(jnp.sum(jnp.exp(logits_NxV - max_N[..., None]), axis=-1))
    return label_logit_N, max_N, lse_N


def _nll_gradient(probs_NxV: jax.Array, labels_N: jax.Array, coef_N: jax.Array) -> jax.Array:
    """d(coef * NLL)/d(logits) = (softmax - one-hot(label)) * coef, over the last axis."""
    hit_NxV = jax.lax.broadcasted_iota(jnp.int32, probs_NxV.shape, probs_NxV.ndim - 1) == labels_N[..., None]
    return jnp.where(hit_NxV, probs_NxV - 1.0, probs_NxV) * coef_N[..., None]


# ---- tied decoder + bias + cross-entropy (BERT's MLM head) ---------------------------------------


def decoder_sums(h_NxD: jax.Array, table_VxD: jax.Array, bias_V: jax.Array, labels_N: jax.Array,
                 weights_N: jax.Array) -> tuple[jax.Array, jax.Array]:
    """:func:`weighted_sums` of ``h @ table.T + bias`` as one op (values as the plain form; the
    "correct" sum carries no gradient)."""
    return _decoder_fused(h_NxD, table_VxD, bias_V, labels_N.astype(jnp.int32), weights_N.astype(jnp.float32))


def _decoder_forward(h_NxD, table_VxD, bias_V, labels_N, weights_N):
    logits_NxV = jnp.einsum("nd,vd->nv", h_NxD, table_VxD.astype(h_NxD.dtype),
                            preferred_element_type=jnp.float32) + bias_V.astype(jnp.float32)
    label_N, max_N, lse_N = _label_max_lse(logits_NxV, labels_N)
    sums = (jnp.sum((lse_N - label_N) * weights_N), jnp.sum((label_N >= max_N) * weights_N))
    return sums, logits_NxV, lse_N


def _decoder_fwd(h_NxD, table_VxD, bias_V, labels_N, weights_N):
    sums, logits_NxV, lse_N = _decoder_forward(h_NxD, table_VxD, bias_V, labels_N, weights_N)
    return sums, (h_NxD, table_VxD, bias_V, logits_NxV, lse_N, labels_N, weights_N)


def _decoder_bwd(residuals, cotangents):
    h_NxD, table_VxD, bias_V, logits_NxV, lse_N, labels_N, weights_N = residuals
    coef_N = weights_N * cotangents[0]  # the accuracy sum has no gradient
    g_NxV = _nll_gradient(jnp.exp(logits_NxV - lse_N[:, None]), labels_N, coef_N)
    # The bias gradient, a sum over rows, written as a matrix-vector product: XLA's CPU reduction over
    # the major axis of an [N, V] array is much slower than a matmul (bench/bench_train_step.py).
    dbias_V = jnp.einsum("n,nv->v", jnp.ones_like(coef_N), g_NxV,
                         preferred_element_type=jnp.float32).astype(bias_V.dtype)
    g_NxV = g_NxV.astype(h_NxD.dtype)
    dh_NxD = jnp.einsum("nv,vd->nd", g_NxV, table_VxD.astype(h_NxD.dtype),
                        preferred_element_type=jnp.float32).astype(h_NxD.dtype)
    dtable_VxD = jnp.einsum("nv,nd->vd", g_NxV, h_NxD, preferred_element_type=jnp.float32).astype(table_VxD.dtype)
    return dh_NxD, dtable_VxD, dbias_V, None, jnp.zeros_like(weights_N)


_decoder_fused = jax.custom_vjp(lambda h, t, b, y, w: _decoder_forward(h, t, b, y, w)[0])
_decoder_fused.defvjp(_decoder_fwd, _decoder_bwd)


# ---- tied LM head + cross-entropy, chunk by chunk (GPT-2) ----------------------------------------


def _chunks(x_BxTx_: jax.Array, chunk: int) -> jax.Array:
    # [B, T, ...] -> [T/chunk, B, chunk, ...]: each chunk keeps every batch row, so keeps the batch sharding.
    B, T = x_BxTx_.shape[:2]
    return jnp.swapaxes(x_BxTx_.reshape(B, T // chunk, chunk, *x_BxTx_.shape[2:]), 0, 1)


def _chunk_stats(h_BxCxD, table_VxD, targets_BxC, weights_BxC):
    """Logits of one chunk and its sums; returns (exp(logits - max) [B,C,V], 1/sum of it, nll, correct)."""
    logits_BxCxV = jnp.einsum("bcd,vd->bcv", h_BxCxD, table_VxD.astype(h_BxCxD.dtype),
                              preferred_element_type=jnp.float32)
    label_BxC = jnp.take_along_axis(logits_BxCxV, targets_BxC[..., None], axis=-1)[..., 0]
    max_BxC = jnp.max(logits_BxCxV, axis=-1)
    # exp once, kept for the softmax of the backward pass; the row sum as a matrix-vector product, which
    # XLA's CPU backend runs faster than its fused exp-and-reduce over a [B, C, V] chunk.
    exp_BxCxV = jnp.exp(logits_BxCxV - max_BxC[..., None])
    sum_BxC = jnp.einsum("bcv,v->bc", exp_BxCxV, jnp.ones(exp_BxCxV.shape[-1], jnp.float32))
    nll = jnp.sum((max_BxC + jnp.log(sum_BxC) - label_BxC) * weights_BxC)
    correct = jnp.sum((label_BxC >= max_BxC) * weights_BxC)  # as nll_and_correct: ties count
    return exp_BxCxV, 1.0 / sum_BxC, nll, correct


def _lm_primal(h_BxTxD, table_VxD, targets_BxT, weights_BxT, chunk):
    def body(_, xs):
        _, _, nll, correct = _chunk_stats(*xs[:1], table_VxD, *xs[1:])
        return None, (nll, correct)

    _, (nll, correct) = jax.lax.scan(body, None, (_chunks(h_BxTxD, chunk), _chunks(targets_BxT, chunk),
                                                  _chunks(weights_BxT, chunk)))
    return jnp.sum(nll), jnp.sum(correct)


def _lm_fwd(h_BxTxD, table_VxD, targets_BxT, weights_BxT, chunk):
    # The gradient is computed chunk by chunk in the forward pass: softmax minus one-hot, times the
    # weight, projected back at once, so no [B, T, V] array (logits or their gradient) ever exists.
    # The table's gradient accumulates transposed ([D, V]: the chunk's gradient is then the matmul's
    # right operand as it lies) and the table is transposed once for the projection back, instead of
    # XLA transposing a [B, C, V] or [V, D] array in every chunk.
    table_DxV = jnp.swapaxes(table_VxD, 0, 1).astype(h_BxTxD.dtype)

    def body(dtable_DxV, xs):
        h_BxCxD, targets_BxC, weights_BxC = xs
        exp_BxCxV, inv_sum_BxC, nll, correct = _chunk_stats(h_BxCxD, table_VxD, targets_BxC, weights_BxC)
        g_BxCxV = _nll_gradient(exp_BxCxV * inv_sum_BxC[..., None], targets_BxC, weights_BxC).astype(h_BxCxD.dtype)
        dh_BxCxD = jnp.einsum("bcv,dv->bcd", g_BxCxV, table_DxV,
                              preferred_element_type=jnp.float32).astype(h_BxCxD.dtype)
        dtable_DxV = dtable_DxV + jnp.einsum("bcd,bcv->dv", h_BxCxD, g_BxCxV, preferred_element_type=jnp.float32)
        return dtable_DxV, (nll, correct, dh_BxCxD)

    dtable, (nll, correct, dh) = jax.lax.scan(
        body, jnp.zeros(table_DxV.shape, jnp.float32),
        (_chunks(h_BxTxD, chunk), _chunks(targets_BxT, chunk), _chunks(weights_BxT, chunk)))
    dh_BxTxD = jnp.swapaxes(dh, 0, 1).reshape(h_BxTxD.shape)
    dtable_VxD = jnp.swapaxes(dtable, 0, 1).astype(table_VxD.dtype)
    return (jnp.sum(nll), jnp.sum(correct)), (dh_BxTxD, dtable_VxD, targets_BxT, weights_BxT)


def _lm_bwd(chunk, residuals, cotangents):
    dh_BxTxD, dtable_VxD, targets_BxT, weights_BxT = residuals
    g_loss = cotangents[0]
    return (dh_BxTxD * g_loss.astype(dh_BxTxD.dtype), dtable_VxD * g_loss.astype(dtable_VxD.dtype),
            None, jnp.zeros_like(weights_BxT))


_lm_fused = jax.custom_vjp(lambda h, t, y, w, chunk: _lm_primal(h, t, y, w, chunk), nondiff_argnums=(4,))
_lm_fused.defvjp(lambda h, t, y, w, chunk: _lm_fwd(h, t, y, w, chunk), _lm_bwd)


def lm_chunk_size(seq_len: int, batch: int, vocab_size: int, target_bytes: int = 128 << 20) -> int:
    """The largest divisor of ``seq_len`` whose [batch, chunk, vocab] fp32 logits fit in ``target_bytes``."""
    best = 1
    for c in range(1, seq_len + 1):
        if seq_len % c == 0 and batch * c * vocab_size * 4 <= target_bytes:
            best = c
    return best


def lm_head_sums(h_BxTxD: jax.Array, table_VxD: jax.Array, targets_BxT: jax.Array, weights_BxT: jax.Array,
                 chunk: int | None = None) -> tuple[jax.Array, jax.Array]:
    """:func:`weighted_sums` of ``h @ table.T`` against ``targets``, one sequence chunk at a time.

    Same values as projecting to [B, T, V] logits first, with a fraction of the memory traffic; the
    "correct" sum carries no gradient.
    """
    B, T = targets_BxT.shape
    chunk = chunk or lm_chunk_size(T, B, table_VxD.shape[0])
    loss_sum, correct_sum = _lm_fused(h_BxTxD, table_VxD, targets_BxT.astype(jnp.int32),
                                      weights_BxT.astype(jnp.float32), chunk)
    return loss_sum, jax.lax.stop_gradient(correct_sum)
