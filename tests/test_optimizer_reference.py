"""LAMB and the learning-rate schedule against direct NumPy transcriptions of the reference code.

LAMB: ``lamb_optimizer.py`` of google-research/albert (the BERT LAMB recipe), applied per TensorFlow
variable with its exclusion regexes. Schedule: ``create_optimizer`` of google-research/bert
``optimization.py``.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bertgpt_jax.training import optimizers, schedules

B1, B2, EPS = 0.9, 0.999, 1e-6
EXCLUDE = ["LayerNorm", "layer_norm", "bias"]  # the recipe's exclude_from_weight_decay (= layer adaptation)


def _reference_lamb_step(w, g, m, v, name, lr, wd):
    """One variable's update, transcribed from the reference LAMBOptimizer.apply_gradients."""
    excluded = any(re.search(r, name) for r in EXCLUDE)
    m = B1 * m + (1.0 - B1) * g
    v = B2 * v + (1.0 - B2) * g * g
    update = m / (np.sqrt(v) + EPS)
    if wd and not excluded:
        update = update + wd * w
    ratio = 1.0
    if not excluded:
        w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(update)
        ratio = (w_norm / g_norm if g_norm > 0 else 1.0) if w_norm > 0 else 1.0
    return w - ratio * lr * update, m, v


L, D, H, K, E = 2, 4, 2, 3, 5


def _tree(rng):
    """Scanned layers with a fused QKV kernel, their LayerNorm, and an unscanned dense layer."""
    return {"encoder": {"layers": {"attention": {"qkv": {"kernel": rng.normal(size=(L, D, 3, H, K)),
                                                         "bias": rng.normal(size=(L, 3, H, K))}},
                                   "ln": {"scale": 1 + rng.normal(size=(L, D)) * 0.1,
                                          "bias": rng.normal(size=(L, D)) * 0.1}}},
            "dense": {"kernel": rng.normal(size=(D, E)), "bias": np.zeros(E)}}


def _to_tf_variables(t):
    """The same numbers as the original TensorFlow variables: per layer, separate query/key/value kernels."""
    out = {}
    enc = t["encoder"]["layers"]
    for layer in range(L):
        for j, part in enumerate(("query", "key", "value")):
            out[f"bert/encoder/layer_{layer}/attention/self/{part}/kernel"] = \
                enc["attention"]["qkv"]["kernel"][layer][:, j].reshape(D, H * K)
            out[f"bert/encoder/layer_{layer}/attention/self/{part}/bias"] = \
                enc["attention"]["qkv"]["bias"][layer][j].reshape(H * K)
        out[f"bert/encoder/layer_{layer}/output/LayerNorm/gamma"] = enc["ln"]["scale"][layer]
        out[f"bert/encoder/layer_{layer}/output/LayerNorm/beta"] = enc["ln"]["bias"][layer]
    out["cls/dense/kernel"] = t["dense"]["kernel"]
    out["cls/dense/bias"] = t["dense"]["bias"]
    return out


def test_lamb_matches_the_reference_update_per_original_variable():
    rng = np.random.default_rng(0)
    params = _tree(rng)
    lr, wd, steps = 0.05, 0.01, 4
    grads = [jax.tree.map(lambda x: rng.normal(size=x.shape), params) for _ in range(steps)]
    # The package.
    opt = optimizers.make_optimizer("lamb", lr, weight_decay=wd)
    p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = opt.init(p)
    step = jax.jit(opt.update)
    for g in grads:
        updates, state = step(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), state, p)
        p = optax.apply_updates(p, updates)
    # The reference, variable by variable, in float64.
    ref = _to_tf_variables(params)
    moments = {k: (np.zeros_like(w), np.zeros_like(w)) for k, w in ref.items()}
    for g in grads:
        g_tf = _to_tf_variables(g)
        for k in ref:
            ref[k], m, v = _reference_lamb_step(ref[k], g_tf[k], *moments[k], k, lr, wd)
            moments[k] = (m, v)
    ours = _to_tf_variables(jax.tree.map(np.asarray, p))
    for k in ref:
        np.testing.assert_allclose(ours[k], ref[k], rtol=2e-5, atol=2e-6, err_msg=k)
    # One ratio for the whole fused kernel would not do: the per-variable result differs from it.
    fused = optax.lamb(lr, b1=B1, b2=B2, eps=EPS, weight_decay=wd, mask=optimizers.decay_mask)
    q, s = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params), None
    s = fused.init(q)
    for g in grads:
        u, s = fused.update(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g), s, q)
        q = optax.apply_updates(q, u)
    k0 = "bert/encoder/layer_0/attention/self/query/kernel"
    assert np.max(np.abs(_to_tf_variables(jax.tree.map(np.asarray, q))[k0] - ref[k0])) > 1e-3


