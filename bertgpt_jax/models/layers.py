"""Building blocks shared by BERT and GPT-2: dense, embedding, LayerNorm, dropout, attention, MLP, block, stack.

BERT and GPT-2 differ only by config: post-LN vs pre-LN blocks, bidirectional vs causal masks.
Every parameter carries logical axis names (``bertgpt_jax.sharding``); activations are constrained to
(batch, length, embed) at block boundaries. What runs differently on one backend lives in
``bertgpt_jax.models.kernels``; the layers here take it as the ``dot_general`` and ``attention``
implementation their config names.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bertgpt_jax import sharding as sh
from bertgpt_jax.configs import ModelConfig
from bertgpt_jax.models import kernels, masks

_SQRT_HALF = 0.7071067811865476  # a Python float: weakly typed, so bf16 stays bf16

# Collection that SelfAttention writes its attention probabilities [B, H, T, S] into when it is mutable:
# ``model.apply(..., mutable=[ATTENTION_WEIGHTS])``.
ATTENTION_WEIGHTS = "attention_weights"
# Collection that holds each attention layer's keys and values for incremental decoding (``cached_key``
# [B, H, K, S], ``cached_value`` [B, H, S, K] and ``cache_index``): ``model.apply(..., mutable=[CACHE])``.
CACHE = "cache"


def gelu_erf(x: jax.Array) -> jax.Array:
    """Exact GELU, ``x/2 * (1 + erf(x/sqrt 2))``: HF's ``"gelu"`` and torch's default, which parity with HF
    BERT checkpoints needs (the original TensorFlow BERT used the tanh approximation, ``gelu_new`` here).

    Written with ``erf``, which XLA's CPU backend evaluates more cheaply than the ``erfc`` that
    ``jax.nn.gelu(approximate=False)`` uses.
    """
    return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": gelu_erf,  # exact erf GELU (HF "gelu")
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),  # tanh approximation (GPT-2, original TF BERT)
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "silu": jax.nn.silu,
}

REMAT_POLICIES = {
    "full": None,  # save nothing inside a layer; recompute it all in the backward pass
    "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,  # keep weight matmul outputs
}


# ---- dropout -----------------------------------------------------------------------------------


def _mix32(x: jax.Array) -> jax.Array:
    """A bijective 32-bit integer hash with full avalanche (two xorshift-multiply rounds)."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def hashed_bits(key: jax.Array, index: jax.Array) -> jax.Array:
    """uint32 random bits for each element, a hash of its ``index`` under a seed drawn from ``key``.

    The seed comes from ``key`` through jax.random (two words); the elements are then hashed from their
    index, which XLA fuses into the consumer: far cheaper than threefry bits per element, and like them
    the same on every mesh (each shard hashes its own indices).
    """
    seed = jax.random.bits(key, (2,), jnp.uint32)
    return _mix32(_mix32(index.astype(jnp.uint32) ^ seed[0]) + seed[1])


def flat_index(shape: Sequence[int]) -> jax.Array:
    """Each element's row-major position in an array of ``shape``, uint32."""
    return jax.lax.iota(jnp.uint32, int(np.prod(shape))).reshape(shape)


class Dropout(nn.Module):
    """Inverted dropout (drop with probability ``rate``, scale the rest by 1/(1-rate)).

    Same semantics as ``flax.linen.Dropout``; the mask is :func:`hashed_bits` of each element's index
    under a key from the ``dropout`` rng collection, so it still varies per module, layer and step.
    ``index`` gives the elements' positions in a larger array the mask stands for (default: ``x`` itself),
    so a layer computed at a few positions drops what the full layer drops there.
    """

    rate: float
    deterministic: Optional[bool] = None

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: Optional[bool] = None,
                 index: Optional[jax.Array] = None) -> jax.Array:
        deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
        if deterministic or self.rate == 0.0:
            return x
        if self.rate >= 1.0:
            return jnp.zeros_like(x)
        key = self.make_rng("dropout")
        if index is None:
            if x.size >= 2 ** 32:  # indices would wrap around
                bits = jax.random.bits(key, x.shape, jnp.uint32)
            else:
                bits = hashed_bits(key, flat_index(x.shape))
        else:
            bits = hashed_bits(key, index)
        keep = bits >= jnp.uint32(min(round(self.rate * 2.0 ** 32), 2 ** 32 - 1))
        return jnp.where(keep, x / jnp.asarray(1.0 - self.rate, x.dtype), jnp.zeros((), x.dtype))


