"""Train steps compiled for TPU slices on this CPU host (libtpu's topology descriptions, the real TPU compiler):
slice names, the report's figures against the abstract state, and a setting that does not fit."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from bertgpt_jax import accelerators, models, tasks
from bertgpt_jax.tasks.pretraining import PretrainingData
from bertgpt_jax.training import aot, config, loop
from bertgpt_jax.training import state as state_lib
from bertgpt_jax.training.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 2**20

# Widths that stay multiples of 128 when FSDP halves them: TPU memory pads minor dimensions to 128 lanes.
TINY_GPT = {"model_type": "gpt2", "vocab_size": 512, "n_embd": 256, "n_layer": 2, "n_head": 2, "n_inner": 512,
            "n_positions": 64, "activation_function": "gelu_new", "resid_pdrop": 0.0, "embd_pdrop": 0.0,
            "attn_pdrop": 0.0, "layer_norm_epsilon": 1e-5, "initializer_range": 0.02}


@pytest.mark.parametrize("name, generation, shape, chips", [
    ("v4-8", "v4", (2, 2, 1), 4), ("v4-32", "v4", (2, 2, 4), 16), ("v4-128", "v4", (4, 4, 4), 64),
    ("v5litepod-16", "v5e", (4, 4), 16), ("v5e-4", "v5e", (2, 2), 4), ("v5p-64", "v5p", (2, 4, 4), 32),
    ("v6e-8", "v6e", (2, 4), 8), ("v4:2x2x4", "v4", (2, 2, 4), 16), ("v5e:4x8", "v5e", (4, 8), 32),
])
def test_slice_names(name, generation, shape, chips):
    s = accelerators.parse_slice(name)
    assert (s.chip.name, s.shape, s.num_chips) == (generation, shape, chips)
    # The name round-trips: what gcloud is asked for is what was parsed.
    assert accelerators.parse_slice(s.accelerator_type) == s
    assert accelerators.parse_slice(s.topology) == s


@pytest.mark.parametrize("name, message", [
    ("v4-7", "must be even"), ("v4-24", "not a slice size"), ("v9-8", "unknown TPU generation"),
    ("v4:2x2", "3 positive dimensions"), ("tpu", "is not a slice name"),
])
def test_bad_slice_names_say_what_would_be_right(name, message):
    with pytest.raises(ValueError, match=message):
        accelerators.parse_slice(name)


def test_chip_table():
    figures = {c.name: (c.hbm_bytes / 2**30, c.peak_bf16_flops / 1e12, c.hbm_bandwidth / 1e12)
               for c in accelerators.CHIPS.values()}
    assert figures == {"v4": (32, 275, 1.2), "v5e": (16, 197, 0.82), "v5p": (95, 459, 2.76),
                       "v6e": (32, 918, 1.64)}
    assert accelerators.chip_for_device_kind("TPU v5 lite").name == "v5e"
    assert accelerators.chip_for_device_kind("TPU v5").name == "v5p"
    assert accelerators.chip_for_device_kind("cpu") is None


def test_topology_devices_are_one_per_chip():
    for name in ("v4-8", "v5p-8", "v5litepod-8"):
        s = accelerators.parse_slice(name)
        devices = accelerators.topology_devices(s)
        assert len(devices) == s.num_chips
        assert {d.platform for d in devices} == {"tpu"}
        assert accelerators.chip_for_device_kind(devices[0].device_kind) == s.chip


def _task(cfg: TrainConfig, data: PretrainingData):
    return tasks.task_for(config.model_config(cfg, platform="tpu"), data)


def _expected_state_bytes(cfg, task, tpu_slice):
    """Per-chip bytes of parameters and optimizer state from the abstract state's shapes and partition specs,
    computed with NumPy from the mesh sizes (independently of the sharding's own shard_shape)."""
    from bertgpt_jax import sharding

    mesh = sharding.make_mesh(cfg.mesh_shape, devices=accelerators.topology_devices(tpu_slice))
    _, opt = loop.make_optimizer(cfg)
    abstract, shardings = state_lib.abstract_state(task, opt, mesh)

    def per_chip(tree, specs):
        total = 0
        for leaf, s in zip(jax.tree.leaves(tree), jax.tree.leaves(specs)):
            split = 1
            for axes in tuple(s.spec):
                for a in (() if axes is None else (axes,) if isinstance(axes, str) else axes):
                    split *= mesh.shape[a]
            total += int(np.prod(leaf.shape)) * np.dtype(leaf.dtype).itemsize // split
        return total

    return (per_chip(abstract.params, shardings.params), per_chip(abstract.opt_state, shardings.opt_state),
            models.count_params(abstract.params))


@pytest.fixture(scope="module")
def bert_v4():
    cfg = TrainConfig(output_dir="/tmp/unused", model="bert-tiny", train_batch_size=64, grad_accum_steps=1,
                      mesh_shape=(4, 1, 1), dtype="bfloat16")
    data = PretrainingData(dataset="synthetic", max_seq_length=128, max_predictions_per_seq=20)
    task = _task(cfg, data)
    return cfg, task, aot.compile_train_step(cfg, task, "v4-8")


@pytest.fixture(scope="module")
def gpt_v5e(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpt") / "config.json"
    path.write_text(json.dumps(TINY_GPT))
    # FSDP over 2 of the 4 chips and two microbatches: sharded state and the accumulation loop.
    cfg = TrainConfig(output_dir="/tmp/unused", model=str(path), train_batch_size=32, grad_accum_steps=2,
                      mesh_shape=(2, 2, 1), dtype="bfloat16", remat="full")
    data = PretrainingData(dataset="synthetic", max_seq_length=64)
    task = _task(cfg, data)
    return cfg, task, aot.compile_train_step(cfg, task, "v5litepod-4")


@pytest.mark.parametrize("which", ["bert_v4", "gpt_v5e"])
def test_report_agrees_with_the_abstract_state(which, request):
    cfg, task, report = request.getfixturevalue(which)
    params_b, opt_b, n_params = _expected_state_bytes(cfg, task, report.slice)
    assert report.params == n_params
    assert report.param_bytes == params_b
    assert report.opt_state_bytes == opt_b
    # AdamW keeps two fp32 moments per parameter (plus a step counter).
    assert abs(report.opt_state_bytes - 2 * report.param_bytes) <= 64
    # The compiled program's arguments are the state and this chip's share of the batch (TPU tiles pad small
    # vectors a little).
    batch_bytes = sum(v.nbytes for v in task.example_batch(cfg.train_batch_size).values()) \
        // (report.mesh["data"] * report.mesh["fsdp"])
    state_bytes = report.param_bytes + report.opt_state_bytes
    assert state_bytes + batch_bytes <= report.argument_bytes <= 1.05 * (state_bytes + batch_bytes) + 256 * 1024
    # The state is donated: its outputs are written in place.
    assert report.alias_bytes >= state_bytes
    assert report.peak_bytes == (report.argument_bytes + report.output_bytes - report.alias_bytes
                                 + report.temp_bytes + report.code_bytes)
    assert 0 < report.temp_bytes < report.hbm_bytes and report.fits
    assert report.hbm_bytes == report.slice.chip.hbm_bytes


def test_flops_agree_with_the_model_count(bert_v4, gpt_v5e):
    _, bert_task, bert = bert_v4
    # Without remat the compiled step does the model's FLOPs plus small extras (softmax, LayerNorm, optimizer).
    ratio = bert.flops_per_token / models.flops_per_token(bert_task.model_cfg, 128, 20, heads_only=True)
    assert 0.98 < ratio < 1.15, ratio
    _, gpt_task, gpt = gpt_v5e
    # Full remat recomputes the forward pass (~4/3 of the model's 6N); the two microbatches are both
    # counted although XLA counts the accumulation loop's body once.
    ratio = gpt.flops_per_token / gpt_task.flops_per_token()
    assert 1.1 < ratio < 1.5, ratio
    assert gpt.compiled_flops_per_chip * gpt.slice.num_chips < 0.7 * gpt.flops_per_step
    for r in (bert, gpt):
        chip = r.slice.chip
        compute = r.flops_per_step / r.slice.num_chips / chip.peak_bf16_flops
        assert r.roofline_seconds >= compute > 0
        assert r.roofline_seconds >= r.bytes_accessed_per_chip * r.grad_accum_steps / chip.hbm_bandwidth
    text = gpt.format()
    assert "a bound, not a measurement" in text and "v5e chip" in text and "fits" in text


def test_peak_over_hbm_is_reported_with_what_to_change(bert_v4):
    cfg, _, report = bert_v4
    too_big = dataclasses.replace(report, temp_bytes=40 * 2**30)
    assert not too_big.fits and "DOES NOT FIT" in too_big.format()
    with pytest.raises(aot.DoesNotFit, match=r"does not fit v4-8 .*: 40\.\d\d GiB per chip needed "
                                             r"\(activations 40\.00"):
        aot.check_fits(cfg, too_big)
    aot.check_fits(cfg, report)  # fits: no error
    advice = aot.suggestions(cfg, report.mesh, state_fraction=0.7)
    assert advice[0].startswith("--mesh_shape=2,2,1")  # state dominates: FSDP first
    assert any(a.startswith("--grad_accum_steps=2") for a in advice)
    assert any(a.startswith("--remat=dots") for a in advice)


def _cli(*args):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "BERTGPT_JAX_NO_HUGE_PAGES": "1", "XLA_FLAGS": "",
           "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "bertgpt_jax.pretrain", "--dataset=synthetic",
                           "--output_dir=/tmp/unused_compile_only", "--compile_only", *args],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def test_cli_reports_an_oversized_setting_as_not_fitting():
    # bert-tiny at 8192 x 512 tokens on four 16 GiB chips: XLA:TPU itself refuses the activations.
    proc = _cli("--model=bert-tiny", "--train_batch_size=8192", "--max_seq_length=512",
                "--max_predictions_per_seq=80", "--topology=v5litepod-4")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "does not fit v5litepod-4" in proc.stderr
    assert "--grad_accum_steps=2 (microbatch 1024 per chip" in proc.stderr
    assert "--remat=dots" in proc.stderr
    assert not os.path.exists("/tmp/unused_compile_only/metrics.jsonl")


def test_cli_needs_a_topology():
    proc = _cli("--model=bert-tiny")
    assert proc.returncode == 2
    assert "--compile_only needs --topology" in proc.stderr
    proc = _cli("--model=bert-tiny", "--topology=v4-24")
    assert proc.returncode == 2 and "not a slice size" in proc.stderr


def test_compile_only_prints_the_report_and_trains_nothing(bert_v4, monkeypatch, capsys, tmp_path):
    cfg, task, report = bert_v4
    seen = {}

    def fake_compile(c, t, tpu_slice, check_fit=True):
        assert not check_fit  # the report is printed first, then the fit is checked
        seen["slice"] = tpu_slice
        return report

    monkeypatch.setattr(aot, "compile_train_step", fake_compile)
    out_dir = tmp_path / "run"
    result = aot.compile_only(cfg.replace(output_dir=str(out_dir), topology="v4-8"), task)
    assert seen["slice"] == accelerators.parse_slice("v4-8")
    text = capsys.readouterr().out
    assert report.format() in text and "peak" in text and "roofline bound" in text
    assert result["stopped_by"] == "compile_only" and result["compile_report"]["peak_bytes"] == report.peak_bytes
    assert result["compile_report"]["chips"] == 4 and result["compile_report"]["fits"]
    assert not out_dir.exists()  # nothing written: no checkpoints, no metrics
