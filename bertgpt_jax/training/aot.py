"""Ahead-of-time compilation of a run's train step for a TPU slice, on any host (``--compile_only``).

libtpu describes a slice's devices without the hardware; the step the run would execute (the mesh, shardings,
precision, accumulation and remat of ``loop.build_train_step``) is lowered over them with abstract state and
batch and compiled by the real TPU compiler. The report gives per-chip memory against the chip's HBM, the
step's FLOPs, and a roofline bound on the step time. Before you rent a slice, this says whether a recipe fits.

Two properties of XLA's analyses shape the report. ``cost_analysis()`` counts the body of a loop once, so the
gradient-accumulation scan's FLOPs and bytes are multiplied by ``grad_accum_steps`` here, and with
``scan_layers`` (a loop over layers) the compiled count covers one layer, so the report falls back on the
model's FLOPs. ``optimal_seconds`` is not a time on a CPU host (it comes back negative) and is not used.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any

import flax.linen as nn
import jax

from bertgpt_jax import accelerators, models, sharding
from bertgpt_jax.accelerators import GiB
from bertgpt_jax.tasks.base import Task
from bertgpt_jax.training import loop, step as step_lib, state as state_lib
from bertgpt_jax.training.config import TrainConfig


class DoesNotFit(ValueError):
    """The compiled step needs more memory per chip than the chip's HBM."""


@dataclasses.dataclass(frozen=True)
class CompileReport:
    """Per-chip memory and per-step FLOPs of a train step compiled for a TPU slice."""

    model: str
    slice: accelerators.Slice
    mesh: dict[str, int]
    params: int
    tokens_per_step: int
    grad_accum_steps: int
    scan_layers: bool
    param_bytes: int  # per chip, from the state's shardings
    opt_state_bytes: int
    argument_bytes: int  # per chip, from the compiled program (state + batch)
    output_bytes: int
    alias_bytes: int  # outputs written in place of donated arguments
    temp_bytes: int  # activations and every other temporary
    code_bytes: int
    compiled_flops_per_chip: float  # cost_analysis, loop bodies counted once
    bytes_accessed_per_chip: float
    model_flops_per_token: float
    compile_seconds: float

    @property
    def hbm_bytes(self) -> int:
        return self.slice.chip.hbm_bytes

    @property
    def peak_bytes(self) -> int:
        """Arguments live throughout; outputs not written in place and the temporaries add to them."""
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes + self.code_bytes

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.hbm_bytes

    @property
    def flops_per_step(self) -> float:
        """All chips, one optimizer step. The accumulation loop's body is counted once by XLA, so times
        ``grad_accum_steps``; with ``scan_layers`` the compiled count is one layer's, so the model's FLOPs."""
        if self.scan_layers:
            return self.model_flops_per_token * self.tokens_per_step
        return self.compiled_flops_per_chip * self.grad_accum_steps * self.slice.num_chips

    @property
    def flops_per_token(self) -> float:
        return self.flops_per_step / self.tokens_per_step

    @property
    def flops_source(self) -> str:
        return "model (scan_layers: XLA counts the layer loop once)" if self.scan_layers else "compiled program"

    @property
    def compute_seconds(self) -> float:
        """The step's FLOPs per chip at the chip's bf16 peak."""
        return self.flops_per_step / self.slice.num_chips / self.slice.chip.peak_bf16_flops

    @property
    def memory_seconds(self) -> float:
        """The compiled program's HBM traffic per chip (XLA's bytes accessed) at the chip's bandwidth."""
        return self.bytes_accessed_per_chip * self.grad_accum_steps / self.slice.chip.hbm_bandwidth

    @property
    def roofline_seconds(self) -> float:
        """A lower bound on the step time: the larger of compute at the chip's bf16 peak and HBM traffic at its
        bandwidth. Not a measurement (communication, the host and imperfect overlap all add)."""
        return max(self.compute_seconds, self.memory_seconds)

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "slice"}
        out.update(slice=self.slice.accelerator_type, topology=self.slice.topology, chips=self.slice.num_chips,
                   hbm_bytes=self.hbm_bytes, peak_bytes=self.peak_bytes, fits=self.fits,
                   flops_per_step=self.flops_per_step, flops_per_token=self.flops_per_token,
                   compute_seconds=self.compute_seconds, memory_seconds=self.memory_seconds,
                   roofline_seconds=self.roofline_seconds)
        return out

    def format(self) -> str:
        g = lambda b: f"{b / GiB:.2f} GiB" if b >= GiB / 4 else f"{b / 2**20:.1f} MiB"  # noqa: E731
        chip = self.slice.chip
        ratio = self.flops_per_token / self.model_flops_per_token if self.model_flops_per_token else float("nan")
        mesh = " x ".join(f"{k}={v}" for k, v in self.mesh.items())
        lines = [
            f"compiled train step of {self.model} for {self.slice.describe()} in {self.compile_seconds:.1f} s",
            f"  mesh                 {mesh}; {self.tokens_per_step:,} tokens per step, grad_accum_steps "
            f"{self.grad_accum_steps}",
            f"  parameters           {self.params:,}: {g(self.param_bytes)} per chip",
            f"  optimizer state      {g(self.opt_state_bytes)} per chip",
            f"  activations/temps    {g(self.temp_bytes)} per chip",
            f"  arguments + outputs  {g(self.argument_bytes)} + {g(self.output_bytes - self.alias_bytes)} "
            f"(not in place), code {g(self.code_bytes)}",
            f"  peak                 {g(self.peak_bytes)} of {g(self.hbm_bytes)} HBM per {chip.name} chip "
            f"({100 * self.peak_bytes / self.hbm_bytes:.0f}%): {'fits' if self.fits else 'DOES NOT FIT'}",
            f"  FLOPs                {self.flops_per_step:.3e} per step, {self.flops_per_token:.3e} per token "
            f"({self.flops_source}); model {self.model_flops_per_token:.3e} per token (ratio {ratio:.2f})",
            f"  roofline bound       >= {self.roofline_seconds * 1e3:.1f} ms per step at "
            f"{chip.peak_bf16_flops / 1e12:.0f} TFLOP/s and {chip.hbm_bandwidth / 1e12:.2f} TB/s per chip (a bound, "
            f"not a measurement: compute {self.compute_seconds * 1e3:.1f} ms, HBM traffic "
            f"{self.memory_seconds * 1e3:.1f} ms), i.e. <= "
            f"{self.tokens_per_step / self.roofline_seconds:,.0f} tokens/s",
        ]
        return "\n".join(lines)


