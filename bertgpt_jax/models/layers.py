"""Building blocks shared by BERT and GPT-2: dense, embedding, LayerNorm, attention, MLP, block, stack.

BERT and GPT-2 differ only by config: post-LN vs pre-LN blocks, bidirectional vs causal masks.
Every parameter carries logical axis names (``bertgpt_jax.sharding``); activations are constrained to
(batch, length, embed) at block boundaries.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bertgpt_jax import sharding as sh
from bertgpt_jax.configs import ModelConfig


_SQRT_HALF = 0.7071067811865476  # a Python float: weakly typed, so bf16 stays bf16


def gelu_erf(x: jax.Array) -> jax.Array:
    """Exact GELU, ``x/2 * (1 + erf(x/sqrt 2))``: the original BERT's and torch's formula.

    On CPU ``erf`` costs a third of the ``erfc`` that ``jax.nn.gelu(approximate=False)`` uses.
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": gelu_erf,  # exact erf GELU (original BERT)
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # tanh approximation (GPT-2)
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "silu": jax.nn.silu,
}

REMAT_POLICIES = {
    "full": None,  # save nothing inside a layer; recompute it all in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,  # keep weight matmul outputs
}


def _mix32(x: jax.Array) -> jax.Array:
    """A bijective 32-bit integer hash with full avalanche (two xorshift-multiply rounds)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def dropout_bits(key: jax.Array, shape: Sequence[int], rows: Optional[jax.Array] = None, row_axis: int = 1,
                 length: Optional[int] = None) -> jax.Array:
    """uint32 random bits for a dropout mask: a hash of each element's index under a per-call seed.

    The seed comes from ``key`` through jax.random (two words); the elements are then hashed from
    their position, which XLA fuses into the consumer. On CPU this is ~40x cheaper than threefry
    bits per element, and like them it is the same on every mesh (each shard hashes its own indices).

    With ``rows`` ([B, Q] positions along ``row_axis``, batch on axis 0) the array holds only those rows of
    one that is ``length`` long on that axis, and each element gets the bits it would have there: a layer
    computed at a few positions drops exactly what the full layer drops at them.
    """
    full = list(shape)
    if rows is not None:
        full[row_axis] = length
    n = int(np.prod(full))
    if n >= 2 ** 32:
        if rows is not None:
            raise ValueError(f"dropout over {n} elements (>= 2**32) cannot be taken at selected rows")
        return jax.random.bits(key, tuple(shape), jnp.uint32)
    seed = jax.random.bits(key, (2,), jnp.uint32)
    if not len(shape):
        index = jnp.uint32(0)
    elif rows is None:
        index = jax.lax.iota(jnp.uint32, n).reshape(shape)
    else:
        strides = np.cumprod([1] + full[::-1])[::-1][1:]  # row-major strides of the full array
        index = jnp.zeros(shape, jnp.uint32)
        for axis in range(len(shape)):
            if axis == row_axis:
                coord = rows.astype(jnp.uint32).reshape(
                    [shape[0]] + [1] * (row_axis - 1) + [shape[row_axis]] + [1] * (len(shape) - row_axis - 1))
            else:
                coord = jax.lax.broadcasted_iota(jnp.uint32, shape, axis)
            index = index + coord * jnp.uint32(strides[axis])
    return _mix32(_mix32(index ^ seed[0]) + seed[1])


class Dropout(nn.Module):
    """Inverted dropout (drop with probability ``rate``, scale the rest by 1/(1-rate)).

    Same semantics as ``flax.linen.Dropout``; the mask comes from :func:`dropout_bits` with the key
    drawn from the ``dropout`` rng collection, so it still varies per module, layer and step.
    ``rows``/``row_axis``/``length`` (see :func:`dropout_bits`) apply it to selected rows of a longer array.
    """

    rate: float
    deterministic: Optional[bool] = None

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: Optional[bool] = None, rows: Optional[jax.Array] = None,
                 row_axis: int = 1, length: Optional[int] = None) -> jax.Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        threshold = jnp.uint32(min(round(self.rate * 2.0 ** 32), 2 ** 32 - 1))
        bits = dropout_bits(self.make_rng("dropout"), x.shape, rows, row_axis, length)
        keep = bits >= threshold
        return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros((), x.dtype))


def whole_features(table_VxD: jax.Array, row_axis: str = sh.VOCAB) -> jax.Array:
    """An embedding table with its feature axis unsplit (rows may stay split), for lookups and tied decoders.

    A gather from a table split over rows and features makes XLA replicate it in full ("involuntary full
    rematerialization"); and with the feature axis split over fsdp while the activations' batch is also
    split over fsdp, XLA's SPMD partitioner returned wrong gradients for the tied projection on a 2x2x2
    mesh (loss still right; tests/test_model_sharding.py guards this). FSDP all-gathers weights before use
    anyway.
    """
    return nn.with_logical_constraint(table_VxD, (row_axis, None))


def constrain_hidden(x_BxTxD: jax.Array) -> jax.Array:
    return nn.with_logical_constraint(x_BxTxD, (sh.BATCH, sh.LENGTH, sh.EMBED))


class Dense(nn.Module):
    """``y = x . W + b`` contracting the trailing ``in_ndim`` axes of x; W has shape in_shape + out_shape.

    Multi-axis kernels (e.g. [D, 3, H, K] for fused QKV) keep heads as a named axis for tensor
    parallelism while computing one matmul.
    """

    out_shape: Sequence[int]
    kernel_axes: Sequence[Optional[str]]
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    stddev: float = 0.02
    in_ndim: int = 1
    out_dtype: Optional[jnp.dtype] = None  # e.g. float32 for logits computed from bf16 inputs

    @nn.compact
    def __call__(self, x: jax.Array, select: Optional[slice] = None) -> jax.Array:
        """``select`` takes a slice of the first output axis (e.g. only Q of a fused QKV kernel)."""
        in_shape = tuple(x.shape[x.ndim - self.in_ndim:])
        out_shape = tuple(self.out_shape)
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.normal(self.stddev), tuple(self.kernel_axes)), in_shape + out_shape,
            self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(
            nn.initializers.zeros, tuple(self.kernel_axes[self.in_ndim:])), out_shape, self.param_dtype)
        if select is not None:
            kernel = kernel[(slice(None),) * self.in_ndim + (select,)]
            bias = bias[select]
        out_dtype = self.out_dtype or self.dtype
        y = contract(x.astype(self.dtype), kernel.astype(self.dtype), self.in_ndim, out_dtype)
        return y + bias.astype(out_dtype)


def _contract(x: jax.Array, kernel: jax.Array, in_ndim: int, out_dtype) -> jax.Array:
    x_axes = tuple(range(x.ndim - in_ndim, x.ndim))
    return jax.lax.dot_general(x, kernel, ((x_axes, tuple(range(in_ndim))), ((), ())),
                               preferred_element_type=out_dtype)


def _materialised(fn: Callable[[jax.Array], jax.Array], a: jax.Array) -> jax.Array:
    """``fn(a)`` as an array of its own, row-major, that XLA can neither fuse into its readers nor lay out as a view.

    It is computed inside a conditional whose predicate is only known at run time (both branches give the same
    value; a NaN takes the other one): a conditional's result is always materialised. On CPU
    ``optimization_barrier`` cannot do this: it is removed before fusion.
    """
    first = a.reshape(-1)[0]
    return jax.lax.cond(first == first, fn, lambda a: fn(a) * 1, a)


def transposed_copy(a_NxM: jax.Array) -> jax.Array:
    """``a.T`` as an array of its own, laid out row-major, rather than a transposed view.

    XLA may otherwise assign the transpose a column-major layout (a free bitcast) and hand the matmul that
    reads it an operand contracted over its major axis, which the CPU backend's fast matmul does not take.
    """
    return _materialised(lambda a: a.T, a_NxM)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _contract_cpu(x, kernel, in_ndim, out_dtype):
    return _contract(x, kernel, in_ndim, out_dtype)


def _contract_cpu_fwd(x, kernel, in_ndim, out_dtype):
    return _contract(x, kernel, in_ndim, out_dtype), (x, kernel)


def _contract_cpu_bwd(in_ndim, out_dtype, res, g):
    x, kernel = res
    n_in = int(np.prod(kernel.shape[:in_ndim]))
    kernel_IxO = kernel.reshape(n_in, -1)  # 2-D, so XLA reads it as it is instead of copying it transposed
    x_NxI = x.reshape(-1, n_in)
    g_NxO = g.astype(kernel.dtype).reshape(x_NxI.shape[0], -1)
    dx = jnp.matmul(g_NxO, kernel_IxO.T, preferred_element_type=jnp.float32).astype(x.dtype).reshape(x.shape)
    # The weight gradient contracts over every token, the major axis of both operands. Transposing the
    # smaller operand into an array of its own makes it a plain [in, N] x [N, out] matmul.
    if x_NxI.shape[1] <= g_NxO.shape[1]:
        dw_IxO = jnp.matmul(transposed_copy(x_NxI), g_NxO, preferred_element_type=jnp.float32)
    else:
        dw_IxO = jnp.matmul(transposed_copy(g_NxO), x_NxI, preferred_element_type=jnp.float32).T
    return dx, dw_IxO.astype(kernel.dtype).reshape(kernel.shape)


_contract_cpu.defvjp(_contract_cpu_fwd, _contract_cpu_bwd)


def contract(x: jax.Array, kernel: jax.Array, in_ndim: int, out_dtype) -> jax.Array:
    """``x . kernel`` over x's trailing ``in_ndim`` axes and the kernel's leading ones.

    On CPU the weight gradient is written out as a row-major matmul (see ``transposed_copy``): XLA's own
    transpose of the product ran it as a transposed-operand Eigen matmul at ~60% of the plain matmul rate
    and copied the larger operand first. Elsewhere XLA's own gradient is used.
    """
    if jax.default_backend() != "cpu":
        return _contract(x, kernel, in_ndim, out_dtype)
    return _contract_cpu(x, kernel, in_ndim, out_dtype)


class Embedding(nn.Module):
    """A lookup table that can also project back onto itself (tied decoder / LM head)."""

    num_embeddings: int
    features: int
    axes: tuple[str, str]
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    stddev: float = 0.02

    def setup(self):
        self.embedding = self.param("embedding", nn.with_logical_partitioning(
            nn.initializers.normal(self.stddev), self.axes), (self.num_embeddings, self.features),
            self.param_dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        table = whole_features(self.embedding, self.axes[0])
        return jnp.take(table, ids, axis=0).astype(self.dtype)

    def attend(self, x_xD: jax.Array) -> jax.Array:
        """Logits against every row of the table, in fp32."""
        table = whole_features(self.embedding, self.axes[0])
        return jnp.einsum("...d,vd->...v", x_xD, table.astype(x_xD.dtype),
                          preferred_element_type=jnp.float32)


def layer_norm(cfg: ModelConfig, name: str) -> nn.LayerNorm:
    """LayerNorm with params ``scale``/``bias`` and statistics in fp32."""
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (sh.NORM,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (sh.NORM,)), name=name)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV matmul through ``jax.nn.dot_product_attention``."""

    cfg: ModelConfig
    deterministic: bool = True
    is_causal: bool = False
    out_stddev: float = 0.02

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, mask_Bx1xTxS: Optional[jax.Array],
                 rows_BxQ: Optional[jax.Array] = None, x_BxQxD: Optional[jax.Array] = None) -> jax.Array:
        """With ``rows_BxQ`` only those query positions are computed (their inputs ``x_BxQxD``), against
        keys and values from every position; the result is [B, Q, D], equal to those rows of the full one.
        Without it ``x_BxQxD`` is not read."""
        cfg = self.cfg
        H, K = cfg.num_attention_heads, cfg.head_dim
        qkv = Dense((3, H, K), (sh.EMBED, None, sh.HEADS, sh.KV), cfg.dtype, cfg.param_dtype,
                    cfg.initializer_range, name="qkv")
        if rows_BxQ is None:
            qkv_BxTx3xHxK = qkv(x_BxTxD)
            q, k, v = qkv_BxTx3xHxK[:, :, 0], qkv_BxTx3xHxK[:, :, 1], qkv_BxTx3xHxK[:, :, 2]
        else:
            q = qkv(x_BxQxD, select=slice(0, 1))[:, :, 0]
            kv_BxTx2xHxK = qkv(x_BxTxD, select=slice(1, 3))
            k, v = kv_BxTx2xHxK[:, :, 0], kv_BxTx2xHxK[:, :, 1]
        T = x_BxTxD.shape[1]
        causal = self.is_causal and mask_Bx1xTxS is None
        if causal and rows_BxQ is not None:  # the query at position p sees keys 0..p
            mask_Bx1xTxS = jnp.arange(T)[None, None, None, :] <= rows_BxQ[:, None, :, None]
            causal = False
        rate = cfg.attention_probs_dropout_prob
        if self.deterministic or rate == 0.0:
            ctx_BxTxHxK = jax.nn.dot_product_attention(q, k, v, mask=mask_Bx1xTxS, is_causal=causal)
        else:
            ctx_BxTxHxK = self._attend_with_dropout(q, k, v, mask_Bx1xTxS, causal, rate, rows_BxQ)
        return Dense((cfg.hidden_size,), (sh.HEADS, sh.KV, sh.EMBED), cfg.dtype, cfg.param_dtype,
                     self.out_stddev, in_ndim=2, name="out")(ctx_BxTxHxK)

    def _attend_with_dropout(self, q, k, v, mask, causal, rate, rows):
        # jax.nn.dot_product_attention has no dropout on the probabilities: spell it out for training.
        T = k.shape[1]
        logits_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q, k, preferred_element_type=jnp.float32)
        logits_BxHxTxS = logits_BxHxTxS / jnp.sqrt(jnp.float32(q.shape[-1]))
        if causal:
            mask = jnp.tril(jnp.ones((T, T), bool))[None, None]
        if mask is not None:
            logits_BxHxTxS = jnp.where(mask, logits_BxHxTxS, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(logits_BxHxTxS, axis=-1).astype(q.dtype)
        probs = Dropout(rate)(probs, deterministic=False, rows=rows, row_axis=2, length=T)
        return jnp.einsum("bhts,bshk->bthk", probs, v)


@jax.custom_vjp
def _own_cotangent(x: jax.Array) -> jax.Array:
    return x


def _own_cotangent_fwd(x):
    return x, None


def _own_cotangent_bwd(_, g):
    return (_materialised(lambda a: a, g),)  # later fusions read it instead of recomputing it


_own_cotangent.defvjp(_own_cotangent_fwd, _own_cotangent_bwd)


def own_cotangent(x: jax.Array) -> jax.Array:
    """The identity, whose cotangent in the backward pass is materialised as an array of its own.

    In a pre-LN stack the gradient of the residual stream is a long chain of cheap elementwise adds
    (dropout masks included). XLA's CPU backend fuses that whole chain into every later consumer and
    recomputes it there: four [512, 2048] weight-gradient operands of the GPT benchmark took 55-90 ms each.
    Materialising it once per layer made the GPT step ~8% faster. Applied on CPU only, where it was measured.
    """
    if jax.default_backend() != "cpu":
        return x
    return _own_cotangent(x)


class Mlp(nn.Module):
    cfg: ModelConfig
    out_stddev: float = 0.02

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        cfg = self.cfg
        h_BxTxF = Dense((cfg.intermediate_size,), (sh.EMBED, sh.MLP), cfg.dtype, cfg.param_dtype,
                        cfg.initializer_range, name="wi")(x_BxTxD)
        h_BxTxF = nn.with_logical_constraint(ACTIVATIONS[cfg.hidden_act](h_BxTxF),
                                             (sh.BATCH, sh.LENGTH, sh.MLP))
        return Dense((cfg.hidden_size,), (sh.MLP, sh.EMBED), cfg.dtype, cfg.param_dtype, self.out_stddev,
                     name="wo")(h_BxTxF)


class Block(nn.Module):
    """One transformer layer: post-LN (BERT) or pre-LN (GPT-2). Returns (x, x or None) to be scannable."""

    cfg: ModelConfig
    deterministic: bool = True
    pre_ln: bool = False
    is_causal: bool = False
    emit_hidden: bool = False

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, mask: Optional[jax.Array], rows_BxQ: Optional[jax.Array] = None):
        """With ``rows_BxQ`` the layer's output only at those positions, [B, Q, D] (its keys and values
        still come from every position): the same values, dropout included, as those rows of the full output."""
        cfg = self.cfg
        # GPT-2 scales the residual projections' init by 1/sqrt(2 L).
        out_std = cfg.initializer_range / (2 * cfg.num_hidden_layers) ** 0.5 if self.pre_ln \
            else cfg.initializer_range
        attn = SelfAttention(cfg, self.deterministic, self.is_causal, out_std, name="attention")
        mlp = Mlp(cfg, out_std, name="mlp")
        drop = Dropout(cfg.hidden_dropout_prob, deterministic=self.deterministic)
        ln_attn, ln_mlp = layer_norm(cfg, "ln_attn"), layer_norm(cfg, "ln_mlp")
        T = x_BxTxD.shape[1]

        # R rows: all T, or with rows_BxQ the Q positions the layer goes on at.
        def at_rows(y_BxTxD):
            return y_BxTxD if rows_BxQ is None else jnp.take_along_axis(y_BxTxD, rows_BxQ[:, :, None], axis=1)

        def drop_rows(y_BxRxD):
            return drop(y_BxRxD, rows=rows_BxQ, row_axis=1, length=T)

        if self.pre_ln:
            h_BxTxD = ln_attn(x_BxTxD)
            x_BxRxD = at_rows(x_BxTxD) + drop_rows(attn(h_BxTxD, mask, rows_BxQ, at_rows(h_BxTxD)))
            x_BxRxD = x_BxRxD + drop_rows(mlp(ln_mlp(x_BxRxD)))
        else:
            x_BxRxD = at_rows(x_BxTxD)
            x_BxRxD = ln_attn(x_BxRxD + drop_rows(attn(x_BxTxD, mask, rows_BxQ, x_BxRxD)))
            x_BxRxD = ln_mlp(x_BxRxD + drop_rows(mlp(x_BxRxD)))
        if self.pre_ln and not self.deterministic:
            x_BxRxD = own_cotangent(x_BxRxD)
        x_BxRxD = constrain_hidden(x_BxRxD)
        return x_BxRxD, (x_BxRxD if self.emit_hidden else None)