# ---- dense, embedding, LayerNorm ----------------------------------------------------------------


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
    dot_general: Callable = jax.lax.dot_general

    @nn.compact
    def weights(self, in_shape: Sequence[int]) -> tuple[jax.Array, jax.Array]:
        """The kernel [*in_shape, *out_shape] and bias [*out_shape], as stored."""
        out_shape = tuple(self.out_shape)
        kernel = self.param("kernel", nn.with_logical_partitioning(
            nn.initializers.normal(self.stddev), tuple(self.kernel_axes)), tuple(in_shape) + out_shape,
            self.param_dtype)
        bias = self.param("bias", nn.with_logical_partitioning(
            nn.initializers.zeros, tuple(self.kernel_axes[self.in_ndim:])), out_shape, self.param_dtype)
        return kernel, bias

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = self.weights(x.shape[x.ndim - self.in_ndim:])
        return self.apply_weights(x, kernel, bias)

    def apply_weights(self, x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
        """``x . kernel + bias`` in this layer's dtypes (``kernel``/``bias`` may be slices of its own)."""
        out_dtype = self.out_dtype or self.dtype
        x_axes = tuple(range(x.ndim - self.in_ndim, x.ndim))
        y = self.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                             ((x_axes, tuple(range(self.in_ndim))), ((), ())), preferred_element_type=out_dtype)
        return y + bias.astype(out_dtype)


def dense(cfg: ModelConfig, out_shape: Sequence[int], kernel_axes: Sequence[Optional[str]], *,
          stddev: Optional[float] = None, in_ndim: int = 1, out_dtype=None, name: Optional[str] = None) -> Dense:
    """A :class:`Dense` in the model's dtypes and initialisation, with the backend's ``dot_general``."""
    return Dense(tuple(out_shape), tuple(kernel_axes), cfg.dtype, cfg.param_dtype,
                 cfg.initializer_range if stddev is None else stddev, in_ndim, out_dtype,
                 kernels.dense_dot_general(cfg.kernels), name=name)


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
        return jnp.take(self.table(), ids, axis=0).astype(self.dtype)

    def table(self) -> jax.Array:
        """The table [V, D] with its feature axis whole (see :func:`whole_features`), as stored."""
        return whole_features(self.embedding, self.axes[0])

    def attend(self, x_xD: jax.Array) -> jax.Array:
        """Logits against every row of the table, in fp32."""
        return jnp.einsum("...d,vd->...v", x_xD, self.table().astype(x_xD.dtype),
                          preferred_element_type=jnp.float32)


def layer_norm(cfg: ModelConfig, name: Optional[str]) -> nn.LayerNorm:
    """LayerNorm with params ``scale``/``bias`` and statistics in fp32."""
    return nn.LayerNorm(
        epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype, use_fast_variance=False,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, (sh.NORM,)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, (sh.NORM,)), name=name)


# ---- attention ---------------------------------------------------------------------------------


