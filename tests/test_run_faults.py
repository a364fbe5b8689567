"""Runs under faults and bad input: one writer per output_dir, every checkpoint kept with keep_checkpoint_max=0,
damaged checkpoints detected and survived, one metrics record per step, settings and data checked before the
first step, SIGTERM during start-up, a finished run re-run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from bertgpt_jax.training import checkpointing, metrics, run_lock
from bertgpt_jax.training import state as state_lib
from tests import pipeline_stores
from tests.training_helpers import run_pretraining, tiny_config, tiny_config_file


def _cfg(tmp_dir, name, **kw):
    base = dict(output_dir=os.path.join(tmp_dir, name), model=tiny_config_file(tmp_dir), dataset="synthetic",
                max_seq_length=32, max_predictions_per_seq=5, train_batch_size=16, eval_batch_size=16,
                learning_rate=3e-3, num_train_steps=6, num_warmup_steps=2, log_every_steps=1,
                save_checkpoints_steps=2, keep_checkpoint_max=0, mesh_shape=(8, 1, 1), do_eval=True,
                max_eval_steps=1, progress_bar=False, tensorboard=False, plot=False)
    base.update(kw)
    return base


def _records(output_dir):
    return metrics.read_jsonl(os.path.join(output_dir, "metrics.jsonl"))


# A step whose time included a save would take at least this long; the steps themselves take well under a
# second, though the save's background write (Orbax's thread) competes with the next step for a loaded host's cores.
SLOW_SAVE_SECONDS = 3.0


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("finished"))
    cfg = _cfg(tmp, "run")
    real_save = checkpointing.Checkpointer.save

    def slow_save(self, *args, **kw):  # a save as slow as a large model's, to see where its time goes
        time.sleep(SLOW_SAVE_SECONDS)
        return real_save(self, *args, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(checkpointing.Checkpointer, "save", slow_save)
        return cfg, run_pretraining(**cfg)


def _copy_run(cfg, tmp_path, name):
    out = str(tmp_path / name)
    shutil.copytree(cfg["output_dir"], out)
    return {**cfg, "output_dir": out}


def _largest_file(root):
    files = [os.path.join(d, n) for d, _, names in os.walk(root) for n in names]
    return max(files, key=os.path.getsize)


def test_keep_checkpoint_max_zero_keeps_every_checkpoint_with_checksums(finished):
    cfg, result = finished
    assert result["final_step"] == 6
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(cfg["output_dir"]))
    assert ckpt.all_steps() == [2, 4, 6]
    for step in (2, 4, 6):
        listed = json.load(open(os.path.join(ckpt.step_dir(step), checkpointing.CHECKSUMS)))["files"]
        assert any(name.startswith("params") for name in listed) and len(listed) > 3
        assert checkpointing.verify_checksums(ckpt.step_dir(step)) is None
    ckpt.close()
    with pytest.raises(ValueError, match="keep_checkpoint_max -1 must be >= 0"):
        checkpointing.Checkpointer(checkpointing.checkpoint_dir(cfg["output_dir"]), max_to_keep=-1)


def test_save_time_is_not_counted_as_step_time(finished):
    cfg, _ = finished
    train = {r["step"]: r for r in _records(cfg["output_dir"]) if "train/loss" in r}
    assert sorted(train) == [1, 2, 3, 4, 5, 6]
    # Steps 2, 4 and 6 save a checkpoint (each save slowed down by SLOW_SAVE_SECONDS): no step's time may
    # include one, nor a tokens/s or MFU figure derived from it.
    step_times = {s: r["train/step_time"] for s, r in train.items()}
    assert max(step_times.values()) < SLOW_SAVE_SECONDS * 0.8, step_times
    for r in train.values():
        assert r["train/tokens_per_sec"] == pytest.approx(16 * 32 / r["train/step_time"], rel=1e-6)


def test_rerunning_a_finished_run_says_so_and_adds_no_record(finished, tmp_path, capsys):
    cfg, result = finished
    again_cfg = _copy_run(cfg, tmp_path, "again")
    before = _records(again_cfg["output_dir"])
    capsys.readouterr()
    again = run_pretraining(**again_cfg)
    out = capsys.readouterr().out
    assert "training already complete" in out and "at step 6" in out, out
    assert "evaluated before" in out
    assert again["eval/loss"] == result["eval/loss"] and again["final_step"] == 6
    assert _records(again_cfg["output_dir"]) == before  # no duplicate eval record


def _flip_byte(path):
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def test_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(finished, tmp_path, capsys):
    cfg, _ = finished
    run = _copy_run(cfg, tmp_path, "damaged")
    ckpt_dir = checkpointing.checkpoint_dir(run["output_dir"])
    damaged_file = _largest_file(os.path.join(ckpt_dir, "6", "params"))
    _flip_byte(damaged_file)
    os.makedirs(os.path.join(ckpt_dir, "8"))  # an empty step folder, newest of all
    # Metrics as an interrupted run leaves them: steps 5 and 6 are logged again when redone from step 4.
    capsys.readouterr()
    result = run_pretraining(**run)
    out = capsys.readouterr().out
    assert result["resumed_from"] == 4 and result["final_step"] == 6
    assert "8 is damaged" in out and "is empty" in out
    assert f"{damaged_file} does not match its recorded SHA-256" in out
    assert len(os.listdir(os.path.join(run["output_dir"], checkpointing.DAMAGED_DIR))) == 2
    ckpt = checkpointing.Checkpointer(ckpt_dir)
    assert ckpt.all_steps() == [2, 4, 6] and checkpointing.verify_checksums(ckpt.step_dir(6)) is None
    ckpt.close()
    # Redone from step 4: the same losses as the undamaged run, and one record per step.
    train = [r for r in _records(run["output_dir"]) if "train/loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    expected = {r["step"]: r["train/loss"] for r in _records(cfg["output_dir"]) if "train/loss" in r}
    assert {r["step"]: r["train/loss"] for r in train} == expected


def test_damaged_checkpoint_stops_the_run_by_flag_and_every_damage_is_named(finished, tmp_path):
    cfg, _ = finished
    run = _copy_run(cfg, tmp_path, "stop")
    step_dir = os.path.join(checkpointing.checkpoint_dir(run["output_dir"]), "6")
    damaged_file = _largest_file(os.path.join(step_dir, "params"))
    _flip_byte(damaged_file)
    with pytest.raises(checkpointing.CheckpointDamagedError, match=f"{damaged_file} does not match .*fallback"):
        run_pretraining(**{**run, "on_damaged_checkpoint": "stop"})
    with pytest.raises(checkpointing.CheckpointDamagedError, match="init_checkpoint .*/6 is damaged"):
        checkpointing.restore_params(run["output_dir"], None)  # --init_checkpoint verifies too
    with open(damaged_file, "r+b") as f:
        f.truncate(os.path.getsize(damaged_file) - 10)
    assert "bytes were written" in checkpointing.verify_checksums(step_dir)
    shutil.rmtree(os.path.join(step_dir, "params"))
    assert "is missing" in checkpointing.verify_checksums(step_dir)


def test_a_second_run_in_the_same_output_dir_is_refused(tmp_path):
    out = str(tmp_path / "shared")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from bertgpt_jax.training.run_lock import RunLock; "
         "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)", out],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(run_lock.RunLockedError, match=f"in use by process {holder.pid} on host .*delete"):
            run_pretraining(**_cfg(str(tmp_path), "shared"))
        assert not os.path.exists(os.path.join(out, "checkpoints"))
    finally:
        holder.kill()
        holder.wait()
    with run_lock.RunLock(out):  # the kernel released the dead holder's lock
        pass


def test_bad_settings_fail_before_any_work(tmp_path):
    for change, message in ((dict(clip_grad_norm=-1.0), "clip_grad_norm must be >= 0"),
                            (dict(dropout=1.5), r"dropout must lie in \[0, 1\)"),
                            (dict(max_eval_steps=0), "max_eval_steps must be positive"),
                            (dict(keep_checkpoint_max=-1), "keep_checkpoint_max must be >= 0")):
        cfg = _cfg(str(tmp_path), "bad", **change)
        with pytest.raises(ValueError, match=message):
            run_pretraining(**cfg)
        assert not os.path.exists(cfg["output_dir"])


def _store(tmp_path, validation_docs):
    rng = np.random.default_rng(0)
    store = pipeline_stores.write_wordpiece_store(str(tmp_path / "store"), {
        "train": pipeline_stores.random_documents(rng, 40, (3, 6), (4, 10)),
        "validation": pipeline_stores.random_documents(rng, validation_docs, (3, 6), (4, 10))})
    model = str(tmp_path / "config.json")
    tiny_config().replace(vocab_size=pipeline_stores.VOCAB_SIZE).save_hf(model)
    return store, model


def test_unusable_eval_data_or_another_tokenizer_fail_before_the_first_step(tmp_path):
    store, model = _store(tmp_path, validation_docs=0)
    cfg = _cfg(str(tmp_path), "noeval", model=model, dataset=store)
    with pytest.raises(ValueError, match="evaluation .* cannot run: split 'validation' .* is empty.*do_eval=false"):
        run_pretraining(**cfg)
    assert not os.path.exists(os.path.join(cfg["output_dir"], "checkpoints"))
    other = tmp_path / "other_vocab.txt"
    other.write_text("\n".join(pipeline_stores.SPECIALS + [f"x{i}" for i in range(200)]) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="another tokenizer .* than vocab_file"):
        run_pretraining(**{**cfg, "do_eval": False, "vocab_file": str(other)})
    assert not os.path.exists(os.path.join(cfg["output_dir"], "checkpoints"))


def test_sigterm_during_start_up_ends_the_run_cleanly(tmp_path, monkeypatch, capsys):
    real = state_lib.create_state

    def create_then_sigterm(*args, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kw)

    monkeypatch.setattr(state_lib, "create_state", create_then_sigterm)
    cfg = _cfg(str(tmp_path), "early")
    result = run_pretraining(**cfg)
    assert result["stopped_by"] == "sigterm" and result["final_step"] == 0
    assert "SIGTERM during start-up" in capsys.readouterr().out
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(cfg["output_dir"]))
    assert ckpt.all_steps() == []
    ckpt.close()


def test_a_torn_last_metrics_line_is_skipped_and_ended(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "train/loss": 2.0}\n{"step": 2, "train/loss": 1.5}\n{"step": 3, "train/lo',
                    encoding="utf-8")
    assert [r["step"] for r in metrics.read_jsonl(str(path))] == [1, 2]
    writer = metrics.MetricsWriter(str(tmp_path), tensorboard=False)
    writer.write(3, {"train/loss": 1.25})
    assert writer.supersede_after(2) == 1  # a resume from step 2 drops step 3's record (and the torn line)
    writer.write(3, {"train/loss": 1.0})
    writer.close()
    assert metrics.read_jsonl(str(path)) == [{"step": 1, "train/loss": 2.0}, {"step": 2, "train/loss": 1.5},
                                             {"step": 3, "train/loss": 1.0}]
    assert metrics.plot_loss_curve(str(path), str(tmp_path / "curve.png"))
