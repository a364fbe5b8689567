"""The sharded train step: learning, mesh-independence, gradient accumulation, non-finite guard.

Each end-to-end test runs with both kernel paths: ``cpu`` (the custom gradients XLA:CPU runs) and ``xla``
(XLA's own autodiff, what TPUs and GPUs run).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bertgpt_jax import sharding
from bertgpt_jax.training import optimizers, schedules
from bertgpt_jax.training import state as state_lib
from bertgpt_jax.training import step as step_lib
from bertgpt_jax.training.inputs import place
from tests.training_helpers import synthetic_task, tiny_config

SEQ, PRED, BATCH = 32, 5, 16
KERNELS = ["cpu", "xla"]


def _train(model_type, mesh_shape, steps, *, kernels="cpu", devices=None, accum=1, lr=2e-3, optimizer="adamw",
           dropout=0.0, poison_at=None, on_step=None, grad_norms=None, wrap_task=None):
    task = synthetic_task(tiny_config(model_type, dropout=dropout, kernels=kernels), SEQ, PRED)
    if wrap_task is not None:
        wrap_task(task)
    mesh = sharding.make_mesh(mesh_shape, devices=devices)
    sched = schedules.warmup_then_decay(lr, 100, 5)
    opt = optimizers.make_optimizer(optimizer, sched)
    _, shardings = state_lib.abstract_state(task, opt, mesh)
    state = state_lib.create_state(task, opt, mesh, seed=0, shardings=shardings)
    it = task.train_batches(BATCH, seed=0)
    bs = step_lib.batch_shardings(mesh, task.example_batch(BATCH))
    fn = step_lib.jit_train_step(step_lib.make_train_step(task, opt, sched, step_lib.StepConfig(grad_accum_steps=accum)),
                                 mesh, shardings, bs)
    losses = []
    for i in range(steps):
        batch = next(it)
        if i == poison_at:  # a NaN masked-LM weight poisons the loss and the gradients
            batch["masked_lm_weights"] = batch["masked_lm_weights"].copy()
            batch["masked_lm_weights"][0, 0] = np.nan
        state, m = fn(state, place(batch, mesh, BATCH))
        losses.append(float(m["loss"]))
        if grad_norms is not None:
            grad_norms.append(float(m["grad_norm"]))
        if on_step is not None:
            on_step(state)
    return np.array(losses), state, m


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("model_type,steps,lr,ratio", [("bert", 60, 1e-2, 0.88), ("gpt2", 40, 5e-3, 0.75)])
def test_loss_falls(model_type, steps, lr, ratio, kernels):
    losses, state, _ = _train(model_type, (2, 2, 2), steps, lr=lr, dropout=0.1, kernels=kernels)
    assert int(state.step) == steps
    assert losses[-8:].mean() < ratio * losses[:8].mean(), losses


def test_params_are_born_sharded():
    cfg = tiny_config("gpt2")
    task = synthetic_task(cfg, SEQ)
    mesh = sharding.make_mesh((2, 2, 2))
    opt = optimizers.make_optimizer("adamw", 1e-3)
    abstract, shardings = state_lib.abstract_state(task, opt, mesh)
    wte = shardings.params["wte"]["embedding"]
    assert wte.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    state = state_lib.create_state(task, opt, mesh, seed=0, shardings=shardings)
    table = state.params["wte"]["embedding"]
    assert table.sharding == wte
    assert {s.data.shape for s in table.addressable_shards} == {(cfg.vocab_size // 2, cfg.hidden_size // 2)}
    # Adam moments follow their parameters' layout.
    mu = state.opt_state[0].mu["wte"]["embedding"]
    assert mu.sharding.spec == wte.spec


@pytest.mark.parametrize("kernels", KERNELS)
def test_mesh_shape_does_not_change_losses_or_gradients_with_dropout_on(kernels):
    # One device vs a data x fsdp x tensor = 2x2x2 mesh, dropout on (its masks do not depend on the mesh).
    n1, n8 = [], []
    one, s1, _ = _train("bert", (1, 1, 1), 3, devices=jax.devices()[:1], kernels=kernels, dropout=0.1,
                        grad_norms=n1)
    eight, s8, _ = _train("bert", (2, 2, 2), 3, kernels=kernels, dropout=0.1, grad_norms=n8)
    np.testing.assert_allclose(one, eight, rtol=2e-5)
    np.testing.assert_allclose(n1, n8, rtol=2e-5)
    assert one[-1] < one[0]
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s8.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_accumulation_gives_the_gradient_of_the_whole_batch():
    # Two accumulated microbatches vs the whole batch at once (dropout off: microbatches draw their own
    # masks). The gradient norm is compared, not only the loss: Adam would hide a scaled gradient.
    whole_norms, acc_norms = [], []
    one = jax.devices()[:1]
    whole, s1, _ = _train("bert", (1, 1, 1), 3, devices=one, grad_norms=whole_norms)
    acc, s2, _ = _train("bert", (1, 1, 1), 3, devices=one, accum=2, grad_norms=acc_norms)
    np.testing.assert_allclose(whole, acc, rtol=2e-5)
    np.testing.assert_allclose(whole_norms, acc_norms, rtol=2e-5)
    for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


@jax.custom_vjp
def _gradient_bomb(x, armed):
    """The identity; its gradient is infinite when ``armed`` (the loss stays finite)."""
    return x


def _bomb_fwd(x, armed):
    return x, armed


def _bomb_bwd(armed, g):
    return g * jnp.where(armed > 0, jnp.inf, 1.0).astype(g.dtype), jnp.zeros_like(armed)


_gradient_bomb.defvjp(_bomb_fwd, _bomb_bwd)


def test_a_finite_loss_with_a_non_finite_gradient_leaves_weights_untouched():
    def arm(task):
        real = task.loss_sums

        def loss_sums(params, batch, **kw):
            armed = (batch["masked_lm_weights"][0, 0] == 2.0).astype(jnp.float32)
            params = {**params, "pooler": jax.tree.map(lambda p: _gradient_bomb(p, armed), params["pooler"])}
            return real(params, batch, **kw)

        task.loss_sums = loss_sums

    seen = []
    original_train_batches = None

    def poison_weights(task):
        nonlocal original_train_batches
        arm(task)
        original_train_batches = task.train_batches

        def train_batches(*a, **k):
            it = original_train_batches(*a, **k)
            for n in range(10**9):
                batch = next(it)
                if n == 2:  # a weight of 2 keeps the loss finite and arms the infinite gradient
                    batch["masked_lm_weights"] = batch["masked_lm_weights"].copy()
                    batch["masked_lm_weights"][0, 0] = 2.0
                yield batch

        task.train_batches = train_batches

    losses, after, m = _train("bert", (8, 1, 1), 3, wrap_task=poison_weights, on_step=lambda st: seen.append(
        jax.tree.map(np.asarray, (st.params, st.opt_state))))
    assert np.isfinite(losses).all() and not np.isfinite(float(m["grad_norm"]))
    assert not bool(m["finite"]) and int(after.step) == 3
    _assert_skipped(seen[1], after)


def _assert_skipped(before, after):
    """The step was skipped: parameters and moments as ``before`` (params, opt_state); the optimizer's count
    still advanced with the train step, so the schedule's next rate is the one the step logs."""
    before_params, before_opt = before
    for a, b in zip(jax.tree.leaves(before_params), jax.tree.leaves(after.params)):
        np.testing.assert_array_equal(a, np.asarray(b))
    for name in ("mu", "nu"):
        moments = jax.tree.leaves(optax.tree_utils.tree_get(before_opt, name))
        assert moments
        for a, b in zip(moments, jax.tree.leaves(optax.tree_utils.tree_get(after.opt_state, name))):
            np.testing.assert_array_equal(a, np.asarray(b))
    counts = [int(c) for _, c in optax.tree_utils.tree_get_all_with_path(after.opt_state, "count")]
    assert counts and all(c == int(after.step) for c in counts), counts