def _bytes_per_chip(abstract: Any) -> int:
    return int(sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize for x in jax.tree.leaves(abstract)))


def suggestions(cfg: TrainConfig, mesh_shape: dict[str, int], state_fraction: float) -> list[str]:
    """Settings that lower the memory per chip; FSDP first when parameters and moments take most of the HBM."""
    dp = mesh_shape[sharding.DATA] * mesh_shape[sharding.FSDP]
    micro = cfg.train_batch_size // cfg.grad_accum_steps
    out = []
    if micro // dp >= 2 and (micro // 2) % dp == 0:
        out.append(f"--grad_accum_steps={cfg.grad_accum_steps * 2} (microbatch {micro // 2 // dp} per chip instead "
                   f"of {micro // dp}, same result)")
    if cfg.remat != "full":
        out.append(f"--remat={'dots' if cfg.remat == 'none' else 'full'} (recompute activations in the backward "
                   "pass)")
    data = mesh_shape[sharding.DATA]
    fsdp = next((k for k in (2, 4, 8) if data % k == 0), None)
    if fsdp and state_fraction > 0.1:
        shard = (f"--mesh_shape={data // fsdp},{mesh_shape[sharding.FSDP] * fsdp},{mesh_shape[sharding.TENSOR]} "
                 "(FSDP: parameters and optimizer moments sharded over more chips)")
        out.insert(0 if state_fraction > 0.5 else len(out), shard)
    out.append(f"--train_batch_size={cfg.train_batch_size // 2} (a smaller batch), or a larger slice or a chip with "
               "more HBM (v5p: 95 GiB)")
    return out


def _does_not_fit(cfg: TrainConfig, tpu_slice, mesh_shape, what: str, state_fraction: float) -> DoesNotFit:
    advice = "\n".join(f"  - {s}" for s in suggestions(cfg, mesh_shape, state_fraction))
    return DoesNotFit(f"the train step of {cfg.model} does not fit {tpu_slice.describe()}: {what}. Change one "
                      f"of:\n{advice}")


