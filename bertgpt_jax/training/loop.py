"""The training run of any task: build mesh, state and data; train with periodic logging, evaluation and
checkpoints; resume where a previous run stopped; save and exit cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
import time
from typing import Any, Callable

import flax.linen as nn
import jax
from absl import logging

from bertgpt_jax import models, progress, sharding
from bertgpt_jax.tasks.base import Task
from bertgpt_jax.training import checkpointing, inputs, metrics, optimizers, run_lock, schedules
from bertgpt_jax.training import state as state_lib
from bertgpt_jax.training import step as step_lib
from bertgpt_jax.training.config import DEFAULT_WARMUP_STEPS, NONFINITE_MODES, TrainConfig


class NonFiniteError(FloatingPointError):
    """A step produced a non-finite loss or gradient; the update was not applied."""


def validate(cfg: TrainConfig, task: Task, mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh) -> None:
    """Fails at once, naming the setting that is wrong and what would be right."""
    dp = sharding.data_parallel_size(mesh)
    if not cfg.output_dir:
        raise ValueError("output_dir is required: where checkpoints and metrics go")
    if cfg.train_batch_size <= 0 or cfg.eval_batch_size <= 0:
        raise ValueError(f"train_batch_size ({cfg.train_batch_size}) and eval_batch_size ({cfg.eval_batch_size}) "
                         "must be positive")
    if cfg.grad_accum_steps <= 0 or cfg.train_batch_size % cfg.grad_accum_steps:
        raise ValueError(f"train_batch_size {cfg.train_batch_size} is not divisible by grad_accum_steps "
                         f"{cfg.grad_accum_steps}")
    micro = cfg.train_batch_size // cfg.grad_accum_steps
    if micro % dp:
        raise ValueError(
            f"the microbatch of {micro} examples (train_batch_size {cfg.train_batch_size} / grad_accum_steps "
            f"{cfg.grad_accum_steps}) is not divisible by the {dp} data-parallel shards (mesh data x fsdp = "
            f"{mesh.shape[sharding.DATA]} x {mesh.shape[sharding.FSDP]}); use a multiple of {dp}")
    if cfg.do_eval and cfg.eval_batch_size % dp:
        raise ValueError(f"eval_batch_size {cfg.eval_batch_size} is not divisible by the {dp} data-parallel "
                         f"shards (mesh data x fsdp); use a multiple of {dp}")
    if cfg.nonfinite not in NONFINITE_MODES:
        raise ValueError(f"nonfinite {cfg.nonfinite!r} is not one of {NONFINITE_MODES}")
    if cfg.log_every_steps <= 0:
        raise ValueError(f"log_every_steps must be positive, got {cfg.log_every_steps}")
    if cfg.save_checkpoints_steps <= 0:
        raise ValueError(f"save_checkpoints_steps must be positive, got {cfg.save_checkpoints_steps}")
    if cfg.keep_checkpoint_max < 0:
        raise ValueError(f"keep_checkpoint_max must be >= 0 (0 keeps every checkpoint), got {cfg.keep_checkpoint_max}")
    if not cfg.clip_grad_norm >= 0:
        raise ValueError(f"clip_grad_norm must be >= 0 (0 turns clipping off), got {cfg.clip_grad_norm}")
    if cfg.dropout is not None and not 0.0 <= cfg.dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1) (the probability of dropping a unit), got {cfg.dropout}")
    if not cfg.learning_rate > 0:
        raise ValueError(f"learning_rate must be positive, got {cfg.learning_rate}")
    if cfg.do_eval and cfg.max_eval_steps <= 0:
        raise ValueError(f"max_eval_steps must be positive when evaluating, got {cfg.max_eval_steps}; "
                         "pass --do_eval=false to skip evaluation")
    task.check()


def check_eval_data(cfg: TrainConfig, task: Task) -> None:
    """Fails before the first step when evaluation is asked for but its data yields no batch."""
    if not cfg.do_eval:
        return
    try:
        next(iter(task.eval_batches(cfg.eval_batch_size, cfg.seed)))
    except (ValueError, StopIteration) as e:
        why = str(e) or f"it yields no batch of {cfg.eval_batch_size} examples"
        raise ValueError(f"evaluation (--do_eval) cannot run: {why}; pass --do_eval=false, a smaller "
                         "--eval_batch_size, or data with a validation split") from None


def make_optimizer(cfg: TrainConfig):
    """``(schedule, optimizer)`` as the settings say."""
    if cfg.num_warmup_steps is None and cfg.warmup_steps < DEFAULT_WARMUP_STEPS:
        logging.warning("num_warmup_steps not given: warming up over all %d steps (the default %d capped at "
                        "num_train_steps)", cfg.warmup_steps, DEFAULT_WARMUP_STEPS)
    schedule = schedules.make_schedule(cfg.schedule, cfg.learning_rate, cfg.num_train_steps, cfg.warmup_steps,
                                       cfg.schedule_power)
    optimizer = optimizers.make_optimizer(cfg.optimizer, schedule, weight_decay=cfg.weight_decay, b1=cfg.adam_beta1,
                                          b2=cfg.adam_beta2, eps=cfg.adam_epsilon)
    return schedule, optimizer


def build_train_step(cfg: TrainConfig, task: Task, mesh: jax.sharding.Mesh, schedule, optimizer,
                     shardings) -> Any:
    """The jitted train step a run executes (``.jitted`` to lower it): also what ``--compile_only`` compiles
    for a TPU slice, so the report describes this very program."""
    batch_shard = step_lib.batch_shardings(mesh, task.example_batch(cfg.train_batch_size))
    return step_lib.jit_train_step(
        step_lib.make_train_step(task, optimizer, schedule,
                                 step_lib.StepConfig(cfg.grad_accum_steps, cfg.clip_grad_norm)),
        mesh, shardings, batch_shard)


class _Preemption:
    """Turns SIGTERM (a TPU VM preemption, a scheduler's kill) into a flag the loop checks each step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, the flag never sets
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def evaluate(eval_step, params, cfg: TrainConfig, task: Task, mesh: jax.sharding.Mesh) -> dict:
    """The task's metrics, as ``eval/...`` keys, over the whole validation split or, when it has more than
    ``max_eval_steps * eval_batch_size`` examples, a fixed sample of that many spread over all of it (the same
    at every evaluation); ``eval/examples`` says how many were evaluated. A task with its own evaluation
    (``Task.evaluate``) gives its metrics instead."""
    own = task.evaluate(params, mesh)
    if own is not None:
        return _checked_eval(cfg, {f"eval/{k}": float(v) for k, v in own.items()})
    it = task.eval_batches(cfg.eval_batch_size, cfg.seed, max_examples=cfg.max_eval_steps * cfg.eval_batch_size)
    total: dict[str, float] = {}
    examples = 0
    for _ in range(cfg.max_eval_steps):
        try:
            raw = next(it)
        except StopIteration:
            break
        real = raw.get("is_real_example")
        # This process's rows; every process evaluates its share of the same global batches.
        examples += (int(real.sum()) if real is not None else len(next(iter(raw.values())))) * jax.process_count()
        sums = jax.device_get(eval_step(params, inputs.place(raw, mesh, cfg.eval_batch_size)))
        for k, v in sums.items():
            total[k] = total.get(k, 0.0) + float(v)
    if not total:
        raise ValueError(f"the evaluation data yielded no batch of {cfg.eval_batch_size}")
    return _checked_eval(cfg, {**{f"eval/{k}": v for k, v in task.summarize(total).items()},
                               "eval/examples": examples})


def _checked_eval(cfg: TrainConfig, ev: dict) -> dict:
    """``ev``, once ``--best_metric`` is known to be one of its metrics (else the best checkpoint would
    silently never be kept)."""
    if cfg.best_metric and cfg.best_metric not in ev:
        raise ValueError(f"--best_metric {cfg.best_metric} is not one of this task's eval metrics "
                         f"({', '.join(sorted(ev))})")
    return ev


def run(cfg: TrainConfig, task: Task, on_start: Callable[[], None] | None = None) -> dict:
    """Trains and/or evaluates ``task`` as ``cfg`` says. Returns the last train and eval figures (and
    ``stopped_by``). SIGTERM at any point from here on ends the run cleanly (saving if anything was trained);
    ``output_dir`` is locked against a second run for the whole time. ``on_start`` runs once the settings are
    checked and the lock is held, before anything is restored or trained: the caller's own records of the run
    go there, so a run refused at start-up writes nothing."""
    with _Preemption() as preempt:
        mesh = sharding.make_mesh(cfg.mesh_shape)
        validate(cfg, task, mesh)
        schedule, optimizer = make_optimizer(cfg)
        abstract, shardings = state_lib.abstract_state(task, optimizer, mesh)
        lock = run_lock.RunLock(cfg.output_dir).acquire() if jax.process_index() == 0 else None
        try:
            check_eval_data(cfg, task)
            if on_start is not None:
                on_start()
            train_it = task.train_batches(cfg.train_batch_size, cfg.seed)
            ckpt = checkpointing.Checkpointer(
                checkpointing.checkpoint_dir(cfg.output_dir), max_to_keep=cfg.keep_checkpoint_max,
                data_iter=train_it, async_save=cfg.async_checkpoints, best_metric=cfg.best_metric,
                best_mode=cfg.best_mode, on_damaged=cfg.on_damaged_checkpoint)
            writer = metrics.MetricsWriter(cfg.output_dir, tensorboard=cfg.tensorboard)
            try:
                return _run(cfg, task, mesh, schedule, optimizer, abstract, shardings, train_it, ckpt, writer,
                            preempt)
            finally:
                ckpt.close()
                writer.close()
                if cfg.plot and jax.process_index() == 0:
                    metrics.plot_loss_curve(writer.path, os.path.join(cfg.output_dir, "loss_curve.png"))
        finally:
            if lock is not None:
                lock.release()


def _run(cfg, task, mesh, schedule, optimizer, abstract, shardings, train_it, ckpt, writer, preempt) -> dict:
    state, resumed_from = ckpt.restore_latest(abstract)
    # Records after the checkpoint resumed from (or all of them, with none) belong to work that is redone.
    writer.supersede_after(resumed_from or 0)
    if resumed_from is not None:
        logging.info("resuming from %s step %d", ckpt.directory, resumed_from)
    else:
        state = state_lib.create_state(task, optimizer, mesh, cfg.seed, shardings=shardings)
        if cfg.init_checkpoint:
            params = task.load_init_params(cfg.init_checkpoint, abstract.params)
            state = state_lib.with_params(state, params, shardings)
            logging.info("initialised parameters from %s", cfg.init_checkpoint)

    eval_step = step_lib.make_eval_step(task, mesh)
    n_params = models.count_params(state.params)
    report = {"params": n_params, "state_bytes_per_device": metrics.bytes_per_device(state),
              "devices": jax.device_count(), "processes": jax.process_count(), "mesh": dict(mesh.shape)}
    result: dict[str, Any] = {"stopped_by": "end", "resumed_from": resumed_from,
                              "headline_metrics": task.headline_metrics, **report}

    start = int(jax.device_get(state.step))
    if cfg.do_train and start >= cfg.num_train_steps and resumed_from is not None:
        _print(f"[{type(task).__name__}] training already complete: the checkpoint in {ckpt.directory} is at "
               f"step {start} (num_train_steps {cfg.num_train_steps}); nothing to train")
    if preempt.requested:  # SIGTERM while restoring or initialising: nothing new to save
        return _stopped_in_start_up(task, result, start)
    if cfg.do_train and start < cfg.num_train_steps:
        train_step = build_train_step(cfg, task, mesh, schedule, optimizer, shardings)
        batch = inputs.place(next(train_it), mesh, cfg.train_batch_size)
        t0 = time.perf_counter()
        with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
            compiled = train_step.jitted.lower(state, batch).compile()
        report["compile_seconds"] = round(time.perf_counter() - t0, 2)
        mem = compiled.memory_analysis()
        if mem is not None:
            report["step_temp_bytes_per_device"] = int(getattr(mem, "temp_size_in_bytes", 0))
        tokens_per_step = cfg.train_batch_size * task.seq_len
        flops_per_step = task.flops_per_token() * tokens_per_step
        peak, peak_source = metrics.peak_flops_per_device()
        report["peak_flops_total"] = peak * jax.device_count()
        logging.info("model %s: %s parameters, %.1f MB state per device, mesh %s, step compiled in %.1fs; "
                     "MFU against %s (%.1f GFLOP/s per device)", cfg.model, f"{n_params:,}",
                     report["state_bytes_per_device"] / 2**20, dict(mesh.shape), report["compile_seconds"],
                     peak_source, peak / 1e9)
        _print(f"[{type(task).__name__}] {cfg.model}: {n_params:,} params, "
               f"{report['state_bytes_per_device'] / 2**20:.1f} MB state/device, mesh {dict(mesh.shape)}, "
               f"kernels {task.model_cfg.kernels}, compiled in {report['compile_seconds']}s")
        if preempt.requested:  # SIGTERM during compilation: no step was taken
            return _stopped_in_start_up(task, result, start)
        result.update(_train_loop(cfg, task, compiled, state, batch, train_it, ckpt, writer, eval_step, mesh, start,
                                  tokens_per_step, flops_per_step, report["peak_flops_total"], preempt))
        state = result.pop("state")
    if cfg.do_eval and result["stopped_by"] == "end":
        step = int(jax.device_get(state.step))
        earlier = writer.recorded(step, "eval/")  # process 0 reads the file: others evaluate as before
        if result.get("last_eval_step") != step and earlier and jax.process_count() == 1:
            result.update(earlier)  # a finished run, re-run: its figures stand
            _print(f"[{type(task).__name__}] step {step} was evaluated before (recorded in {writer.path})")
        elif result.get("last_eval_step") != step:
            ev = evaluate(eval_step, state.params, cfg, task, mesh)
            if not earlier:  # one record per step
                writer.write(step, ev)
            ckpt.save_best(step, state.params, ev)
            result.update(ev)
        ev = {k: v for k, v in result.items() if k.startswith("eval/")}
        _print(f"[{type(task).__name__}] eval at step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in ev.items()))
    result["final_step"] = int(jax.device_get(state.step))
    result["params"] = state.params  # the final parameters, for what the caller does next (fill-mask, export)
    return result


def _stopped_in_start_up(task: Task, result: dict, start: int) -> dict:
    _print(f"[{type(task).__name__}] SIGTERM during start-up: no step taken (state at step {start}), nothing new "
           "to save; exiting")
    result.update(stopped_by="sigterm", final_step=start)
    return result


def _print(line: str) -> None:
    if jax.process_index() == 0:
        print(line, flush=True)


def _train_loop(cfg, task, compiled, state, batch, train_it, ckpt, writer, eval_step, mesh, start,
                tokens_per_step, flops_per_step, peak_total, preempt) -> dict:
    out: dict[str, Any] = {"stopped_by": "end"}
    bar = None
    if cfg.progress_bar and jax.process_index() == 0:
        bar = progress.progress(cfg.num_train_steps, initial=start, unit="step", desc="training")
    pending = None  # (step number, metrics on device): fetched one step late
    last_time, last_step = time.perf_counter(), start
    skipped = 0

    def handle(step_no: int, dev_metrics: dict, timing: dict | None = None, extra: dict | None = None) -> None:
        """Logs a step. ``timing`` (steps that synchronised, to save a checkpoint): when the step finished,
        and the pause after it (the save) that the next record's window leaves out."""
        nonlocal last_time, last_step, skipped
        m = jax.device_get(dev_metrics)
        if not bool(m["finite"]):
            if cfg.nonfinite == "stop":
                raise NonFiniteError(
                    f"step {step_no}: non-finite loss ({float(m['loss'])}) or gradient norm "
                    f"({float(m['grad_norm'])}); the update was not applied. Lower --learning_rate, raise "
                    f"--num_warmup_steps, check --dtype, or pass --nonfinite=skip to skip such steps")
            skipped += 1
            logging.warning("step %d: non-finite loss or gradient; update skipped (%d so far)", step_no, skipped)
        pause = timing["pause"] if timing else 0.0
        if step_no % cfg.log_every_steps == 0 or step_no == cfg.num_train_steps:
            now = timing["done_at"] if timing else time.perf_counter()
            elapsed = max(now - last_time, 1e-9)
            n = max(step_no - last_step, 1)
            record = {"train/loss": float(m["loss"]), "train/learning_rate": float(m["learning_rate"]),
                      "train/grad_norm": float(m["grad_norm"]), "train/tokens_per_sec": n * tokens_per_step / elapsed,
                      "train/step_time": elapsed / n, "train/mfu": n * flops_per_step / elapsed / peak_total,
                      "train/skipped_steps": skipped}
            sums = {k: float(v) for k, v in m.items() if k.endswith(("_sum", "_count"))}
            record.update({f"train/{k}": v for k, v in task.summarize(sums).items() if k != "loss"})
            out["train/loss"] = record["train/loss"]
            last_time, last_step = now + pause, step_no
        else:
            last_time += pause
            record = {}
        record.update(extra or {})
        if record:
            # One record per step: train figures and, at eval steps, the eval figures beside them.
            writer.write(step_no, record)
            if bar is not None:
                bar.write(metrics.format_line(step_no, record))
            else:
                _print(metrics.format_line(step_no, record))

    for i in range(start, cfg.num_train_steps):
        state, dev_metrics = compiled(state, batch)
        step_no = i + 1
        timing = None
        # The iterator has yielded exactly step_no batches here: save before fetching the next.
        if step_no % cfg.save_checkpoints_steps == 0 or preempt.requested:
            # Time the steps, not the save: the step before is logged and this one waited for first; the
            # step's window ends when it finished, and the next one's starts after the save.
            if pending is not None:
                handle(*pending)
                pending = None
            jax.block_until_ready(dev_metrics)
            done_at = time.perf_counter()
            ckpt.save(state, force=preempt.requested)
            timing = {"done_at": done_at, "pause": time.perf_counter() - done_at}
        if preempt.requested:
            if pending is not None:
                handle(*pending)
            handle(step_no, dev_metrics, timing)
            ckpt.wait()
            out["stopped_by"] = "sigterm"
            _print(f"[{type(task).__name__}] SIGTERM: saved checkpoint at step {step_no} in {ckpt.directory}; "
                   "exiting")
            break
        if step_no < cfg.num_train_steps:
            batch = inputs.place(next(train_it), mesh, cfg.train_batch_size)
        if pending is not None:
            handle(*pending)
        pending = (step_no, dev_metrics, timing)
        if bar is not None:
            bar.update(1)
        if cfg.do_eval and cfg.eval_every_steps and step_no % cfg.eval_every_steps == 0:
            t_eval = time.perf_counter()
            ev = evaluate(eval_step, state.params, cfg, task, mesh)
            eval_seconds = time.perf_counter() - t_eval  # evaluation time is not training time
            if timing:
                timing["pause"] += eval_seconds
            else:
                last_time += eval_seconds
            handle(*pending, extra=ev)
            pending = None
            ckpt.save_best(step_no, state.params, ev)
            out.update(ev)
            out["last_eval_step"] = step_no
    else:
        if pending is not None:
            handle(*pending)
        if cfg.num_train_steps % cfg.save_checkpoints_steps:
            ckpt.save(state, force=True)
    if bar is not None:
        bar.close()
    ckpt.wait()
    if skipped:
        _print(f"[{type(task).__name__}] --nonfinite=skip: {skipped} of the {step_no - start} steps of this run had "
               "a non-finite loss or gradient and were skipped (not applied)")
    out["skipped_steps"] = skipped
    out["state"] = state
    return out
