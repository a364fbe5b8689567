"""Several real OS processes: together they read each example of an epoch exactly once."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from bertgpt_jax import data
from tests import pipeline_stores as ps

SEQ, N_WINDOWS = 8, 64
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tokens = np.arange(N_WINDOWS * SEQ, dtype=np.int64)
    path = ps.write_gpt_store(str(tmp_path_factory.mktemp("mp")), {"train": [tokens]}, vocab_size=70_000,
                              eos_id=69_999, num_shards=2)
    assert len(data.gpt_dataset(path, "train", seq_len=SEQ)) == N_WINDOWS  # builds the cache once
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(store, mode, num_processes, tmp_path):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    outs = [str(tmp_path / f"{mode}-{i}.json") for i in range(num_processes)]
    procs = [subprocess.Popen([sys.executable, "-m", "tests.pipeline_worker", store, mode, str(i),
                               str(num_processes), str(port), outs[i]], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(num_processes)]
    for p in procs:
        log = p.communicate(timeout=120)[0].decode(errors="replace")
        assert p.returncode == 0, log[-3000:]
    results = []
    for out in outs:
        with open(out, encoding="utf-8") as f:
            results.append(json.load(f))
    return results


def windows_of(batches):
    return [t // SEQ for batch in batches for t in batch]


def check_exactly_once(results):
    seen = sum((windows_of(r["batches"]) for r in results), [])
    assert sorted(seen) == list(range(N_WINDOWS))
    assert all(len(r["batches"]) == N_WINDOWS // 8 for r in results)  # the processes stay in step


def test_two_processes_with_explicit_shares(store, tmp_path):
    results = run_processes(store, "explicit", 2, tmp_path)
    check_exactly_once(results)
    # Each process holds the p-th half of every global batch.
    whole = data.make_iterator(data.gpt_dataset(store, "train", seq_len=SEQ), global_batch_size=8, seed=9,
                               num_epochs=1, process_count=1, process_index=0)
    for step, batch in enumerate(whole):
        assert windows_of([results[0]["batches"][step] + results[1]["batches"][step]]) == \
            (batch["targets"][:, 0] // SEQ).tolist()


def test_two_processes_under_jax_distributed(store, tmp_path):
    results = run_processes(store, "distributed", 2, tmp_path)
    assert [(r["process_index"], r["process_count"]) for r in results] == [(0, 2), (1, 2)]
    check_exactly_once(results)


def test_worker_processes_give_the_same_batches_and_resume(store, tmp_path):
    (result,) = run_processes(store, "workers", 1, tmp_path)
    assert result["batches"] == result["threaded"]
    assert result["resumed"] == result["rest"] and len(result["rest"]) == N_WINDOWS // 8 - 3