def test_lamb_zero_bias_under_constant_gradient_moves_as_the_reference():
    # A zero-initialised bias, constant gradient 1, lr 1e-3, 200 steps: the reference moves it by
    # sum_t lr * (1 - b1^t) / (sqrt(1 - b2^t) + eps) = 0.737 per element (no bias correction, ratio 1).
    params = {"dense": {"kernel": jnp.ones((3, 4)), "bias": jnp.zeros(4)}}
    grads = jax.tree.map(jnp.ones_like, params)

    def moved(opt):
        p, s = params, opt.init(params)
        update = jax.jit(opt.update)
        for _ in range(200):
            u, s = update(grads, s, p)
            p = optax.apply_updates(p, u)
        return float(jnp.mean(params["dense"]["bias"] - p["dense"]["bias"]))

    t = np.arange(1, 201)
    expected = float(np.sum(1e-3 * (1 - B1 ** t) / (np.sqrt(1 - B2 ** t) + EPS)))
    assert expected == pytest.approx(0.737, abs=1e-3)
    assert moved(optimizers.make_optimizer("lamb", 1e-3)) == pytest.approx(expected, rel=1e-4)
    # optax.lamb adapts the bias too: it barely moves (1.2e-3) once it is off zero.
    plain = moved(optax.lamb(1e-3, b1=B1, b2=B2, eps=EPS, weight_decay=0.01, mask=optimizers.decay_mask))
    assert plain < 2e-3


def test_variable_axes_name_the_fused_and_scanned_axes():
    axes = optimizers.variable_axes(_tree(np.random.default_rng(0)))
    assert axes["encoder"]["layers"]["attention"]["qkv"]["kernel"] == (0, 2)
    assert axes["encoder"]["layers"]["ln"]["scale"] == (0,)
    assert axes["dense"]["kernel"] == ()


def _reference_lr(step, init_lr, num_train_steps, num_warmup_steps, power=1.0):
    """optimization.py: polynomial_decay(init_lr, step, num_train_steps, 0, power), warmup overriding."""
    s = min(step, num_train_steps)
    lr = init_lr * (1 - s / num_train_steps) ** power
    if num_warmup_steps and step < num_warmup_steps:
        lr = init_lr * step / num_warmup_steps
    return lr


@pytest.mark.parametrize("T,W,power", [(7038, 2000, 1.0), (100, 10, 0.5), (50, 0, 1.0)])
def test_bert_schedule_is_the_original_formula(T, W, power):
    lr = schedules.make_schedule("bert", 6e-3, T, W, power)
    for s in sorted({0, 1, max(W - 1, 0), W, W + 1, T // 2, T - 1, T, T + 5}):
        assert float(lr(s)) == pytest.approx(_reference_lr(s, 6e-3, T, W, power), rel=1e-5, abs=6e-3 * 1e-6), s  # float32, as TF computes it
    # The other schedule is T/(T-W) times higher after warmup, which is why it has its own name.
    if W:
        other = schedules.make_schedule("warmup_then_decay", 6e-3, T, W, power=1.0)
        s = (T + W) // 2
        if power == 1.0:
            assert float(other(s)) / float(lr(s)) == pytest.approx(T / (T - W), rel=1e-4)


def test_variable_axes_find_the_models_own_fused_and_scanned_leaves():
    from tests.training_helpers import synthetic_task, tiny_config

    for scan, expected in ((False, (1,)), (True, (0, 2))):
        task = synthetic_task(tiny_config("bert").replace(scan_layers=scan), 16, 3)
        example = jax.tree.map(jnp.asarray, task.example_batch(2))
        params = jax.eval_shape(lambda k: task.init_params(k, example), jax.random.PRNGKey(0))
        axes = optimizers.variable_axes(params)
        layer = axes["encoder"]["layers" if scan else "layer_0"]
        assert layer["attention"]["qkv"]["kernel"].value == expected
        assert layer["mlp"]["wi"]["kernel"].value == ((0,) if scan else ())
