"""Model behaviour: shapes, heads at masked positions only, causality, padding invariance, dtypes, layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertgpt_jax import configs, models
from tests.model_params import random_params

TINY = dict(vocab_size=300, hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2,
            max_position_embeddings=64)


def tiny(name, **kw):
    return configs.get(name).replace(**{**TINY, **kw})


def _init(cfg, B=2, T=12, P=3):
    model = models.from_config(cfg)
    ids = jnp.asarray(np.random.RandomState(0).randint(1, cfg.vocab_size, (B, T)), jnp.int32)
    kw = {"masked_lm_positions": jnp.zeros((B, P), jnp.int32)} if cfg.is_bert else {}
    params = random_params(model, ids, **kw)
    return model, params, ids


def test_bert_output_shapes_and_fp32_logits():
    cfg = tiny("bert-tiny")
    model, params, ids = _init(cfg)
    pos = jnp.array([[1, 2, 5], [0, 3, 11]])
    out = model.apply({"params": params}, ids, attention_mask=jnp.ones_like(ids), token_type_ids=jnp.zeros_like(ids),
                      masked_lm_positions=pos, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 12, 32)
    assert out.pooler_output.shape == (2, 32)
    assert out.mlm_logits.shape == (2, 3, 300) and out.mlm_logits.dtype == jnp.float32
    assert out.nsp_logits.shape == (2, 2) and out.nsp_logits.dtype == jnp.float32
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    np.testing.assert_array_equal(out.hidden_states[-1], out.last_hidden_state)
    # Without positions: no head outputs.
    enc = model.apply({"params": params}, ids)
    assert enc.mlm_logits is None and enc.nsp_logits is None and enc.hidden_states is None


def test_gpt2_output_shapes():
    cfg = tiny("gpt2")
    model, params, ids = _init(cfg)
    out = model.apply({"params": params}, ids, output_hidden_states=True)
    assert out.logits.shape == (2, 12, 300) and out.logits.dtype == jnp.float32
    assert len(out.hidden_states) == cfg.num_hidden_layers + 1
    h_only = model.apply({"params": params}, ids, return_logits=False)
    assert h_only.logits is None
    # The LM head is the token table, tied.
    np.testing.assert_allclose(np.asarray(h_only.last_hidden_state) @ np.asarray(params["wte"]["embedding"]).T,
                               out.logits, atol=1e-5)


def test_gpt2_causality_by_gradient():
    """d logits[t] / d embedding[s] is zero for every s > t."""
    cfg = tiny("gpt2", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model, params, ids = _init(cfg, B=1, T=10)
    T = ids.shape[1]

    def logits_from_emb(x_TxD):
        # Perturb the token embeddings through the wpe table's position rows: an input we can differentiate.
        p = dict(params)
        p["wpe"] = {"embedding": jnp.asarray(params["wpe"]["embedding"]).at[:T].add(x_TxD)}
        return model.apply({"params": p}, ids).logits[0].sum(-1)  # [T]

    jac_TxTxD = jax.jit(jax.jacrev(logits_from_emb))(jnp.zeros((T, cfg.hidden_size)))
    influence_TxT = np.abs(np.asarray(jac_TxTxD)).sum(-1)
    assert np.all(influence_TxT[np.triu_indices(T, 1)] == 0.0)
    assert np.all(influence_TxT[np.tril_indices(T)] > 0.0)  # and the past does matter


def test_gpt2_future_tokens_never_change_past_logits():
    cfg = tiny("gpt2")
    model, params, ids = _init(cfg, B=2, T=12)
    changed = ids.at[:, 7:].set((ids[:, 7:] + 5) % cfg.vocab_size)
    a = model.apply({"params": params}, ids).logits
    b = model.apply({"params": params}, changed).logits
    np.testing.assert_array_equal(a[:, :7], b[:, :7])
    assert np.abs(a[:, 7:] - b[:, 7:]).max() > 1e-3


def test_gpt2_packed_segments_equal_separate_documents():
    cfg = tiny("gpt2")
    model, params, ids = _init(cfg, B=1, T=12)
    seg = jnp.array([[1] * 5 + [2] * 7])
    pos = jnp.array([list(range(5)) + list(range(7))])
    packed = model.apply({"params": params}, ids, segment_ids=seg, position_ids=pos).logits
    first = model.apply({"params": params}, ids[:, :5]).logits
    second = model.apply({"params": params}, ids[:, 5:]).logits
    np.testing.assert_allclose(packed[:, :5], first, atol=1e-5)
    np.testing.assert_allclose(packed[:, 5:], second, atol=1e-5)


def test_bert_padding_invariance():
    """Appending padding changes nothing at the real positions, nor the pooled output or head logits."""
    cfg = tiny("bert-tiny")
    model, params, ids = _init(cfg, B=2, T=9)
    types = jnp.zeros_like(ids).at[:, 5:].set(1)
    pos = jnp.array([[1, 4, 8], [0, 2, 3]])
    short = model.apply({"params": params}, ids, token_type_ids=types, masked_lm_positions=pos)
    pad = 7
    ids_p = jnp.concatenate([ids, jnp.full((2, pad), 77)], axis=1)  # junk ids under the mask
    types_p = jnp.concatenate([types, jnp.ones((2, pad), ids.dtype)], axis=1)
    mask_p = jnp.concatenate([jnp.ones_like(ids), jnp.zeros((2, pad), ids.dtype)], axis=1)
    long = model.apply({"params": params}, ids_p, attention_mask=mask_p, token_type_ids=types_p,
                       masked_lm_positions=pos)
    np.testing.assert_allclose(long.last_hidden_state[:, :9], short.last_hidden_state, atol=1e-5)
    np.testing.assert_allclose(long.pooler_output, short.pooler_output, atol=1e-5)
    np.testing.assert_allclose(long.mlm_logits, short.mlm_logits, atol=1e-5)
    np.testing.assert_allclose(long.nsp_logits, short.nsp_logits, atol=1e-5)


@pytest.mark.parametrize("name", ["bert-tiny", "gpt2"])
def test_scan_and_remat_compute_the_same_function(name):
    from bertgpt_jax import convert

    cfg = tiny(name, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model, params, ids = _init(cfg)
    kw = {"masked_lm_positions": jnp.array([[1, 2], [3, 4]])} if cfg.is_bert else {}

    def loss(m, p):
        out = m.apply({"params": p}, ids, **kw)
        return (out.mlm_logits if cfg.is_bert else out.logits).std()

    ref, ref_g = jax.jit(jax.value_and_grad(lambda p: loss(model, p)))(params)
    stacked = convert.stack_layers(cfg, jax.tree.map(np.asarray, params))
    variants = ([(cfg.replace(remat="dots", scan_layers=True), stacked)] if cfg.is_bert
                else [(cfg.replace(scan_layers=True), stacked), (cfg.replace(remat="full"), params)])
    for variant, p in variants:
        val, g = jax.jit(jax.value_and_grad(lambda p: loss(models.from_config(variant), p)))(p)
        np.testing.assert_allclose(val, ref, rtol=1e-5)
        if variant.scan_layers:
            g = convert.unstack_layers(variant, jax.tree.map(np.asarray, g))
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), g, ref_g)


def test_dropout_uses_the_dropout_stream():
    cfg = tiny("bert-tiny")
    model, params, ids = _init(cfg)

    def run(seed):
        return model.apply({"params": params}, ids, deterministic=False,
                           rngs={"dropout": jax.random.key(seed)}).last_hidden_state

    np.testing.assert_array_equal(run(1), run(1))
    assert np.abs(run(1) - run(2)).max() > 1e-3
    det = model.apply({"params": params}, ids).last_hidden_state
    assert np.abs(run(1) - det).max() > 1e-3



@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_dropout_mask_rate_scaling_and_independence(rate):
    from bertgpt_jax.models.layers import Dropout
    x = jnp.ones((64, 128, 128), jnp.float32)  # 1M elements
    drop = Dropout(rate)
    run = jax.jit(lambda seed: drop.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(seed)}))
    a, b = np.asarray(run(0)), np.asarray(run(1))
    assert set(np.unique(a)) <= {0.0, np.float32(1 / (1 - rate))}  # inverted dropout: kept values scaled
    keep_a, keep_b = a.ravel() > 0, b.ravel() > 0
    sd = np.sqrt(rate * (1 - rate) / keep_a.size)
    assert abs(1 - keep_a.mean() - rate) < 5 * sd
    assert abs(a.mean() - 1.0) < 5 * sd / (1 - rate)  # expectation preserved
    # Neighbouring elements and different keys are uncorrelated.
    assert abs(np.corrcoef(keep_a[:-1], keep_a[1:])[0, 1]) < 0.01
    assert abs(np.corrcoef(keep_a, keep_b)[0, 1]) < 0.01
    np.testing.assert_array_equal(a, np.asarray(run(0)))
    np.testing.assert_array_equal(drop.apply({}, x, deterministic=True), x)
    assert not np.asarray(Dropout(1.0).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})).any()


def test_exact_gelu_matches_erf_formula():
    from bertgpt_jax.models.layers import ACTIVATIONS
    x = np.linspace(-12, 12, 20001).astype(np.float32)
    ref = 0.5 * x.astype(np.float64) * (1 + np.vectorize(__import__("math").erf)(x.astype(np.float64) / np.sqrt(2)))
    np.testing.assert_allclose(np.asarray(ACTIVATIONS["gelu"](jnp.asarray(x))), ref, atol=2e-6, rtol=1e-6)
    assert ACTIVATIONS["gelu"](jnp.ones(3, jnp.bfloat16)).dtype == jnp.bfloat16

def test_bf16_compute_keeps_fp32_params_and_logits():
    cfg = tiny("gpt2", dtype="bfloat16")
    model, params, ids = _init(cfg)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    out = model.apply({"params": params}, ids)
    assert out.last_hidden_state.dtype == jnp.bfloat16 and out.logits.dtype == jnp.float32
    ref = models.from_config(cfg.replace(dtype="float32")).apply({"params": params}, ids).logits
    # Measured: max error 0.0015 on logits up to 0.30 (std 0.067); a 5% scale error would be 0.015.
    err = np.abs(np.asarray(out.logits) - np.asarray(ref)).max()
    assert err < 0.01 and err < 0.03 * np.abs(np.asarray(ref)).max(), err


def test_params_are_named_for_weight_decay_masks():
    """LayerNorm params are scale/bias, every bias leaf is named bias, and the decoder is tied (no copy)."""
    cfg = tiny("bert-tiny")
    _, params, _ = _init(cfg)
    leaves = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(params)}
    assert "['embeddings']['LayerNorm']['scale']" in leaves and "['mlm']['bias']" in leaves
    names = {k.rsplit("['", 1)[1].rstrip("']") for k in leaves}
    assert names == {"embedding", "kernel", "bias", "scale"}
    assert sum(x.shape == (cfg.vocab_size, cfg.hidden_size) for x in leaves.values()) == 1


def test_flops_per_token_and_count():
    cfg = configs.get("gpt2")
    n = 124_439_808
    matmul = n - cfg.max_position_embeddings * cfg.hidden_size - (2 * 12 + 1) * 2 * 768  # drop wpe and LN params
    matmul -= 12 * (3 * 768 + 768 + 3072 + 768)  # and biases
    assert models.flops_per_token(cfg, 1024) == pytest.approx(6 * matmul + 12 * 12 * 768 * 1024)
    bert = configs.get("bert-base")
    assert models.flops_per_token(bert, 128, num_predictions=20) < models.flops_per_token(bert, 128)
    # heads_only: the last layer's Q, output and MLP matmuls and its attention at 21 of 128 rows.
    D, F, T, rows = 768, 3072, 128, 21
    saved = 6 * (2 * D * D + 2 * D * F) * (T - rows) / T + 12 * D * (T - rows)
    assert models.flops_per_token(bert, T, 20, heads_only=False) - models.flops_per_token(bert, T, 20) == \
        pytest.approx(saved)


def test_too_long_input_is_a_clear_error():
    cfg = tiny("gpt2", max_position_embeddings=8)
    model = models.from_config(cfg)
    with pytest.raises(ValueError, match="sequence length 9 exceeds the model.s position table .max_position_embeddings 8."):
        model.init(jax.random.key(0), jnp.zeros((1, 9), jnp.int32))


@pytest.mark.parametrize("remat", ["none", "full"])
def test_bert_heads_only_equals_the_full_last_layer(remat):
    """heads_only runs the last layer at [CLS] and the masked positions: same heads, same dropout, same
    gradients as the full model."""
    cfg = tiny("bert-tiny", remat=remat, num_hidden_layers=3)
    model, params, ids = _init(cfg, B=3, T=16, P=4)
    mask = jnp.asarray(np.arange(16)[None, :] < np.array([[16], [11], [7]]), jnp.int32)
    pos = jnp.array([[1, 2, 5, 15], [0, 3, 10, 4], [6, 1, 2, 0]])
    kw = dict(attention_mask=mask, token_type_ids=jnp.zeros_like(ids), masked_lm_positions=pos)

    def heads(p, heads_only, seed=0):
        out = model.apply({"params": p}, ids, **kw, deterministic=False, rngs={"dropout": jax.random.key(seed)},
                          heads_only=heads_only)
        return out.mlm_logits, out.nsp_logits, out.pooler_output, out.last_hidden_state

    heads = jax.jit(heads, static_argnums=(1, 2))
    full, part = heads(params, False), heads(params, True)
    assert part[3] is None and full[3].shape == (3, 16, 32)
    for a, b in zip(full[:3], part[:3]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(heads(params, True, seed=1)[0]) - np.asarray(part[0])).max() > 1e-3  # dropout on

    def loss(p, heads_only):
        mlm, nsp, _, _ = heads(p, heads_only)
        return (mlm ** 2).mean() + (nsp ** 2).mean()

    grad = jax.jit(jax.grad(loss), static_argnums=1)
    g_full, g_part = grad(params, False), grad(params, True)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g_full, g_part)


def test_dropout_at_given_indices_drops_what_the_full_array_drops():
    from bertgpt_jax.models.bert import _row_index
    from bertgpt_jax.models.layers import Dropout

    x = jnp.asarray(np.random.RandomState(0).rand(2, 3, 8, 5) + 1.0, jnp.float32)
    rows = jnp.array([[7, 0], [2, 2]])
    rngs = {"dropout": jax.random.key(3)}
    full = np.asarray(Dropout(0.5).apply({}, x, deterministic=False, rngs=rngs))
    part_x = jnp.take_along_axis(x, rows[:, None, :, None], axis=2)
    part = np.asarray(Dropout(0.5).apply({}, part_x, deterministic=False, rngs=rngs,
                                         index=_row_index(x.shape, rows, axis=2)))
    np.testing.assert_array_equal(part, np.take_along_axis(full, np.asarray(rows)[:, None, :, None], axis=2))
    assert 0 < (full == 0).mean() < 1


def test_materialise_cotangent_is_the_identity_with_a_materialised_gradient():
    from bertgpt_jax.models.kernels import materialise_cotangent as own_cotangent

    x = jnp.asarray(np.random.RandomState(0).randn(4, 8, 16), jnp.float32)
    w = jnp.asarray(np.random.RandomState(1).randn(4, 8, 16), jnp.float32)

    def f(x):
        return jnp.sum(jnp.sin(own_cotangent(x)) * w)

    np.testing.assert_array_equal(own_cotangent(x), x)
    np.testing.assert_allclose(jax.grad(f)(x), np.cos(np.asarray(x)) * np.asarray(w), rtol=1e-6)
    nan = x.at[0, 0, 0].set(jnp.nan)  # the conditional's other branch gives the same gradient
    np.testing.assert_allclose(jax.grad(f)(nan)[1:], np.cos(np.asarray(x))[1:] * np.asarray(w)[1:], rtol=1e-6)
    assert "conditional" in jax.jit(jax.grad(f)).lower(x).compile().as_text()


@pytest.mark.parametrize("x_shape,kernel_shape,in_ndim", [
    ((3, 5, 8), (8, 24), 1),          # in < out: the input is transposed
    ((3, 5, 24), (24, 8), 1),         # in > out: the output gradient is transposed
    ((3, 5, 8), (8, 3, 2, 4), 1),     # fused QKV kernel
    ((3, 5, 2, 4), (2, 4, 8), 2),     # attention output projection over (heads, head_dim)
])
def test_cpu_dot_general_gradient_equals_xla_autodiff(x_shape, kernel_shape, in_ndim):
    from bertgpt_jax.models.kernels import dot_general

    def dims(x):
        return ((tuple(range(x.ndim - in_ndim, x.ndim)), tuple(range(in_ndim))), ((), ()))

    def contract(x, kernel, in_ndim, out_dtype):
        return dot_general(x, kernel, dims(x), preferred_element_type=out_dtype)

    def _contract(x, kernel, in_ndim, out_dtype):
        return jax.lax.dot_general(x, kernel, dims(x), preferred_element_type=out_dtype)

    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(*x_shape), jnp.float32)
    kernel = jnp.asarray(rng.randn(*kernel_shape), jnp.float32)
    out_shape = x_shape[:len(x_shape) - in_ndim] + kernel_shape[in_ndim:]
    w = jnp.asarray(rng.randn(*out_shape), jnp.float32)

    def loss(fn):
        return lambda x, k: jnp.sum(jnp.tanh(fn(x, k, in_ndim, jnp.float32)) * w)

    np.testing.assert_allclose(contract(x, kernel, in_ndim, jnp.float32),
                               _contract(x, kernel, in_ndim, jnp.float32), rtol=1e-6)
    ours = jax.jit(jax.grad(loss(contract), argnums=(0, 1)))
    for got, want in zip(ours(x, kernel), jax.grad(loss(_contract), argnums=(0, 1))(x, kernel)):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert "conditional" in ours.lower(x, kernel).compile().as_text()  # the transposed operand is its own array

    nan = x.at[0, 0].set(jnp.nan)  # the conditional's other branch computes the same transpose
    got = ours(nan, kernel)[0][1:]
    want = jax.grad(loss(_contract), argnums=(0, 1))(nan, kernel)[0][1:]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    bf16 = contract(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16), in_ndim, jnp.float32)
    assert bf16.dtype == jnp.float32
    gx, gk = jax.grad(lambda x, k: jnp.sum(contract(x, k, in_ndim, jnp.float32)), argnums=(0, 1))(
        x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
    assert gx.dtype == gk.dtype == jnp.bfloat16


def test_attention_fused_and_explicit_paths_agree_and_weights_are_returned():
    """jax.nn.dot_product_attention (eval, inference) and the explicit softmax(QK^T)V path (dropout,
    attention weights) compute the same function; the weights are a distribution over real keys."""
    from bertgpt_jax.models.layers import SelfAttention

    for name, causal in (("bert-tiny", False), ("gpt2", True)):
        cfg = tiny(name)
        attn = SelfAttention(cfg, deterministic=True, is_causal=causal)
        x = jnp.asarray(np.random.RandomState(0).randn(2, 9, 32), jnp.float32)
        mask = jnp.asarray(np.arange(9)[None, :] < np.array([[9], [6]]))[:, None, None, :]
        variables = attn.init(jax.random.key(0), x, mask)
        fused = attn.apply(variables, x, mask)
        explicit, state = attn.apply(variables, x, mask, mutable=[models.ATTENTION_WEIGHTS])
        np.testing.assert_allclose(explicit, fused, atol=1e-5)
        (probs,) = state[models.ATTENTION_WEIGHTS]["probs"]
        assert probs.shape == (2, 4, 9, 9)
        np.testing.assert_allclose(np.asarray(probs).sum(-1), 1.0, rtol=1e-5)
        assert float(np.asarray(probs)[1, :, :, 6:].max()) == 0.0  # padding keys get nothing
        if causal:
            assert float(np.triu(np.asarray(probs)[0], 1).max()) == 0.0
        # With dropout 0 in training, the fused path runs and gives the deterministic result.
        train = SelfAttention(cfg.replace(attention_probs_dropout_prob=0.0), deterministic=False, is_causal=causal)
        np.testing.assert_allclose(train.apply(variables, x, mask), fused, atol=1e-6)