def compile_train_step(cfg: TrainConfig, task: Task, topology: str | accelerators.Slice | None = None,
                       *, check_fit: bool = True) -> CompileReport:
    """Compiles the run's train step for ``topology`` (default ``cfg.topology``) and reports on it. Raises
    :class:`DoesNotFit` (naming what to change) when the step needs more than a chip's HBM, and
    ``ValueError`` for settings the run would reject."""
    tpu_slice = topology if isinstance(topology, accelerators.Slice) else \
        accelerators.parse_slice(topology or cfg.topology or "")
    devices = accelerators.topology_devices(tpu_slice)
    try:
        mesh = sharding.make_mesh(cfg.mesh_shape, devices=devices)
    except (ValueError, NotImplementedError) as e:  # NotImplementedError: no layout of the axes on the torus
        raise ValueError(f"--mesh_shape={','.join(map(str, cfg.mesh_shape))} does not fit {tpu_slice.describe()}: "
                         f"{e}") from None
    loop.validate(cfg, task, mesh)
    schedule, optimizer = loop.make_optimizer(cfg)
    abstract, shardings = state_lib.abstract_state(task, optimizer, mesh)
    train_step = loop.build_train_step(cfg, task, mesh, schedule, optimizer, shardings)
    example = task.example_batch(cfg.train_batch_size)
    batch_shard = step_lib.batch_shardings(mesh, example)
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_shard[k]) for k, v in example.items()}
    param_bytes, opt_bytes = _bytes_per_chip(abstract.params), _bytes_per_chip(abstract.opt_state)
    mesh_shape = dict(mesh.shape)
    t0 = time.perf_counter()
    try:
        with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
            compiled = train_step.jitted.lower(abstract, batch).compile()
    except Exception as e:  # XLA:TPU refuses a program over the HBM with RESOURCE_EXHAUSTED
        if "RESOURCE_EXHAUSTED" not in str(e):
            raise
        detail = next((line.strip().rstrip(".") for line in str(e).splitlines() if "memory" in line.lower()),
                      str(e).splitlines()[0])
        raise _does_not_fit(cfg, tpu_slice, mesh_shape, f"XLA reports {detail}",
                            (param_bytes + opt_bytes) / tpu_slice.chip.hbm_bytes) from None
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, list):  # older jax returned one dict per program
        cost = cost[0] if cost else {}
    report = CompileReport(
        model=cfg.model, slice=tpu_slice, mesh=mesh_shape, params=models.count_params(abstract.params),
        tokens_per_step=cfg.train_batch_size * task.seq_len, grad_accum_steps=cfg.grad_accum_steps,
        scan_layers=task.model_cfg.scan_layers, param_bytes=param_bytes, opt_state_bytes=opt_bytes,
        argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
        alias_bytes=int(mem.alias_size_in_bytes), temp_bytes=int(mem.temp_size_in_bytes),
        code_bytes=int(mem.generated_code_size_in_bytes), compiled_flops_per_chip=float(cost.get("flops", 0.0)),
        bytes_accessed_per_chip=float(cost.get("bytes accessed", 0.0)),
        model_flops_per_token=float(task.flops_per_token()), compile_seconds=round(seconds, 1))
    if check_fit:
        check_fits(cfg, report)
    return report


def check_fits(cfg: TrainConfig, report: CompileReport) -> None:
    """Raises :class:`DoesNotFit`, naming what to change, when the report's peak exceeds the chip's HBM."""
    if report.fits:
        return
    state = report.param_bytes + report.opt_state_bytes
    raise _does_not_fit(cfg, report.slice, report.mesh,
                        f"{report.peak_bytes / GiB:.2f} GiB per chip needed (activations {report.temp_bytes / GiB:.2f} "
                        f"GiB, state {state / GiB:.2f} GiB), {report.hbm_bytes / GiB:.0f} GiB of HBM per chip",
                        state / report.hbm_bytes)


def compile_only(cfg: TrainConfig, task: Task) -> dict:
    """``--compile_only``: compile for ``cfg.topology``, print the report, and return the run's result dict."""
    if not cfg.topology:
        raise ValueError("--compile_only needs --topology: the TPU slice to compile for, e.g. --topology=v4-32 "
                         "(16 chips), v5litepod-16, v5p-64 or a topology such as v4:2x2x4")
    tpu_slice = accelerators.parse_slice(cfg.topology)
    print(f"[compile_only] compiling the train step of {cfg.model} for {tpu_slice.describe()} (minutes for a large "
          "model on a few CPU cores)", flush=True)
    report = compile_train_step(cfg, task, tpu_slice, check_fit=False)
    print(report.format(), flush=True)
    check_fits(cfg, report)
    return {"stopped_by": "compile_only", "headline_metrics": (), "compile_report": report.as_dict()}
