"""Schedules, weight-decay exclusions, the losses and their fused forms, the tasks' objective, synthetic data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertgpt_jax.models import losses
from bertgpt_jax.tasks import synthetic
from bertgpt_jax.training import optimizers, schedules


def test_warmup_then_decay_values():
    lr = schedules.warmup_then_decay(1e-3, num_train_steps=110, num_warmup_steps=10)
    assert float(lr(0)) == pytest.approx(1e-4)  # first update already moves
    assert float(lr(9)) == pytest.approx(1e-3)
    assert float(lr(10)) == pytest.approx(1e-3)
    assert float(lr(60)) == pytest.approx(5e-4)
    assert float(lr(110)) == pytest.approx(0.0, abs=1e-12)


def test_polynomial_decay_power():
    lr = schedules.warmup_then_decay(1.0, num_train_steps=100, num_warmup_steps=0, power=2.0)
    assert float(lr(50)) == pytest.approx(0.25)


def test_schedule_rejects_bad_settings():
    with pytest.raises(ValueError, match="num_warmup_steps 20 must lie in"):
        schedules.warmup_then_decay(1e-3, num_train_steps=10, num_warmup_steps=20)
    with pytest.raises(ValueError, match="schedule 'cosine' is not one of"):
        schedules.make_schedule("cosine", 1e-3, 10, 0)


def test_decay_mask_excludes_bias_and_layernorm():
    params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)},
              "LayerNorm": {"scale": jnp.ones(2), "bias": jnp.ones(2)}, "emb": {"embedding": jnp.ones((3, 2))}}
    mask = optimizers.decay_mask(params)
    assert mask == {"dense": {"kernel": True, "bias": False}, "LayerNorm": {"scale": False, "bias": False},
                    "emb": {"embedding": True}}


@pytest.mark.parametrize("name", ["adamw", "lamb"])
def test_weight_decay_skips_excluded_leaves(name):
    # With zero gradients only weight decay moves parameters: kernels shrink, biases and scales stay.
    params = {"kernel": jnp.full((4, 4), 2.0), "bias": jnp.full((4,), 2.0), "ln": {"scale": jnp.full((4,), 2.0)}}
    opt = optimizers.make_optimizer(name, 0.1, weight_decay=0.5)
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = opt.update(grads, opt.init(params), params)
    assert float(jnp.max(jnp.abs(updates["bias"]))) == 0.0
    assert float(jnp.max(jnp.abs(updates["ln"]["scale"]))) == 0.0
    assert float(jnp.min(-updates["kernel"])) > 0.0


def _plain_sums(logits, labels, weights):
    """Weighted NLL and correct-prediction sums written independently of the package: log-softmax + argmax."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(logp, labels[..., None], axis=-1)[..., 0]
    correct = (jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return jnp.sum(nll * weights), jnp.sum(correct * weights)


def test_nll_and_correct_match_log_softmax_and_argmax():
    logits = jax.random.normal(jax.random.PRNGKey(0), (5, 7)) * 3
    labels = jnp.array([0, 6, 3, 3, 1])
    nll, correct = losses.nll_and_correct(logits, labels)
    np.testing.assert_allclose(nll, -jax.nn.log_softmax(logits)[jnp.arange(5), labels], rtol=1e-6)
    np.testing.assert_array_equal(correct, (jnp.argmax(logits, -1) == labels).astype(np.float32))
    grad = jax.grad(lambda x: losses.nll_and_correct(x, labels)[0].sum())(logits)
    np.testing.assert_allclose(grad, jax.nn.softmax(logits) - jax.nn.one_hot(labels, 7), atol=1e-6)


def test_fused_decoder_loss_matches_the_plain_loss_and_its_gradients():
    rng = np.random.default_rng(0)
    N, D, V = 12, 8, 37
    h = jnp.asarray(rng.normal(size=(N, D)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(V, D)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(V,)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, V, (N,)))
    labels = labels.at[0].set(int(jnp.argmax(h[0] @ table.T + bias)))  # one prediction right for sure
    weights = jnp.asarray(rng.integers(0, 2, (N,)), jnp.float32).at[0].set(1.0)

    def plain(h, table, bias):
        return _plain_sums(h @ table.T + bias, labels, weights)

    def fused(h, table, bias):
        return losses.decoder_sums(h, table, bias, labels, weights)

    ref, got = plain(h, table, bias), jax.jit(fused)(h, table, bias)
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    assert 1.0 <= float(got[1]) < float(weights.sum())
    g_ref = jax.grad(lambda *a: plain(*a)[0], argnums=(0, 1, 2))(h, table, bias)
    g_got = jax.jit(jax.grad(lambda *a: fused(*a)[0], argnums=(0, 1, 2)))(h, table, bias)
    for a, b in zip(g_got, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-5)
    g2 = jax.grad(lambda h: 2.0 * fused(h, table, bias)[0])(h)
    np.testing.assert_allclose(g2, 2.0 * g_ref[0], atol=1e-5)


def test_objective_adds_up_over_microbatches():
    from tests.training_helpers import synthetic_task, tiny_config

    task = synthetic_task(tiny_config("gpt2"), 3)
    rng = np.random.default_rng(0)
    batch = {"targets": rng.integers(-1, 7, (4, 3)), "is_real_example": np.array([1, 1, 1, 0])}
    logits = jnp.asarray(rng.normal(size=(4, 3, 7)), jnp.float32)

    def sums(part):
        weights = task._weights(part)
        loss, correct = _plain_sums(logits[part["rows"]], jnp.maximum(part["targets"], 0), weights)
        return {"lm_loss_sum": loss, "lm_correct_sum": correct, **task.counts(part)}

    totals = task.counts(batch)
    assert float(totals["lm_count"]) == float(((batch["targets"] >= 0) * batch["is_real_example"][:, None]).sum())
    whole = task.objective(sums({**batch, "rows": slice(0, 4)}), totals)
    halves = sum(task.objective(sums({"targets": batch["targets"][s], "is_real_example": batch["is_real_example"][s],
                                      "rows": s}), totals) for s in (slice(0, 2), slice(2, 4)))
    np.testing.assert_allclose(float(whole), float(halves), rtol=1e-6)
    summary = task.summarize(jax.device_get(sums({**batch, "rows": slice(0, 4)})))
    assert summary["perplexity"] == pytest.approx(np.exp(summary["loss"]))


def test_synthetic_batches_are_deterministic_resumable_consistent_and_split_per_process():
    from tests.training_helpers import synthetic_task, tiny_config

    task = synthetic_task(tiny_config("bert"), 32, 5)
    it = synthetic.SyntheticBatches(task.synthetic_batch, 4, seed=3)
    b0, b1 = next(it), next(it)
    state = it.get_state()
    b2 = next(it)
    again = synthetic.SyntheticBatches(task.synthetic_batch, 4, seed=3)
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["input_ids"], b2["input_ids"])
    assert not np.array_equal(b0["input_ids"], b1["input_ids"])
    # Masked positions hold [MASK]; the labels are the count the neighbours imply.
    for b in range(4):
        n = int(b0["masked_lm_weights"][b].sum())
        pos = b0["masked_lm_positions"][b, :n]
        assert np.all(b0["input_ids"][b, pos] == synthetic.MASK)
        assert np.all(b0["masked_lm_ids"][b, :n] >= synthetic.FIRST_CONTENT)
    assert set(np.unique(b0["next_sentence_labels"])) <= {0, 1}
    # Two processes take the two halves of the same global batch.
    halves = [next(synthetic.SyntheticBatches(task.synthetic_batch, 4, seed=3, process_index=p, process_count=2))
              for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate([h["input_ids"] for h in halves]), b0["input_ids"])
    gpt = synthetic_task(tiny_config("gpt2"), 16)
    g = next(gpt.train_batches(2, seed=0))
    np.testing.assert_array_equal(g["input_ids"][:, 1:], g["targets"][:, :-1])


