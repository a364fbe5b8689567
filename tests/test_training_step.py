"""The sharded train step: learning, mesh-independence, gradient accumulation, non-finite guard."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertgpt_jax import models, sharding
from bertgpt_jax.training import optimizers, schedules, synthetic
from bertgpt_jax.training import state as state_lib
from bertgpt_jax.training import step as step_lib
from bertgpt_jax.training.inputs import place
from tests.training_helpers import tiny_config

SEQ, PRED, BATCH = 32, 5, 16


def _train(model_type, mesh_shape, steps, *, devices=None, accum=1, lr=2e-3, optimizer="adamw", dropout=0.0,
           batches=None, on_step=None):
    cfg = tiny_config(model_type, dropout=dropout)
    model = models.from_config(cfg)
    mesh = sharding.make_mesh(mesh_shape, devices=devices)
    sched = schedules.warmup_then_decay(lr, 100, 5)
    opt = optimizers.make_optimizer(optimizer, sched)
    _, shardings = state_lib.abstract_state(model, cfg.is_bert, opt, mesh, SEQ, PRED)
    state = state_lib.create_state(model, cfg.is_bert, opt, mesh, SEQ, seed=0, max_predictions=PRED,
                                   shardings=shardings)
    it = batches or synthetic.SyntheticIterator(model_type, BATCH, SEQ, cfg.vocab_size, max_predictions_per_seq=PRED)
    first = next(it)
    bs = step_lib.batch_shardings(mesh, {k: v.shape for k, v in first.items()})
    fn = step_lib.jit_train_step(step_lib.make_train_step(model, cfg.is_bert, opt, sched,
                                                          step_lib.StepConfig(grad_accum_steps=accum)),
                                 mesh, shardings, bs)
    losses, batch = [], first
    for _ in range(steps):
        state, m = fn(state, place(batch, mesh, BATCH, True))
        losses.append(float(m["loss"]))
        if on_step is not None:
            on_step(state)
        batch = next(it)
    return np.array(losses), state, m


@pytest.mark.parametrize("model_type,steps,lr,ratio", [("bert", 60, 1e-2, 0.88), ("gpt2", 40, 5e-3, 0.75)])
def test_loss_falls(model_type, steps, lr, ratio):
    losses, state, _ = _train(model_type, (2, 2, 2), steps, lr=lr, dropout=0.1)
    assert int(state.step) == steps
    assert losses[-8:].mean() < ratio * losses[:8].mean(), losses


def test_params_are_born_sharded():
    cfg = tiny_config("gpt2")
    model = models.from_config(cfg)
    mesh = sharding.make_mesh((2, 2, 2))
    opt = optimizers.make_optimizer("adamw", 1e-3)
    abstract, shardings = state_lib.abstract_state(model, False, opt, mesh, SEQ)
    wte = shardings.params["wte"]["embedding"]
    assert wte.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    state = state_lib.create_state(model, False, opt, mesh, SEQ, seed=0, shardings=shardings)
    table = state.params["wte"]["embedding"]
    assert table.sharding == wte
    assert {s.data.shape for s in table.addressable_shards} == {(cfg.vocab_size // 2, cfg.hidden_size // 2)}
    # Adam moments follow their parameters' layout.
    mu = state.opt_state[0].mu["wte"]["embedding"]
    assert mu.sharding.spec == wte.spec


def test_mesh_shape_and_accumulation_do_not_change_the_losses():
    # One device, whole batch vs a data x fsdp x tensor = 2x2x2 mesh with two accumulated microbatches.
    one, s1, _ = _train("bert", (1, 1, 1), 3, devices=jax.devices()[:1])
    eight, s8, _ = _train("bert", (2, 2, 2), 3, accum=2)
    np.testing.assert_allclose(one, eight, rtol=2e-5)
    assert one[-1] < one[0]
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


class _PoisonAt:
    """Synthetic batches, with a NaN masked-LM weight in batch ``index`` (poisons loss and gradients)."""

    def __init__(self, index):
        self.it = synthetic.SyntheticIterator("bert", BATCH, SEQ, 96, max_predictions_per_seq=PRED)
        self.index, self.n = index, 0

    def __next__(self):
        batch = next(self.it)
        if self.n == self.index:
            batch["masked_lm_weights"] = batch["masked_lm_weights"].copy()
            batch["masked_lm_weights"][0, 0] = np.nan
        self.n += 1
        return batch


def test_non_finite_step_leaves_weights_untouched():
    seen = []
    _, after, m = _train("bert", (8, 1, 1), 3, batches=_PoisonAt(2), on_step=lambda st: seen.append(
        jax.tree.map(np.asarray, (st.params, st.opt_state))))
    assert not bool(m["finite"]) and not np.isfinite(float(m["loss"]))
    assert int(after.step) == 3
    before_params, before_opt = seen[1]  # after the two good steps
    for a, b in zip(jax.tree.leaves(before_params), jax.tree.leaves(after.params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    for a, b in zip(jax.tree.leaves(before_opt), jax.tree.leaves(after.opt_state)):
        np.testing.assert_array_equal(a, np.asarray(b))
    assert bool(seen[0] is not None) and all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(after.params))
