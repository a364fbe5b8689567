"""Two JAX processes (4 CPU devices each, collectives over loopback) train like one process with 8: each
reads its share of the batches from a token store, with dropout on."""

import json
import os
import socket
import subprocess
import sys

import numpy as np

from tests import pipeline_stores
from tests.training_helpers import run_pretraining, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(path):
    with open(path) as f:
        return {r["step"]: r["train/loss"] for r in map(json.loads, f) if "train/loss" in r}


def test_two_processes_give_the_losses_of_one(tmp_path):
    # From a token store, so each process reads its own share of every global batch through the Grain
    # pipeline, and with dropout on, whose masks must not depend on how the batch is split.
    rng = np.random.default_rng(0)
    store = pipeline_stores.write_wordpiece_store(str(tmp_path / "store"), {
        "train": pipeline_stores.random_documents(rng, 60, (3, 8), (4, 14)),
        "validation": pipeline_stores.random_documents(rng, 8, (3, 8), (4, 14))})
    model = str(tmp_path / "config.json")
    tiny_config(dropout=0.1).replace(vocab_size=pipeline_stores.VOCAB_SIZE).save_hf(model)
    common = dict(model=model, dataset=store, max_seq_length=32, max_predictions_per_seq=5,
                  train_batch_size=16, num_train_steps=4, num_warmup_steps=1, learning_rate=3e-3,
                  log_every_steps=1, save_checkpoints_steps=2)
    flags = [f"--{k}={v}" for k, v in common.items()] + [
        "--mesh_shape=4,2,1", "--do_eval=false", "--progress_bar=false", "--tensorboard=false"]
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    out_dir = tmp_path / "two"
    procs = [subprocess.Popen([sys.executable, "-m", "bertgpt_jax.pretrain", *flags, f"--output_dir={out_dir}",
                               f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
                              cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert "'processes': 2" not in outputs[1]  # only process 0 reports
    two = _losses(out_dir / "metrics.jsonl")

    result = run_pretraining(output_dir=str(tmp_path / "one"), mesh_shape=(4, 2, 1), do_eval=False,
                             progress_bar=False, tensorboard=False, plot=False, **common)
    assert result["processes"] == 1
    one = _losses(tmp_path / "one" / "metrics.jsonl")
    assert sorted(two) == sorted(one) == [1, 2, 3, 4]
    np.testing.assert_allclose([two[s] for s in range(1, 5)], [one[s] for s in range(1, 5)], rtol=1e-5)
    assert len(set(two.values())) == 4  # every step trained on other batches
    # Both processes wrote their shards of one checkpoint.
    assert sorted(n for n in os.listdir(out_dir / "checkpoints") if n.isdigit()) == ["2", "4"]
