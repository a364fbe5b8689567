"""Backend-specific implementations, chosen once per model from ``ModelConfig.kernels``.

The shared layers compute ``x . W + b``, ``softmax(QK^T / sqrt(d)) V`` and residual + LayerNorm and nothing
else; this module holds what runs instead on one backend, and why. ``resolve`` picks the implementation
for the platform a model is compiled for (``models.from_config`` calls it when the model is built, with
the platform of the devices the run uses, or one named explicitly for ahead-of-time compilation):

- ``xla``: XLA's own gradients and fused attention. What TPUs run, and what every backend can run.
- ``cpu``: XLA's CPU backend, where two custom gradients help (measured by
  ``bench/bench_train_step.py --kernels=xla`` against the default):

  * :func:`dot_general`, used by every dense layer: the weight gradient contracts both operands over the
    token axis, their major axis. XLA's CPU matmul (YNNPACK) takes only contractions over the left
    operand's minor axis, so XLA hands that form to Eigen at a fraction of the plain matmul rate, after
    copying the larger operand transposed. Here the smaller operand is transposed into an array of its
    own and the gradient is one plain ``[in, N] x [N, out]`` matmul.
  * :func:`materialise_cotangent`, at the output of every pre-LN (GPT-2) layer in training: the
    gradient of the residual stream is a long chain of cheap elementwise adds that XLA's CPU backend
    fuses into each later consumer and recomputes there; materialised once per layer, it is read
    instead.

- ``cudnn``: GPUs with 16-bit compute: ``jax.nn.dot_product_attention`` runs cuDNN's flash attention.
- ``cpu_decoding`` (inference only; ``inference.generation`` builds its model with it on CPU): incremental
  decoding, where each step multiplies a few rows by every weight. :func:`weight_major_dot_general` reads
  each dense kernel transposed, [out, in], which XLA's CPU matmul streams at close to the memory bandwidth
  for few rows, where ``x . W`` with W [in, out] reaches about half of it. The transposed kernels do not
  depend on the step, so XLA computes them once, before the decoding loop.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bertgpt_jax.configs import INFERENCE_KERNELS, KERNELS


def resolve(kernels: str, platform: str, dtype: str) -> str:
    """The implementation ``auto`` stands for on ``platform`` (``cpu``, ``gpu``, ``tpu``, ...)."""
    if kernels not in KERNELS + INFERENCE_KERNELS:
        raise ValueError(f"kernels {kernels!r} is not one of {KERNELS + INFERENCE_KERNELS}")
    if kernels != "auto":
        return kernels
    if platform == "cpu":
        return "cpu"
    if platform in ("gpu", "cuda") and dtype in ("bfloat16", "float16"):
        return "cudnn"
    return "xla"


def dense_dot_general(kernels: str) -> Callable:
    """The ``dot_general`` dense layers use."""
    if kernels == "cpu_decoding":
        return weight_major_dot_general
    return dot_general if kernels == "cpu" else jax.lax.dot_general


def attention_implementation(kernels: str) -> str | None:
    """``implementation`` for ``jax.nn.dot_product_attention``."""
    return "cudnn" if kernels == "cudnn" else None


def layer_class(kernels: str, block_cls: type[nn.Module], pre_ln: bool, deterministic: bool) -> type[nn.Module]:
    """The transformer layer a stack repeats: ``block_cls``, or on CPU, for pre-LN layers in training,
    the same layer with its output's cotangent materialised (same parameters, same values)."""
    if kernels != "cpu" or not pre_ln or deterministic:
        return block_cls
    return _materialised_output_class(block_cls)


@functools.lru_cache(maxsize=None)
def _materialised_output_class(block_cls: type[nn.Module]) -> type[nn.Module]:
    class Layer(block_cls):
        def __call__(self, *args, **kwargs):
            x, hidden = super().__call__(*args, **kwargs)
            x = materialise_cotangent(x)
            return x, (x if hidden is not None else None)

    Layer.__name__ = Layer.__qualname__ = block_cls.__name__  # the same auto-generated names
    return Layer


# ---- CPU ---------------------------------------------------------------------------------------


def materialised(fn: Callable[[jax.Array], jax.Array], a: jax.Array) -> jax.Array:
    """``fn(a)`` as an array of its own, row-major, that XLA can neither fuse into its readers nor lay out as a view.

    It is computed inside a conditional whose predicate is only known at run time (both branches give the
    same value; a NaN takes the other one): a conditional's result is always materialised. On CPU
    ``optimization_barrier`` cannot do this: it is removed before fusion.
    """
    first = a.reshape(-1)[0]
    return jax.lax.cond(first == first, fn, lambda a: fn(a) * 1, a)