def test_lamb_scales_each_update_to_its_layer_norm():
    # LAMB's trust ratio: with no decay, every layer moves by lr * ||w|| whatever its gradient scale.
    params = {"a": jnp.full((3, 3), 2.0), "b": jnp.full((5,), 0.5)}
    grads = {"a": jnp.full((3, 3), 1e-3), "b": jnp.linspace(1.0, 5.0, 5)}
    opt = optimizers.make_optimizer("lamb", 0.1, weight_decay=0.0)
    updates, _ = opt.update(grads, opt.init(params), params)
    for k in params:
        np.testing.assert_allclose(float(jnp.linalg.norm(updates[k])), 0.1 * float(jnp.linalg.norm(params[k])),
                                   rtol=1e-4)


def test_fused_chunked_lm_loss_matches_full_logits():
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    h, table = jax.random.normal(k[0], (2, 8, 6)), jax.random.normal(k[1], (11, 6))
    raw = jax.random.randint(k[2], (2, 8), -1, 11)  # -1: padding, not counted
    targets, weights = jnp.maximum(raw, 0), (raw >= 0).astype(jnp.float32)

    def full(h, table):
        return _plain_sums(jnp.einsum("btd,vd->btv", h, table), targets, weights)

    def fused(h, table):
        return losses.lm_head_sums(h, table, targets, weights, chunk=2)

    ref = full(h, table)
    got = jax.jit(fused)(h, table)
    np.testing.assert_allclose(float(got[0]), float(ref[0]), rtol=1e-5)
    assert float(got[1]) == float(ref[1]) and float(weights.sum()) < 16
    ga = jax.grad(lambda h, t: full(h, t)[0], argnums=(0, 1))(h, table)
    gb = jax.jit(jax.grad(lambda h, t: fused(h, t)[0], argnums=(0, 1)))(h, table)
    for x, y in zip(ga, gb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)
    assert losses.lm_chunk_size(256, 8, 50257) == 64
