"""Runs of the loop: bitwise resume after SIGTERM, restore onto other meshes, half-written checkpoints,
best-checkpoint keeping, non-finite handling, metrics files."""

import json
import os
import signal

import jax
import numpy as np
import pytest

from bertgpt_jax import sharding
from bertgpt_jax.tasks.bert_pretraining import BertPretraining
from bertgpt_jax.training import checkpointing, inputs, loop, optimizers, schedules
from bertgpt_jax.training import state as state_lib
from tests import pipeline_stores
from tests.training_helpers import run_pretraining, synthetic_task, tiny_config, tiny_config_file


def _cfg(tmp_dir, name, **kw):
    base = dict(output_dir=os.path.join(tmp_dir, name), model=tiny_config_file(tmp_dir), dataset="synthetic",
                max_seq_length=32, max_predictions_per_seq=5, train_batch_size=16, eval_batch_size=16,
                learning_rate=3e-3, num_train_steps=10, num_warmup_steps=2, log_every_steps=1,
                save_checkpoints_steps=4, mesh_shape=(8, 1, 1), do_eval=False, progress_bar=False,
                tensorboard=False, plot=False)
    base.update(kw)
    return base


def _losses(output_dir):
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}, records


class _Hook:
    """Wraps the synthetic train iterator: calls ``action(n)`` before handing out batch ``n``."""

    def __init__(self, it, action):
        self.it, self.action, self.n = it, action, 0

    def __next__(self):
        batch = next(self.it)
        batch = self.action(self.n, batch) or batch
        self.n += 1
        return batch

    def get_state(self):
        return self.it.get_state()

    def set_state(self, s):
        self.it.set_state(s)


def _hooked(monkeypatch, action):
    real = BertPretraining.train_batches
    monkeypatch.setattr(BertPretraining, "train_batches", lambda *a, **k: _Hook(real(*a, **k), action))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("full"))
    cfg = _cfg(tmp, "full", do_eval=True, eval_every_steps=5, max_eval_steps=2, best_metric="eval/loss",
               tensorboard=True, plot=True)
    result = run_pretraining(**cfg)
    return cfg, result


def test_uninterrupted_run_writes_metrics_checkpoints_and_best(uninterrupted):
    cfg, result = uninterrupted
    assert result["stopped_by"] == "end" and result["final_step"] == 10
    losses, records = _losses(cfg['output_dir'])
    assert sorted(losses) == list(range(1, 11))
    for key in ("train/loss", "train/learning_rate", "train/tokens_per_sec", "train/mfu", "train/grad_norm"):
        assert all(key in r for r in records if "train/loss" in r), key
    evals = {r["step"]: r for r in records if "eval/loss" in r}
    assert sorted(evals) == [5, 10]
    for r in evals.values():
        assert 0.0 <= r["eval/masked_lm_accuracy"] <= 1.0 and 0.0 <= r["eval/next_sentence_accuracy"] <= 1.0
    assert 0 < records[0]["train/mfu"] < 1.5 and records[0]["train/tokens_per_sec"] > 0
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(cfg['output_dir']))
    assert ckpt.all_steps() == [4, 8, 10]
    ckpt.close()
    best_step = min(evals, key=lambda s: evals[s]["eval/loss"])
    assert os.listdir(os.path.join(cfg['output_dir'], "best_checkpoint")) == [str(best_step)]
    assert os.path.getsize(os.path.join(cfg['output_dir'], "loss_curve.png")) > 1000
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(os.path.join(cfg['output_dir'], "tensorboard")))


