"""Token and span heads against transformers' BertForTokenClassification / BertForQuestionAnswering on the same
(random) weights, through the HF export; the exported head loads back unchanged."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(1)
    ids = rng.integers(5, 256, (2, 12)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    types = np.zeros_like(ids)
    types[:, 6:] = 1
    return ids, mask, types


@pytest.mark.parametrize("kind", ["token", "span"])
def test_heads_match_transformers(kind, batch, tmp_path):
    import flax.linen as nn
    import jax
    import torch
    import transformers

    from bertgpt_jax import configs, convert
    from bertgpt_jax.models.finetune import SpanClassifier, TokenClassifier, strip_pretraining_heads

    cfg = configs.get("bert-tiny").replace(vocab_size=256, num_hidden_layers=2, kernels="xla")
    ids, mask, types = batch
    model = TokenClassifier(cfg, 5) if kind == "token" else SpanClassifier(cfg)
    params = strip_pretraining_heads(nn.unbox(model.init(jax.random.PRNGKey(0), ids, attention_mask=mask,
                                                         token_type_ids=types)["params"]))
    params["bert"].pop("pooler")
    # Random, non-zero biases so every tensor's placement is checked.
    head = "classifier" if kind == "token" else "qa_outputs"
    params[head]["bias"] = jax.random.normal(jax.random.PRNGKey(1), params[head]["bias"].shape)
    arch = "BertForTokenClassification" if kind == "token" else "BertForQuestionAnswering"
    convert.to_hf_finetuned(cfg, params, str(tmp_path), arch, [f"L{i}" for i in range(5)] if kind == "token" else None)
    ref = getattr(transformers, arch).from_pretrained(str(tmp_path)).eval()
    ours = jax.jit(lambda p: model.apply({"params": p}, ids, attention_mask=mask, token_type_ids=types))(params)
    with torch.no_grad():
        out = ref(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                  token_type_ids=torch.tensor(types, dtype=torch.long))
    if kind == "token":
        pairs = [(np.asarray(ours), out.logits.numpy())]
    else:
        pairs = [(np.asarray(ours[0]), out.start_logits.numpy()), (np.asarray(ours[1]), out.end_logits.numpy())]
    for a, b in pairs:
        assert a.shape == b.shape and np.std(a) > 1e-3
        assert np.max(np.abs(a - b)) <= 1e-4, np.max(np.abs(a - b))
    _, encoder, loaded = convert.from_hf_finetuned(str(tmp_path))
    np.testing.assert_array_equal(loaded[head]["kernel"], np.asarray(params[head]["kernel"]))
    assert "pooler" not in encoder


def test_layer_mix_head_and_frozen_encoder():
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from bertgpt_jax import configs
    from bertgpt_jax.models.bert import Bert
    from bertgpt_jax.models.finetune import SequenceClassifier, strip_pretraining_heads

    cfg = configs.get("bert-tiny").replace(vocab_size=256, num_hidden_layers=2, kernels="xla")
    rng = np.random.default_rng(2)
    ids = rng.integers(5, 256, (3, 10)).astype(np.int32)
    mask = np.ones_like(ids)
    model = SequenceClassifier(cfg, 4, layer_mix=True, freeze_encoder=True)
    init = jax.jit(lambda k: model.init(k, ids, attention_mask=mask)["params"])
    params = strip_pretraining_heads(nn.unbox(init(jax.random.PRNGKey(0))))
    params["mix_weights"] = jnp.asarray([0.3, -1.0, 2.0])  # embeddings + 2 layers
    params["mix_scale"] = jnp.asarray(1.7)
    logits = jax.jit(lambda p: model.apply({"params": p}, ids, attention_mask=mask))(params)
    # Reference: the encoder's hidden states, mixed by hand.
    hidden = jax.jit(lambda p: Bert(cfg).apply({"params": p}, ids, attention_mask=mask,
                                               output_hidden_states=True).hidden_states)(params["bert"])
    w = np.exp([0.3, -1.0, 2.0]) / np.exp([0.3, -1.0, 2.0]).sum()
    mixed = 1.7 * sum(w[i] * np.asarray(h[:, 0]) for i, h in enumerate(hidden))
    ref = mixed @ np.asarray(params["classifier"]["kernel"]) + np.asarray(params["classifier"]["bias"])
    np.testing.assert_allclose(np.asarray(logits), ref, atol=1e-5)
    labels = jnp.asarray([0, 1, 2])
    grads = jax.jit(jax.grad(lambda p: model.apply({"params": p}, ids, attention_mask=mask,
                                                   labels=labels)["cls_loss_sum"]))(params)
    assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["bert"]))  # frozen encoder
    assert float(jnp.abs(grads["mix_weights"]).max()) > 0 and float(jnp.abs(grads["classifier"]["kernel"]).max()) > 0


def test_pooled_classifier_runs_the_last_layer_at_cls_only():
    """The pooled head reads [CLS] alone, so the encoder's last layer runs there only (keys and values at every
    position): the same pooled output, dropout and gradients as the full encoder, for fewer FLOPs."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from bertgpt_jax import configs
    from bertgpt_jax.models.bert import Bert
    from bertgpt_jax.models.finetune import SequenceClassifier, strip_pretraining_heads

    cfg = configs.get("bert-tiny").replace(vocab_size=256, num_hidden_layers=2, kernels="xla",
                                           hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    rng = np.random.default_rng(3)
    ids = rng.integers(5, 256, (3, 32)).astype(np.int32)
    mask = (np.arange(32)[None, :] < np.array([[32], [20], [9]])).astype(np.int32)
    model = SequenceClassifier(cfg, 3)
    params = strip_pretraining_heads(nn.unbox(jax.jit(lambda k: model.init(k, ids, attention_mask=mask))(
        jax.random.PRNGKey(0))["params"]))
    rngs = {"dropout": jax.random.PRNGKey(5)}

    def pooled(p, heads_only):
        return Bert(cfg).apply({"params": p}, ids, attention_mask=mask, deterministic=False, rngs=rngs,
                               heads_only=heads_only).pooler_output

    full = jax.jit(lambda p: pooled(p, False))(params["bert"])
    part = jax.jit(lambda p: pooled(p, True))(params["bert"])
    np.testing.assert_allclose(np.asarray(part), np.asarray(full), rtol=1e-5, atol=1e-6)
    grad = jax.jit(jax.grad(lambda p, h: jnp.sum(pooled(p, h) ** 2)), static_argnums=1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 grad(params["bert"], False), grad(params["bert"], True))

    # The classifier's logits are the full encoder's pooled [CLS] through its output layer ...
    logits = jax.jit(lambda p: model.apply({"params": p}, ids, attention_mask=mask))(params)
    ref = Bert(cfg).apply({"params": params["bert"]}, ids, attention_mask=mask).pooler_output
    ref = np.asarray(ref) @ np.asarray(params["classifier"]["kernel"]) + np.asarray(params["classifier"]["bias"])
    np.testing.assert_allclose(np.asarray(logits), ref, rtol=1e-5, atol=1e-6)

    # ... computed with the last layer at one row of 32: its MLP, output and query matmuls are gone.
    def flops(fn):
        return jax.jit(fn).lower(params).compile().cost_analysis()["flops"]

    ours = flops(lambda p: model.apply({"params": p}, ids, attention_mask=mask))
    full_encoder = flops(lambda p: Bert(cfg).apply({"params": p["bert"]}, ids, attention_mask=mask).pooler_output)
    assert ours < 0.7 * full_encoder, (ours, full_encoder)
