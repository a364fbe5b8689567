"""Every flagfile in experiments/ parses, and its model and sharding build abstractly for its target mesh."""

import glob
import math
import os
import re

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType

from bertgpt_jax import accelerators, cli, models, pretrain, sharding, tasks
from bertgpt_jax.tasks.pretraining import PretrainingData
from bertgpt_jax.training import config, loop
from bertgpt_jax.training import state as state_lib
from bertgpt_jax.training.config import TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILES = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.flags")))
HBM_BYTES = 32 * 2**30  # TPU v4: the smallest accelerator memory the recipes assume


def _parse(path):
    pretrain.F.unparse_flags()
    cwd = os.getcwd()
    os.chdir(ROOT)  # flagfiles name paths relative to the repository root, as the README runs them
    try:
        pretrain.F(["pretrain", f"--flagfile={path}"])
        return cli.from_flags(TrainConfig, pretrain.F), cli.from_flags(PretrainingData, pretrain.F)
    finally:
        os.chdir(cwd)
        pretrain.F.unparse_flags()


def test_every_recipe_is_there():
    names = {os.path.basename(p) for p in FLAGFILES}
    assert {"bert_demo.flags", "gpt_demo.flags", "bert_base_phase1_lamb.flags", "bert_base_phase2_lamb.flags",
            "bert_large_phase1_lamb.flags", "bert_large_phase2_lamb.flags", "bert_base_adamw.flags",
            "gpt2_124m.flags"} <= names


@pytest.mark.parametrize("path", FLAGFILES, ids=os.path.basename)
def test_flagfile_builds_for_its_mesh(path):
    text = open(path).read()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any("python -m bertgpt_jax.pretrain --flagfile=experiments/" in h for h in header), "command"
    assert any(h.startswith("# Hardware:") for h in header), "hardware"
    assert any("Result" in h for h in header), "expected result"
    cfg, data = _parse(path)
    os.chdir(ROOT)
    # The recipe's model as its target hardware builds it (a TPU here: XLA's own kernels).
    model_cfg = config.model_config(cfg, platform="tpu")
    task = tasks.task_for(model_cfg, data)
    shape = list(cfg.mesh_shape)
    if -1 in shape:  # demos take whatever devices there are
        shape[shape.index(-1)] = 8 // int(np.prod([s for s in shape if s != -1]))
    mesh = AbstractMesh(tuple(shape), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    loop.validate(cfg, task, mesh)
    if "Hardware: TPU" in text:
        chips = int(np.prod(shape))
        assert re.search(rf"\({chips} chips", text), f"mesh of {chips} devices does not match the stated hardware"
        # The slice as Cloud TPU names it (v4-32 = 32 TensorCores = 16 chips) has one device per chip of the mesh.
        stated = re.search(r"^# Hardware: TPU (v[0-9a-z]+-\d+)", text, re.MULTILINE)
        assert stated, "the Hardware line names no TPU slice (e.g. TPU v4-32)"
        tpu_slice = accelerators.parse_slice(stated.group(1))
        assert tpu_slice.num_chips == chips, (f"{stated.group(1)} has {tpu_slice.num_chips} chips, the mesh "
                                              f"{tuple(shape)} {chips} devices")
        # The mesh must lay out on the slice's torus (each axis a product of torus axes: 8 x 8 on v4-128's
        # 4x4x4 does not), as the run's and --compile_only's make_mesh will do it.
        sharding.make_mesh(cfg.mesh_shape, devices=accelerators.topology_devices(tpu_slice))
        hosts = tpu_slice.num_hosts
        if hosts > 1:
            assert cfg.distributed, f"{stated.group(1)} has {hosts} hosts: the recipe needs --distributed"
    _, opt = loop.make_optimizer(cfg)
    abstract, shardings = state_lib.abstract_state(task, opt, mesh)
    per_device = 0
    for leaf, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
        split = 1
        for dim, axes in zip(leaf.shape, tuple(s.spec) + (None,) * (len(leaf.shape) - len(s.spec))):
            axes = () if axes is None else (axes,) if isinstance(axes, str) else axes
            n = math.prod(mesh.shape[a] for a in axes)
            assert dim % n == 0, f"dimension {dim} of a {leaf.shape} leaf does not split over {axes}"
            split *= n
        per_device += leaf.size * leaf.dtype.itemsize // split
    assert models.count_params(abstract.params) > 1e6
    assert per_device < HBM_BYTES / 4, f"{per_device / 2**30:.1f} GiB of state per device"
