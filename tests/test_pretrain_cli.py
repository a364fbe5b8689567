"""The pretrain CLI: help, flag errors, config errors that fail at once, and SIGTERM from outside."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.training_helpers import run_pretraining, tiny_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "bertgpt_jax.pretrain", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_help_explains_the_flags():
    out = _cli("--helpshort")
    assert out.returncode == 0
    assert "Pretrain BERT (MLM + NSP) or GPT-2" in out.stdout
    for flag in ("--model", "--bert_config_file", "--dataset", "--input_file", "--train_batch_size", "--mesh_shape",
                 "--init_checkpoint", "--grad_accum_steps", "--remat", "--optimizer", "--nonfinite"):
        assert flag in out.stdout, flag


def test_unknown_flag_and_missing_flags_fail_clearly():
    out = _cli("--model=bert-tiny", "--dataset=synthetic", "--output_dir=/tmp/x", "--train_batchsize=8")
    assert out.returncode != 0 and "Unknown command line flag 'train_batchsize'" in out.stderr
    out = _cli("--dataset=synthetic", "--output_dir=/tmp/x")
    assert out.returncode != 0 and "--model (or --bert_config_file) is required" in out.stderr
    out = _cli("--model=bert-tiny", "--bert_config_file=bert-base", "--dataset=synthetic", "--output_dir=/tmp/x")
    assert out.returncode != 0 and "disagree" in out.stderr


@pytest.mark.parametrize("changes,message", [
    (dict(train_batch_size=12), "microbatch of 12 examples .* not divisible by the 8 data-parallel shards"),
    (dict(train_batch_size=16, grad_accum_steps=4), "microbatch of 4 examples"),
    (dict(train_batch_size=10, grad_accum_steps=4), "train_batch_size 10 is not divisible by grad_accum_steps 4"),
    (dict(mesh_shape=(4, 1, 1)), "mesh shape data=4 x fsdp=1 x tensor=1 = 4 devices, but 8 are available"),
    (dict(mesh_shape=(3, -1, 1)), "does not divide the 8 devices"),
    (dict(max_seq_length=128), "max_seq_length 128 exceeds the model's position table .max_position_embeddings 64"),
    (dict(eval_batch_size=4), "eval_batch_size 4 is not divisible by the 8 data-parallel shards"),
    (dict(model="bert-huge"), "unknown model 'bert-huge'"),
    (dict(optimizer="sgd"), "optimizer 'sgd' is not one of"),
])
def test_bad_config_fails_before_any_work(tmp_path, changes, message):
    cfg = dict(output_dir=str(tmp_path / "out"), model=tiny_config_file(str(tmp_path)), dataset="synthetic",
               max_seq_length=32, max_predictions_per_seq=5, train_batch_size=16, eval_batch_size=16,
               num_train_steps=2, progress_bar=False)
    cfg.update(changes)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=message):
        run_pretraining(**cfg)
    assert time.perf_counter() - t0 < 20  # fails before compiling anything
    assert not os.path.exists(os.path.join(cfg["output_dir"], "metrics.jsonl"))


def test_sigterm_from_outside_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    out_dir = tmp_path / "run"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bertgpt_jax.pretrain", f"--model={tiny_config_file(str(tmp_path), 'gpt2')}",
         "--dataset=synthetic", f"--output_dir={out_dir}", "--max_seq_length=32", "--train_batch_size=4",
         "--num_train_steps=100000", "--num_warmup_steps=10", "--log_every_steps=1",
         "--save_checkpoints_steps=1000000", "--learning_rate=1e-3", "--progress_bar=false", "--do_eval=false",
         "--tensorboard=false"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics_path = out_dir / "metrics.jsonl"
    deadline = time.time() + 150
    while time.time() < deadline and not (metrics_path.exists() and metrics_path.read_text().count("\n") >= 3):
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "SIGTERM: saved checkpoint at step" in output
    steps = sorted(int(n) for n in os.listdir(out_dir / "checkpoints") if n.isdigit())
    last_logged = max(json.loads(line)["step"] for line in metrics_path.read_text().splitlines())
    assert len(steps) == 1 and steps[0] >= 3 and steps[0] >= last_logged
    assert (out_dir / "loss_curve.png").exists()