def test_sigterm_saves_and_resume_is_bitwise_identical(uninterrupted, tmp_path, monkeypatch):
    full_cfg, _ = uninterrupted
    cfg = _cfg(str(tmp_path), "resumed", model=full_cfg["model"])

    def preempt(n, batch):
        if n == 6:
            os.kill(os.getpid(), signal.SIGTERM)

    _hooked(monkeypatch, preempt)
    first = run_pretraining(**cfg)
    assert first["stopped_by"] == "sigterm"
    stopped_at = first["final_step"]
    assert 6 <= stopped_at < 10
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(cfg['output_dir']))
    assert ckpt.latest_step() == stopped_at
    ckpt.close()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed after the run

    monkeypatch.undo()
    second = run_pretraining(**cfg)
    assert second["resumed_from"] == stopped_at and second["final_step"] == 10
    expected, _ = _losses(full_cfg['output_dir'])
    got, _ = _losses(cfg['output_dir'])
    assert sorted(got) == list(range(1, 11))
    # Same parameters, optimizer state, dropout RNG and data position: the very same floats.
    assert [got[s] for s in range(1, 11)] == [expected[s] for s in range(1, 11)]


def test_resume_from_a_token_store_is_bitwise_identical(tmp_path, monkeypatch):
    # As above, but the batches come from a real token store through Grain: the iterator's position is
    # saved with the checkpoint and restored with it.
    rng = np.random.default_rng(0)
    store = pipeline_stores.write_wordpiece_store(str(tmp_path / "store"), {
        "train": pipeline_stores.random_documents(rng, 80, (3, 8), (4, 14)),
        "validation": pipeline_stores.random_documents(rng, 10, (3, 8), (4, 14))})
    model = str(tmp_path / "config.json")
    tiny_config().replace(vocab_size=pipeline_stores.VOCAB_SIZE).save_hf(model)
    settings = dict(model=model, dataset=store, num_train_steps=8, save_checkpoints_steps=3)
    full = _cfg(str(tmp_path), "full", **settings)
    run_pretraining(**full)

    def preempt(n, batch):
        if n == 5:
            os.kill(os.getpid(), signal.SIGTERM)

    cfg = _cfg(str(tmp_path), "resumed", **settings)
    # The Grain iterator itself must reach the checkpointer (its Orbax handler saves one state file per
    # process), so the preemption hooks the placing of batch n instead of wrapping the iterator.
    real_place, placed = inputs.place, []

    def place(batch, *args):
        preempt(len(placed), batch)
        placed.append(1)
        return real_place(batch, *args)

    monkeypatch.setattr(inputs, "place", place)
    first = run_pretraining(**cfg)
    assert first["stopped_by"] == "sigterm" and 5 <= first["final_step"] < 8
    monkeypatch.undo()
    second = run_pretraining(**cfg)
    assert second["resumed_from"] == first["final_step"] and second["final_step"] == 8
    expected, _ = _losses(full['output_dir'])
    got, _ = _losses(cfg['output_dir'])
    assert [got[s] for s in range(1, 9)] == [expected[s] for s in range(1, 9)]
    assert len(set(expected.values())) == 8  # the batches differ from step to step

def _abstract(mesh):
    """The run's state layout on ``mesh`` (same model and optimizer as ``_cfg``)."""
    opt = optimizers.make_optimizer("adamw", schedules.warmup_then_decay(3e-3, 10, 2))
    return state_lib.abstract_state(synthetic_task(tiny_config(), 32, 5), opt, mesh)


@pytest.mark.parametrize("mesh_shape,n_devices", [((2, 2, 2), 8), ((1, 1, 1), 1)])
def test_restore_onto_another_mesh(uninterrupted, mesh_shape, n_devices):
    full_cfg, _ = uninterrupted
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(full_cfg['output_dir']))
    ref = ckpt.restore(_abstract(sharding.make_mesh((8, 1, 1)))[0])
    abstract, shardings = _abstract(sharding.make_mesh(mesh_shape, devices=jax.devices()[:n_devices]))
    other = ckpt.restore(abstract)
    ckpt.close()
    assert int(other.step) == 10
    for a, b, s in zip(jax.tree.leaves(ref.params), jax.tree.leaves(other.params), jax.tree.leaves(shardings.params)):
        assert b.sharding == s
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_half_written_checkpoint_is_never_restored(uninterrupted, tmp_path):
    import shutil

    full_cfg, _ = uninterrupted
    root = str(tmp_path / "ckpts")
    shutil.copytree(checkpointing.checkpoint_dir(full_cfg['output_dir']), root)
    # What a crash mid-save leaves: a temporary folder with part of the items, never renamed.
    partial = os.path.join(root, "12.orbax-checkpoint-tmp-1234567")
    os.makedirs(os.path.join(partial, "params"))
    with open(os.path.join(partial, "params", "garbage"), "wb") as f:
        f.write(b"\0" * 100)
    ckpt = checkpointing.Checkpointer(root)
    assert ckpt.latest_step() == 10
    assert int(ckpt.restore(_abstract(sharding.make_mesh((8, 1, 1)))[0]).step) == 10
    ckpt.close()