def attention_probs(q_BxTxHxK: jax.Array, k_BxSxHxK: jax.Array, mask_Bx1xTxS: Optional[jax.Array],
                    is_causal: bool) -> jax.Array:
    """``softmax(Q K^T / sqrt(d))`` over keys, masked (True = attend), fp32 [B, H, T, S]."""
    T, S = q_BxTxHxK.shape[1], k_BxSxHxK.shape[1]
    logits_BxHxTxS = jnp.einsum("bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK, preferred_element_type=jnp.float32)
    if is_causal:
        causal = jnp.tril(jnp.ones((T, S), bool))[None, None]
        mask_Bx1xTxS = causal if mask_Bx1xTxS is None else jnp.logical_and(mask_Bx1xTxS, causal)
    return softmax_over_keys(logits_BxHxTxS, q_BxTxHxK.shape[-1], mask_Bx1xTxS)


def softmax_over_keys(logits_BxHxTxS: jax.Array, head_dim: int, mask_Bx1xTxS: Optional[jax.Array]) -> jax.Array:
    """``softmax(logits / sqrt(d))`` over the keys, masked positions (False) at fp32's lowest value."""
    logits_BxHxTxS = logits_BxHxTxS / jnp.sqrt(jnp.float32(head_dim))
    if mask_Bx1xTxS is not None:
        logits_BxHxTxS = jnp.where(mask_Bx1xTxS, logits_BxHxTxS, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits_BxHxTxS, axis=-1)


def weighted_values(probs_BxHxTxS: jax.Array, v_BxSxHxK: jax.Array) -> jax.Array:
    return jnp.einsum("bhts,bshk->bthk", probs_BxHxTxS.astype(v_BxSxHxK.dtype), v_BxSxHxK)


def cached_attention(q_BxTxHxK: jax.Array, k_BxHxKxS: jax.Array, v_BxHxSxK: jax.Array,
                     mask_Bx1xTxS: jax.Array) -> jax.Array:
    """``softmax(Q K^T / sqrt(d)) V`` [B, T, H, K] against a decoding cache stored the way the two products read
    it: keys [B, H, K, S] and values [B, H, S, K], so each is a batched matmul over the cache as it lies,
    never a transposed copy of the whole cache per step (only this call's T queries are reordered)."""
    logits_BxHxTxS = jnp.einsum("bthk,bhks->bhts", q_BxTxHxK, k_BxHxKxS, preferred_element_type=jnp.float32)
    probs_BxHxTxS = softmax_over_keys(logits_BxHxTxS, q_BxTxHxK.shape[-1], mask_Bx1xTxS)
    return jnp.einsum("bhts,bhsk->bthk", probs_BxHxTxS.astype(v_BxHxSxK.dtype), v_BxHxSxK)


class SelfAttention(nn.Module):
    """Multi-head self-attention: one fused QKV projection, ``softmax(QK^T / sqrt(d)) V``, an output projection.

    Without dropout on the probabilities, and unless they are asked for, attention runs through
    ``jax.nn.dot_product_attention`` (XLA's fused path, cuDNN flash attention with ``kernels="cudnn"``).
    Dropout on the probabilities (training with ``attention_probs_dropout_prob > 0``) and returning them
    (the ``attention_weights`` collection made mutable) take the explicit [B, H, T, S] path.
    """

    cfg: ModelConfig
    deterministic: bool = True
    is_causal: bool = False
    out_stddev: float = 0.02

    def setup(self):
        cfg = self.cfg
        self.qkv = dense(cfg, (3, cfg.num_attention_heads, cfg.head_dim), (sh.EMBED, None, sh.HEADS, sh.KV))
        self.out = dense(cfg, (cfg.hidden_size,), (sh.HEADS, sh.KV, sh.EMBED), stddev=self.out_stddev, in_ndim=2)
        self.dropout = Dropout(cfg.attention_probs_dropout_prob)

    def __call__(self, x_BxTxD: jax.Array, mask_Bx1xTxS: Optional[jax.Array]) -> jax.Array:
        qkv_BxTx3xHxK = self.qkv(x_BxTxD)
        q, k, v = qkv_BxTx3xHxK[:, :, 0], qkv_BxTx3xHxK[:, :, 1], qkv_BxTx3xHxK[:, :, 2]
        if self.is_mutable_collection(CACHE) and not self.is_initializing():
            k_BxHxKxS, v_BxHxSxK, mask_Bx1xTxS = self.extend_cache(k, v, mask_Bx1xTxS)
            return self.out(cached_attention(q, k_BxHxKxS, v_BxHxSxK, mask_Bx1xTxS))
        return self.out(self.attend(q, k, v, mask_Bx1xTxS))

    @nn.compact
    def extend_cache(self, k_BxTxHxK, v_BxTxHxK, mask_Bx1xTxS):
        """Incremental decoding: writes this call's keys and values at ``cache_index`` and returns the whole
        cache, keys [B, H, K, S] and values [B, H, S, K] (see :func:`cached_attention`), with the mask for
        it, query ``t`` seeing slots ``<= cache_index + t`` (and the caller's mask, over all S slots). A first
        call on a cache that does not exist yet only creates it, shaped as its input: run it under
        ``jax.eval_shape`` with the cache length to get the cache."""
        k_BxHxKxT = jnp.transpose(k_BxTxHxK, (0, 2, 3, 1))
        v_BxHxTxK = jnp.transpose(v_BxTxHxK, (0, 2, 1, 3))
        exists = self.has_variable(CACHE, "cached_key")
        key = self.variable(CACHE, "cached_key", jnp.zeros, k_BxHxKxT.shape, k_BxHxKxT.dtype)
        value = self.variable(CACHE, "cached_value", jnp.zeros, v_BxHxTxK.shape, v_BxHxTxK.dtype)
        index = self.variable(CACHE, "cache_index", lambda: jnp.zeros((), jnp.int32))
        T, S = k_BxTxHxK.shape[1], key.value.shape[-1]
        if not exists:
            return k_BxHxKxT, v_BxHxTxK, masks.combine(mask_Bx1xTxS, jnp.tril(jnp.ones((T, T), bool))[None, None])
        i = index.value
        key.value = jax.lax.dynamic_update_slice(key.value, k_BxHxKxT.astype(key.value.dtype), (0, 0, 0, i))
        value.value = jax.lax.dynamic_update_slice(value.value, v_BxHxTxK.astype(value.value.dtype), (0, 0, i, 0))
        index.value = i + T
        causal_TxS = jnp.arange(S)[None, :] <= (i + jnp.arange(T))[:, None]
        return key.value, value.value, masks.combine(mask_Bx1xTxS, causal_TxS[None, None])

    def attend(self, q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_Bx1xTxS, dropout_index=None,
               causal: Optional[bool] = None) -> jax.Array:
        """The heads' context vectors [B, T, H, K]; ``dropout_index`` as :class:`Dropout`'s ``index``;
        ``causal`` overrides the layer's ``is_causal`` (a decoding step's mask carries causality)."""
        causal = self.is_causal if causal is None else causal
        dropping = not self.deterministic and self.cfg.attention_probs_dropout_prob > 0.0
        returning = self.is_mutable_collection(ATTENTION_WEIGHTS) and not self.is_initializing()
        if not dropping and not returning:
            return jax.nn.dot_product_attention(
                q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask=mask_Bx1xTxS, is_causal=causal,
                implementation=kernels.attention_implementation(self.cfg.kernels))
        probs_BxHxTxS = attention_probs(q_BxTxHxK, k_BxSxHxK, mask_Bx1xTxS, causal)
        if returning:
            self.sow(ATTENTION_WEIGHTS, "probs", probs_BxHxTxS)
        probs_BxHxTxS = self.dropout(probs_BxHxTxS.astype(q_BxTxHxK.dtype), deterministic=self.deterministic,
                                     index=dropout_index)
        return weighted_values(probs_BxHxTxS, v_BxSxHxK)


class Mlp(nn.Module):
    cfg: ModelConfig
    out_stddev: float = 0.02

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        cfg = self.cfg
        h_BxTxF = dense(cfg, (cfg.intermediate_size,), (sh.EMBED, sh.MLP), name="wi")(x_BxTxD)
        h_BxTxF = nn.with_logical_constraint(ACTIVATIONS[cfg.hidden_act](h_BxTxF), (sh.BATCH, sh.LENGTH, sh.MLP))
        return dense(cfg, (cfg.hidden_size,), (sh.MLP, sh.EMBED), stddev=self.out_stddev, name="wo")(h_BxTxF)


def residual_init_stddev(cfg: ModelConfig, pre_ln: bool) -> float:
    """GPT-2 scales the residual projections' init by 1/sqrt(2 L); BERT does not."""
    return cfg.initializer_range / (2 * cfg.num_hidden_layers) ** 0.5 if pre_ln else cfg.initializer_range


class Block(nn.Module):
    """One transformer layer: post-LN (BERT) or pre-LN (GPT-2). Returns (x, x or None) to be scannable.

    post-LN: ``x = LN(x + Drop(Attn(x)))``, ``x = LN(x + Drop(MLP(x)))``;
    pre-LN:  ``x = x + Drop(Attn(LN(x)))``, ``x = x + Drop(MLP(LN(x)))``.
    """

    cfg: ModelConfig
    deterministic: bool = True
    pre_ln: bool = False
    is_causal: bool = False
    emit_hidden: bool = False

    def setup(self):
        cfg, out_std = self.cfg, residual_init_stddev(self.cfg, self.pre_ln)
        self.attention = SelfAttention(cfg, self.deterministic, self.is_causal, out_std)
        self.mlp = Mlp(cfg, out_std)
        self.dropout = Dropout(cfg.hidden_dropout_prob, deterministic=self.deterministic)
        self.ln_attn, self.ln_mlp = layer_norm(self.cfg, None), layer_norm(self.cfg, None)

    def __call__(self, x_BxTxD: jax.Array, mask: Optional[jax.Array]):
        if self.pre_ln:
            x_BxTxD = x_BxTxD + self.dropout(self.attention(self.ln_attn(x_BxTxD), mask))
            x_BxTxD = x_BxTxD + self.dropout(self.mlp(self.ln_mlp(x_BxTxD)))
        else:
            x_BxTxD = self.ln_attn(x_BxTxD + self.dropout(self.attention(x_BxTxD, mask)))
            x_BxTxD = self.ln_mlp(x_BxTxD + self.dropout(self.mlp(x_BxTxD)))
        x_BxTxD = constrain_hidden(x_BxTxD)
        return x_BxTxD, (x_BxTxD if self.emit_hidden else None)


class Stack(nn.Module):
    """``num_hidden_layers`` layers, optionally rematerialised and/or scanned.

    Unscanned params live under ``layer_0 ... layer_{L-1}``; scanned ones under ``layers`` with a leading
    stacked axis (logical name ``layers``). ``last_layer`` (unscanned stacks only) is the module class of the
    final layer, called with ``last_layer_args`` after ``(x, mask)``; it must have a :class:`Block`'s
    parameters (BERT pretraining computes that layer only where its heads read it).
    """

    cfg: ModelConfig
    deterministic: bool = True
    pre_ln: bool = False
    is_causal: bool = False
    output_hidden_states: bool = False
    last_layer: Optional[type[nn.Module]] = None

    @nn.compact
    def __call__(self, x_BxTxD: jax.Array, mask: Optional[jax.Array], last_layer_args: tuple = ()):
        """Final hidden states and, with ``output_hidden_states``, every layer's (embeddings first)."""
        cfg = self.cfg
        kw = dict(cfg=cfg, deterministic=self.deterministic, pre_ln=self.pre_ln, is_causal=self.is_causal,
                  emit_hidden=self.output_hidden_states)

        def layer_class(cls):
            cls = kernels.layer_class(cfg.kernels, cls, self.pre_ln, self.deterministic)
            if cfg.remat == "none":
                return cls
            return nn.remat(cls, policy=REMAT_POLICIES[cfg.remat], prevent_cse=not cfg.scan_layers)

        hidden = [x_BxTxD]
        if cfg.scan_layers:
            if self.last_layer is not None:
                raise ValueError("a scanned stack runs every layer alike; last_layer needs scan_layers=False")
            scanned = nn.scan(layer_class(Block), variable_axes={"params": 0},
                              split_rngs={"params": True, "dropout": True}, in_axes=(nn.broadcast,),
                              length=cfg.num_hidden_layers, metadata_params={nn.PARTITION_NAME: sh.LAYERS})
            x_BxTxD, ys_LxBxTxD = scanned(**kw, name="layers")(x_BxTxD, mask)
            if self.output_hidden_states:
                hidden += [ys_LxBxTxD[i] for i in range(cfg.num_hidden_layers)]
        else:
            for i in range(cfg.num_hidden_layers):
                last = i == cfg.num_hidden_layers - 1 and self.last_layer is not None
                cls = layer_class(self.last_layer if last else Block)
                x_BxTxD, _ = cls(**kw, name=f"layer_{i}")(x_BxTxD, mask, *(last_layer_args if last else ()))
                hidden.append(x_BxTxD)
        return x_BxTxD, (tuple(hidden) if self.output_hidden_states else None)
