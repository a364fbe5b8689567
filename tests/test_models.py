"""Model behaviour: shapes, heads at masked positions only, causality, padding invariance, dtypes, layouts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertgpt_jax import configs, models

TINY = dict(vocab_size=300, hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2,
            max_position_embeddings=64)


def tiny(name, **kw):
    return configs.get(name).replace(**{**TINY, **kw})


def _init(cfg, B=2, T=12, P=3):
    model = models.from_config(cfg)
    ids = jax.random.randint(jax.random.key(0), (B, T), 1, cfg.vocab_size)
    kw = {"masked_lm_positions": jnp.zeros((B, P), jnp.int32)} if cfg.is_bert else {}
    params = model.init(jax.random.key(1), ids, **kw)["params"]
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
    np.testing.assert_allclose(model.apply({"params": params}, h_only.last_hidden_state, method="lm_logits"),
                               out.logits, atol=1e-5)