def test_init_checkpoint_from_an_earlier_run(uninterrupted, tmp_path):
    full_cfg, _ = uninterrupted
    abstract, _ = _abstract(sharding.make_mesh((8, 1, 1)))
    params = checkpointing.restore_params(full_cfg['output_dir'], abstract.params)
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(full_cfg['output_dir']))
    final = ckpt.restore(abstract)
    ckpt.close()
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(final.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(FileNotFoundError, match="holds no complete checkpoint"):
        checkpointing.restore_params(str(tmp_path), abstract.params)


def _poison(n, batch):
    if n == 3:
        batch["masked_lm_weights"] = batch["masked_lm_weights"].copy()
        batch["masked_lm_weights"][0, 0] = np.inf
    return batch


def test_non_finite_loss_stops_or_skips(tmp_path, monkeypatch, capsys):
    _hooked(monkeypatch, _poison)
    with pytest.raises(loop.NonFiniteError, match="step 4: non-finite loss .* --nonfinite=skip"):
        run_pretraining(**_cfg(str(tmp_path), "stop", num_train_steps=6, save_checkpoints_steps=100))
    result = run_pretraining(**_cfg(str(tmp_path), "skip", num_train_steps=6, save_checkpoints_steps=100,
                                    nonfinite="skip"))
    assert result["skipped_steps"] == 1 and result["final_step"] == 6
    assert "--nonfinite=skip: 1 of the 6 steps of this run had a non-finite loss" in capsys.readouterr().out
    losses, records = _losses(os.path.join(str(tmp_path), "skip"))
    assert not np.isfinite(losses[4]) and all(np.isfinite(losses[s]) for s in (1, 2, 3, 5, 6))
    assert records[-1]["train/skipped_steps"] == 1


def test_init_checkpoint_from_a_real_hf_bert(minilm_dir):
    from bertgpt_jax import configs

    task = synthetic_task(configs.get(minilm_dir), 32, 5)
    mesh = sharding.make_mesh((2, 2, 2))
    opt = optimizers.make_optimizer("adamw", 1e-4)
    abstract, shardings = state_lib.abstract_state(task, opt, mesh)
    params = task.load_init_params(minilm_dir, abstract.params)
    state = state_lib.create_state(task, opt, mesh, seed=0, shardings=shardings)
    state = state_lib.with_params(state, params, shardings)
    from safetensors.numpy import load_file

    hf = load_file(os.path.join(minilm_dir, "model.safetensors"))
    key = next(k for k in hf if k.endswith("embeddings.word_embeddings.weight"))
    table = state.params["embeddings"]["word_embeddings"]["embedding"]
    np.testing.assert_array_equal(np.asarray(table), hf[key])
    assert table.sharding == shardings.params["embeddings"]["word_embeddings"]["embedding"]
    with pytest.raises(ValueError, match="init_checkpoint .* has hidden_size=384, but the model has"):
        synthetic_task(tiny_config(), 32, 5).load_init_params(minilm_dir, abstract.params)


def test_rerunning_a_finished_run_only_evaluates(uninterrupted, tmp_path):
    import shutil

    full_cfg, result = uninterrupted
    out = str(tmp_path / "again")
    shutil.copytree(full_cfg['output_dir'], out)
    again = run_pretraining(**{**full_cfg, "output_dir": out, "plot": False, "tensorboard": False})
    assert again["resumed_from"] == 10 and again["final_step"] == 10
    assert again["eval/loss"] == result["eval/loss"]  # the same parameters, the same validation batches