def transposed_copy(a_NxM: jax.Array) -> jax.Array:
    """``a.T`` as an array of its own, laid out row-major, rather than a transposed view.

    XLA may otherwise assign the transpose a column-major layout (a free bitcast) and hand the matmul that
    reads it an operand contracted over its major axis, which the CPU backend's fast matmul does not take.
    """
    return materialised(lambda a: a.T, a_NxM)


def _plain(x, kernel, in_ndim, out_dtype):
    x_axes = tuple(range(x.ndim - in_ndim, x.ndim))
    return jax.lax.dot_general(x, kernel, ((x_axes, tuple(range(in_ndim))), ((), ())),
                               preferred_element_type=out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _dense(x, kernel, in_ndim, out_dtype):
    return _plain(x, kernel, in_ndim, out_dtype)


def _dense_fwd(x, kernel, in_ndim, out_dtype):
    return _plain(x, kernel, in_ndim, out_dtype), (x, kernel)


def _dense_bwd(in_ndim, out_dtype, res, g):
    x, kernel = res
    n_in = int(np.prod(kernel.shape[:in_ndim]))
    kernel_IxO = kernel.reshape(n_in, -1)  # 2-D, so XLA reads it as it is instead of copying it transposed
    x_NxI = x.reshape(-1, n_in)
    g_NxO = g.astype(kernel.dtype).reshape(x_NxI.shape[0], -1)
    dx = jnp.matmul(g_NxO, kernel_IxO.T, preferred_element_type=jnp.float32).astype(x.dtype).reshape(x.shape)
    if x_NxI.shape[1] <= g_NxO.shape[1]:
        dw_IxO = jnp.matmul(transposed_copy(x_NxI), g_NxO, preferred_element_type=jnp.float32)
    else:
        dw_IxO = jnp.matmul(transposed_copy(g_NxO), x_NxI, preferred_element_type=jnp.float32).T
    return dx, dw_IxO.astype(kernel.dtype).reshape(kernel.shape)


_dense.defvjp(_dense_fwd, _dense_bwd)


def dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                preferred_element_type=None) -> jax.Array:
    """``jax.lax.dot_general`` whose gradient for a dense layer (``x``'s trailing axes against the kernel's
    leading axes, no batch axes) is computed as row-major matmuls; other contractions are passed through."""
    n = _dense_axes(lhs, dimension_numbers, precision)
    if n is None:
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)
    out_dtype = preferred_element_type if preferred_element_type is not None else jnp.result_type(lhs, rhs)
    return _dense(lhs, rhs, n, out_dtype)


def _dense_axes(lhs: jax.Array, dimension_numbers, precision) -> int | None:
    """How many kernel axes a dense layer's contraction reads (``x``'s trailing axes against the kernel's
    leading axes, no batch axes, default precision); None for any other contraction."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    n = len(rhs_contract)
    dense = (not lhs_batch and not rhs_batch and precision is None
             and tuple(rhs_contract) == tuple(range(n))
             and tuple(lhs_contract) == tuple(range(lhs.ndim - n, lhs.ndim)))
    return n if dense else None


def weight_major_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers, precision=None,
                             preferred_element_type=None) -> jax.Array:
    """A dense layer's ``x . W`` as ``x . (W^T)^T`` with ``W^T`` [out, in] an array of its own
    (:func:`transposed_copy`), so the matmul contracts both operands over their minor axis; other
    contractions are passed through. For inference (no custom gradient)."""
    n = _dense_axes(lhs, dimension_numbers, precision)
    if n is None:
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type)
    n_in = int(np.prod(rhs.shape[:n]))
    kernel_OxI = transposed_copy(rhs.reshape(n_in, -1))
    y_NxO = jnp.einsum("ni,oi->no", lhs.reshape(-1, n_in), kernel_OxI, preferred_element_type=preferred_element_type)
    return y_NxO.reshape(lhs.shape[:lhs.ndim - n] + rhs.shape[n:])


@jax.custom_vjp
def materialise_cotangent(x: jax.Array) -> jax.Array:
    """The identity, whose cotangent in the backward pass is materialised as an array of its own."""
    return x


def _materialise_cotangent_fwd(x):
    return x, None


def _materialise_cotangent_bwd(_, g):
    return (materialised(lambda a: a, g),)  # later fusions read it instead of recomputing it


materialise_cotangent.defvjp(_materialise_cotangent_fwd, _materialise_cotangent_bwd)
