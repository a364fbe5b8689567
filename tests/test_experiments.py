"""Every flagfile in experiments/ parses, and its model and sharding build abstractly for its target mesh."""

import glob
import math
import os
import re

import jax
import numpy as np
import pytest
from jax.sharding import AbstractMesh, AxisType

from bertgpt_jax import configs, models, pretrain, sharding
from bertgpt_jax.training import loop, optimizers, schedules
from bertgpt_jax.training import state as state_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGFILES = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.flags")))
HBM_BYTES = 32 * 2**30  # TPU v4: the smallest accelerator memory the recipes assume


def _parse(path):
    pretrain.F.unparse_flags()
    cwd = os.getcwd()
    os.chdir(ROOT)  # flagfiles name paths relative to the repository root, as the README runs them
    try:
        pretrain.F(["pretrain", f"--flagfile={path}"])
        return pretrain.config_from_flags()
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
    cfg = _parse(path)
    os.chdir(ROOT)
    model_cfg = configs.get(cfg.model).replace(dtype=cfg.dtype, param_dtype=cfg.param_dtype, remat=cfg.remat)
    shape = list(cfg.mesh_shape)
    if -1 in shape:  # demos take whatever devices there are
        shape[shape.index(-1)] = 8 // int(np.prod([s for s in shape if s != -1]))
    mesh = AbstractMesh(tuple(shape), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 3)
    loop.validate(cfg, model_cfg, mesh)
    if "Hardware: TPU" in text:
        chips = int(np.prod(shape))
        assert re.search(rf"\({chips} chips", text), f"mesh of {chips} devices does not match the stated hardware"
    opt = optimizers.make_optimizer(cfg.optimizer, schedules.warmup_then_decay(
        cfg.learning_rate, cfg.num_train_steps, cfg.num_warmup_steps, cfg.schedule, cfg.schedule_power))
    abstract, shardings = state_lib.abstract_state(models.from_config(model_cfg), model_cfg.is_bert, opt, mesh,
                                                   cfg.max_seq_length, cfg.max_predictions_per_seq)
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