class Stack(nn.Module):
    """``num_hidden_layers`` blocks, optionally rematerialised and/or scanned.

    Unscanned params live under ``layer_0 ... layer_{L-1}``; scanned ones under ``layers`` with a leading
    stacked axis (logical name ``layers``).
    """

    cfg: ModelConfig
    deterministic: bool = True
    pre_ln: bool = False
    is_causal: bool = False
    output_hidden_states: bool = False

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, mask: Optional[jax.Array], last_rows_BxQ: Optional[jax.Array] = None):
        """Final hidden states [B, T, D] and, with ``output_hidden_states``, every layer's.

        With ``last_rows_BxQ`` the output is [B, Q, D], the final hidden states at those positions only:
        a pretraining loss that reads a few positions (MLM, [CLS]) skips the rest of the last layer.
        """
        cfg = self.cfg
        block_cls = Block
        if cfg.remat != "none":
            block_cls = nn.remat(Block, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)
        kw = dict(cfg=cfg, deterministic=self.deterministic, pre_ln=self.pre_ln, is_causal=self.is_causal,
                  emit_hidden=self.output_hidden_states)
        hidden = [x_BxTxD]
        if cfg.scan_layers:
            scanned = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                              in_axes=(nn.broadcast,), length=cfg.num_hidden_layers,
                              metadata_params={nn.PARTITION_NAME: sh.LAYERS})
            x_BxTxD, ys_LxBxTxD = scanned(**kw, name="layers")(x_BxTxD, mask)
            if self.output_hidden_states:
                hidden += [ys_LxBxTxD[i] for i in range(cfg.num_hidden_layers)]
            if last_rows_BxQ is not None:  # a scan runs every layer alike: take the rows afterwards
                x_BxTxD = jnp.take_along_axis(x_BxTxD, last_rows_BxQ[:, :, None], axis=1)
        else:
            for i in range(cfg.num_hidden_layers):
                rows = last_rows_BxQ if i == cfg.num_hidden_layers - 1 else None
                x_BxTxD, _ = block_cls(**kw, name=f"layer_{i}")(x_BxTxD, mask, rows)
                hidden.append(x_BxTxD)
        return x_BxTxD, (tuple(hidden) if self.output_hidden_states else None)
