"""Schedules, weight-decay exclusions, losses and the synthetic dataset."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertgpt_jax.training import losses, optimizers, schedules, synthetic


def test_warmup_then_linear_decay_values():
    lr = schedules.warmup_then_decay(1e-3, num_train_steps=110, num_warmup_steps=10)
    assert float(lr(0)) == pytest.approx(1e-4)  # first update already moves
    assert float(lr(9)) == pytest.approx(1e-3)
    assert float(lr(10)) == pytest.approx(1e-3)
    assert float(lr(60)) == pytest.approx(5e-4)
    assert float(lr(110)) == pytest.approx(0.0, abs=1e-12)


def test_polynomial_decay_power():
    lr = schedules.warmup_then_decay(1.0, num_train_steps=100, num_warmup_steps=0, kind="polynomial", power=2.0)
    assert float(lr(50)) == pytest.approx(0.25)


def test_schedule_rejects_bad_settings():
    with pytest.raises(ValueError, match="num_warmup_steps 20 must lie in"):
        schedules.warmup_then_decay(1e-3, num_train_steps=10, num_warmup_steps=20)
    with pytest.raises(ValueError, match="schedule 'cosine' is not one of"):
        schedules.warmup_then_decay(1e-3, 10, 0, kind="cosine")


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


def test_token_nll_matches_log_softmax():
    logits = jax.random.normal(jax.random.PRNGKey(0), (5, 7)) * 3
    labels = jnp.array([0, 6, 3, 3, 1])
    expected = -jax.nn.log_softmax(logits)[jnp.arange(5), labels]
    np.testing.assert_allclose(losses.token_nll(logits, labels), expected, rtol=1e-6)
    nll, correct = losses.nll_and_correct(logits, labels)
    np.testing.assert_array_equal(correct, (jnp.argmax(logits, -1) == labels).astype(np.float32))
    grad = jax.grad(lambda x: losses.token_nll(x, labels).sum())(logits)
    np.testing.assert_allclose(grad, jax.nn.softmax(logits) - jax.nn.one_hot(labels, 7), atol=1e-6)



def test_fused_bert_sums_match_the_plain_loss_and_its_gradients():
    rng = np.random.default_rng(0)
    B, P, D, V = 3, 4, 8, 37
    h = jnp.asarray(rng.normal(size=(B, P, D)), jnp.float32)
    table = jnp.asarray(rng.normal(size=(V, D)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(V,)), jnp.float32)
    nsp = jnp.asarray(rng.normal(size=(B, 2)), jnp.float32)
    batch = {"masked_lm_ids": jnp.asarray(rng.integers(0, V, (B, P))), "next_sentence_labels": jnp.array([0, 1, 1]),
             "masked_lm_weights": jnp.asarray([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], jnp.float32)}
    # Make one prediction right for sure, so the accuracy sum is checked on both outcomes.
    batch["masked_lm_ids"] = batch["masked_lm_ids"].at[0, 0].set(int(jnp.argmax(h[0, 0] @ table.T + bias)))

    def plain(h, table, bias):
        return losses.bert_sums(jnp.einsum("bpd,vd->bpv", h, table) + bias, nsp, batch)

    def fused(h, table, bias):
        return losses.fused_bert_sums(h, table, bias, nsp, batch)

    ref, got = plain(h, table, bias), fused(h, table, bias)
    assert set(ref) == set(got)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, err_msg=k)
    assert 1.0 <= float(got["mlm_correct_sum"]) < float(got["mlm_count"])
    g_ref = jax.jit(jax.grad(lambda *a: plain(*a)["mlm_loss_sum"], argnums=(0, 1, 2)))(h, table, bias)
    g_got = jax.jit(jax.grad(lambda *a: fused(*a)["mlm_loss_sum"] * 1.0, argnums=(0, 1, 2)))(h, table, bias)
    for a, b in zip(g_got, g_ref):
        np.testing.assert_allclose(a, b, atol=1e-5)
    g2 = jax.grad(lambda h: 2.0 * fused(h, table, bias)["mlm_loss_sum"])(h)
    np.testing.assert_allclose(g2, 2.0 * g_ref[0], atol=1e-5)

def test_objective_adds_up_over_microbatches():
    rng = np.random.default_rng(0)
    batch = {"targets": rng.integers(0, 7, (4, 3)), "is_real_example": np.array([1, 1, 1, 0])}
    logits = jnp.asarray(rng.normal(size=(4, 3, 7)), jnp.float32)
    totals = losses.counts(batch, is_bert=False)
    assert float(totals["lm_count"]) == 9.0
    whole = losses.objective(losses.gpt_sums(logits, batch), totals)
    halves = sum(losses.objective(losses.gpt_sums(logits[s], {k: v[s] for k, v in batch.items()}), totals)
                 for s in (slice(0, 2), slice(2, 4)))
    np.testing.assert_allclose(float(whole), float(halves), rtol=1e-6)
    summary = losses.summarize(jax.device_get(losses.gpt_sums(logits, batch)))
    assert summary["perplexity"] == pytest.approx(np.exp(summary["loss"]))


def test_synthetic_is_deterministic_resumable_and_consistent():
    it = synthetic.SyntheticIterator("bert", 4, 32, 96, max_predictions_per_seq=5, seed=3)
    b0, b1 = next(it), next(it)
    state = it.get_state()
    b2 = next(it)
    again = synthetic.SyntheticIterator("bert", 4, 32, 96, max_predictions_per_seq=5, seed=3)
    again.set_state(state)
    np.testing.assert_array_equal(next(again)["input_ids"], b2["input_ids"])
    assert not np.array_equal(b0["input_ids"], b1["input_ids"])
    # Masked positions hold [MASK]; the labels are the count the neighbours imply.
    for b in range(4):
        n = int(b0["masked_lm_weights"][b].sum())
        pos = b0["masked_lm_positions"][b, :n]
        assert np.all(b0["input_ids"][b, pos] == synthetic.MASK)
        assert np.all(b0["masked_lm_ids"][b, :n] >= 4)
    assert set(np.unique(b0["next_sentence_labels"])) <= {0, 1}
    gpt = next(synthetic.SyntheticIterator("gpt2", 2, 16, 96))
    np.testing.assert_array_equal(gpt["input_ids"][:, 1:], gpt["targets"][:, :-1])


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
    batch = {"targets": jax.random.randint(k[2], (2, 8), -1, 11)}  # -1: padding, not counted

    def full(h, table):
        s = losses.gpt_sums(jnp.einsum("btd,vd->btv", h, table), batch)
        return s["lm_loss_sum"], s

    def fused(h, table):
        s = losses.fused_gpt_sums(h, table, batch, chunk=2)
        return s["lm_loss_sum"], s

    (a, sa), ga = jax.value_and_grad(full, argnums=(0, 1), has_aux=True)(h, table)
    (b, sb), gb = jax.jit(jax.value_and_grad(fused, argnums=(0, 1), has_aux=True))(h, table)
    np.testing.assert_allclose(float(a), float(b), rtol=1e-5)
    assert float(sa["lm_correct_sum"]) == float(sb["lm_correct_sum"]) and float(sb["lm_count"]) < 16
    for x, y in zip(ga, gb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5)
    assert losses.lm_chunk_size(256, 8, 50257) == 64
