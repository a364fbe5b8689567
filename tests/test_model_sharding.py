"""Sharded init and the same loss and gradients on 1 device and on a 2x2x2 (data, fsdp, tensor) mesh."""

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from bertgpt_jax import configs, models, sharding
from tests.model_params import random_params

TINY = dict(vocab_size=256, hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2,
            max_position_embeddings=32)
B, T, P = 8, 16, 4


def _batch(cfg):
    rs = np.random.RandomState(0)
    batch = {"input_ids": rs.randint(1, cfg.vocab_size, (B, T)).astype(np.int32)}
    if cfg.is_bert:
        mask = np.ones((B, T), np.int32)
        mask[::2, 11:] = 0
        batch.update(input_mask=mask, segment_ids=(np.arange(T) >= 6).astype(np.int32)[None].repeat(B, 0),
                     masked_lm_positions=rs.randint(0, 11, (B, P)).astype(np.int32),
                     masked_lm_ids=rs.randint(1, cfg.vocab_size, (B, P)).astype(np.int32),
                     masked_lm_weights=(rs.rand(B, P) > 0.2).astype(np.float32),
                     next_sentence_labels=rs.randint(0, 2, (B,)).astype(np.int32))
    else:
        # Two packed documents per row: segments and positions restart at column 7.
        batch.update(segment_ids=(np.arange(T) >= 7).astype(np.int32)[None].repeat(B, 0) + 1,
                     position_ids=np.concatenate([np.arange(7), np.arange(T - 7)])[None].repeat(B, 0).astype(np.int32))
    return batch


def _loss(model, cfg, params, batch):
    """MLM + NSP cross-entropy (BERT) or next-token cross-entropy (GPT-2), written independently here."""
    if cfg.is_bert:
        out = model.apply({"params": params}, batch["input_ids"], attention_mask=batch["input_mask"],
                          token_type_ids=batch["segment_ids"], masked_lm_positions=batch["masked_lm_positions"])
        w = batch["masked_lm_weights"]
        mlm = optax.softmax_cross_entropy_with_integer_labels(out.mlm_logits, batch["masked_lm_ids"])
        nsp = optax.softmax_cross_entropy_with_integer_labels(out.nsp_logits, batch["next_sentence_labels"])
        return (mlm * w).sum() / w.sum() + nsp.mean()
    out = model.apply({"params": params}, batch["input_ids"], segment_ids=batch["segment_ids"],
                      position_ids=batch["position_ids"])
    return optax.softmax_cross_entropy_with_integer_labels(out.logits[:, :-1], batch["input_ids"][:, 1:]).mean()


@pytest.mark.parametrize("name,scan", [("bert-tiny", False), ("gpt2", True)])
def test_sharded_init_and_same_loss_and_grads_as_one_device(name, scan):
    cfg = configs.get(name).replace(**TINY, scan_layers=scan)
    model = models.from_config(cfg)
    batch = _batch(cfg)
    init_kw = {"masked_lm_positions": batch["masked_lm_positions"]} if cfg.is_bert else {}

    def init(rng):
        return model.init(rng, batch["input_ids"], **init_kw)

    mesh = sharding.make_mesh((2, 2, 2))
    with nn.logical_axis_rules(sharding.RULES), jax.set_mesh(mesh):
        abstract = jax.eval_shape(init, jax.random.key(0))
        specs = nn.get_partition_spec(abstract)
        out_shardings = nn.logical_to_mesh_sharding(specs, mesh, sharding.RULES)
        if cfg.is_bert:  # the trainer's path: parameters born sharded
            params = nn.unbox(jax.jit(init, out_shardings=out_shardings)(jax.random.key(0)))["params"]
        else:  # host weights placed onto the same shardings (compiling init twice only costs time)
            params = jax.device_put(random_params(model, batch["input_ids"], std=0.05),
                                    nn.unbox(out_shardings)["params"])
        stack = params["encoder"]["layer_0"] if not scan else params["h"]["layers"]
        lead = () if not scan else (None,)
        # Weights really are split: embed over fsdp, heads over tensor.
        assert stack["attention"]["qkv"]["kernel"].sharding.spec == PartitionSpec(
            *lead, sharding.FSDP, None, sharding.TENSOR, None)
        assert stack["mlp"]["wi"]["kernel"].sharding.spec == PartitionSpec(*lead, sharding.FSDP, sharding.TENSOR)
        sharded_batch = {k: jax.device_put(v, sharding.batch_sharding(mesh, v.ndim)) for k, v in batch.items()}
        loss8, grads8 = jax.jit(jax.value_and_grad(lambda p, b: _loss(model, cfg, p, b)))(params, sharded_batch)
        assert isinstance(grads8["wte" if cfg.is_gpt else "embeddings"], dict)

    one = jax.devices()[0]
    params1 = jax.device_put(jax.device_get(params), one)
    grad_fn = jax.jit(jax.value_and_grad(lambda p, b: _loss(model, cfg, p, b)))
    loss1, grads1 = grad_fn(params1, jax.device_put(batch, one))
    assert np.isfinite(float(loss1)) and float(loss1) > 1.0
    np.testing.assert_allclose(float(loss8), float(loss1), rtol=0, atol=1e-5)
    flat1 = jax.tree_util.tree_leaves_with_path(jax.device_get(grads1))
    flat8 = dict(jax.tree_util.tree_leaves_with_path(jax.device_get(grads8)))
    assert len(flat1) == len(flat8)
    for path, g in flat1:
        np.testing.assert_allclose(flat8[path], g, rtol=0, atol=1e-5, err_msg=jax.tree_util.keystr(path))
    assert max(float(np.abs(g).max()) for _, g in flat1) > 1e-3  # gradients are not trivially zero