@pytest.mark.parametrize("kernels", KERNELS)
def test_non_finite_step_leaves_weights_untouched(kernels):
    seen = []
    _, after, m = _train("bert", (8, 1, 1), 3, kernels=kernels, poison_at=2, on_step=lambda st: seen.append(
        jax.tree.map(np.asarray, (st.params, st.opt_state))))
    assert not bool(m["finite"]) and not np.isfinite(float(m["loss"]))
    assert int(after.step) == 3
    _assert_skipped(seen[1], after)  # seen[1]: after the two good steps
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(after.params))


def _step_jaxpr(kernels: str) -> str:
    task = synthetic_task(tiny_config("bert", kernels=kernels), SEQ, PRED)
    opt = optimizers.make_optimizer("adamw", 1e-3)
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    abstract, _ = state_lib.abstract_state(task, opt, mesh)
    batch = jax.tree.map(jnp.asarray, task.example_batch(BATCH))
    return str(jax.make_jaxpr(step_lib.make_train_step(task, opt, lambda s: 1e-3))(abstract, batch))


def test_the_xla_path_compiles_no_cpu_conditionals():
    # What a TPU or GPU compiles: one conditional (the non-finite guard), none of the CPU path's copies.
    assert _step_jaxpr("xla").count("cond[") == 1
    assert _step_jaxpr("cpu").count("cond[") > 1


def test_kernels_are_chosen_for_the_platform_the_model_is_built_for():
    from bertgpt_jax import models

    cfg = tiny_config("bert")
    assert models.resolve_kernels(cfg, "tpu").kernels == "xla"
    assert models.resolve_kernels(cfg, "cpu").kernels == "cpu"
    assert models.resolve_kernels(cfg.replace(dtype="bfloat16"), "gpu").kernels == "cudnn"
    assert models.resolve_kernels(cfg, "gpu").kernels == "xla"  # cuDNN flash attention needs 16-bit inputs
    assert models.resolve_kernels(cfg.replace(kernels="xla"), "cpu").kernels == "xla"  # an explicit choice stays
    assert models.from_config(cfg, platform="tpu").cfg.kernels == "xla"
