"""Orbax checkpoints of a run: parameters, optimizer state + step + RNG, and the data iterator.

Items are saved separately so ``init_checkpoint`` can read parameters alone (a phase-two BERT run, or
continued pretraining). Saves are asynchronous; Orbax writes into a temporary directory and renames it
when complete, so a half-written checkpoint is never seen by ``latest_step``/``restore``.

Once a save is complete, the SHA-256 of every file it wrote goes into ``<step>/checksums.json``. A restore
verifies them; a damaged checkpoint (a changed, truncated or missing file, an empty step folder, or one
Orbax cannot read) is moved to ``output_dir/damaged_checkpoints`` with a warning naming what was wrong, and
the newest intact one is restored instead -- or, with ``on_damaged="stop"``, the run stops with that message.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from bertgpt_jax import atomic_files

from bertgpt_jax.training.state import TrainState

PARAMS, TRAIN, DATA_ITER = "params", "train", "data_iter"
CHECKSUMS = "checksums.json"
DAMAGED_DIR = "damaged_checkpoints"
ON_DAMAGED = ("fallback", "stop")
_CHUNK = 8 << 20


class CheckpointDamagedError(ValueError):
    """A checkpoint failed its checksums or could not be read (and the run was told not to fall back)."""


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _step_files(step_dir: str) -> list[str]:
    """Every file under ``step_dir`` except the checksum list, as sorted relative paths."""
    out = []
    for root, _, names in os.walk(step_dir):
        for name in names:
            rel = os.path.relpath(os.path.join(root, name), step_dir)
            if rel != CHECKSUMS:
                out.append(rel)
    return sorted(out)


def write_checksums(step_dir: str) -> None:
    """Records the size and SHA-256 of every file of a complete checkpoint in ``step_dir/checksums.json``."""
    files = {rel: {"bytes": os.path.getsize(os.path.join(step_dir, rel)),
                   "sha256": _file_digest(os.path.join(step_dir, rel))} for rel in _step_files(step_dir)}
    atomic_files.write_json(os.path.join(step_dir, CHECKSUMS), {"files": files}, indent=1, sort_keys=True)


def verify_checksums(step_dir: str) -> str | None:
    """What is wrong with the checkpoint in ``step_dir`` by its checksums, or None when nothing is (or when
    it has no checksum list: written elsewhere, or by an older version)."""
    if not os.path.isdir(step_dir):
        return f"{step_dir} is not a directory"
    if not any(True for _ in _step_files(step_dir)):
        return f"{step_dir} is empty"
    path = os.path.join(step_dir, CHECKSUMS)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"its checksum list {path} is unreadable ({e})"
    for rel, want in sorted(files.items()):
        full = os.path.join(step_dir, rel)
        if not os.path.exists(full):
            return f"{full} is missing"
        size = os.path.getsize(full)
        if size != want["bytes"]:
            return f"{full} has {size} bytes, but {want['bytes']} bytes were written"
        if _file_digest(full) != want["sha256"]:
            return f"{full} does not match its recorded SHA-256 (the file was changed or corrupted)"
    return None


def _is_local(path: str) -> bool:
    return "://" not in path


def _is_grain_iterator(it: Any) -> bool:
    try:
        import grain

        return isinstance(it, grain.DatasetIterator)
    except (ImportError, AttributeError):
        return False


def _iter_save(it: Any):
    if _is_grain_iterator(it):
        import grain

        return grain.checkpoint.CheckpointSave(it)
    return ocp.args.JsonSave(it.get_state())


def _iter_restore(it: Any):
    if _is_grain_iterator(it):
        import grain

        return grain.checkpoint.CheckpointRestore(it)
    return ocp.args.JsonRestore()


def _handler_registry(it: Any) -> dict:
    if _is_grain_iterator(it):
        import grain

        return {DATA_ITER: grain.checkpoint.CheckpointHandler()}
    return {}


class Checkpointer:
    """Keep-N asynchronous checkpoints under ``directory``; optionally the best one by an eval metric."""

    def __init__(self, directory: str, *, max_to_keep: int = 3, data_iter: Any = None,
                 async_save: bool = True, best_metric: str | None = None, best_mode: str = "min",
                 on_damaged: str = "fallback"):
        if max_to_keep < 0:
            raise ValueError(f"keep_checkpoint_max {max_to_keep} must be >= 0 (0 keeps every checkpoint)")
        if on_damaged not in ON_DAMAGED:
            raise ValueError(f"on_damaged {on_damaged!r} is not one of {ON_DAMAGED}")
        self.directory = os.path.abspath(directory) if _is_local(directory) else directory
        self.on_damaged = on_damaged
        self._unsealed: list[int] = []  # steps saved by this process whose checksums are not written yet
        self._data_iter = data_iter
        handlers = {PARAMS: ocp.StandardCheckpointHandler(), TRAIN: ocp.StandardCheckpointHandler()}
        if data_iter is not None:
            handlers[DATA_ITER] = (_handler_registry(data_iter).get(DATA_ITER) or ocp.JsonCheckpointHandler())
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=tuple(handlers), item_handlers=handlers,
            # 0 keeps every checkpoint, as TensorFlow's max_to_keep=0 did (Orbax's 0 would delete them all).
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep or None,
                                                 enable_async_checkpointing=async_save,
                                                 cleanup_tmp_directories=True))
        self._best = None
        self.best_metric = best_metric
        if best_metric:
            if best_mode not in ("min", "max"):
                raise ValueError(f"best_mode {best_mode!r} must be 'min' or 'max'")
            self._best = ocp.CheckpointManager(
                os.path.join(os.path.dirname(self.directory), "best_checkpoint"), item_names=(PARAMS,),
                item_handlers={PARAMS: ocp.StandardCheckpointHandler()},
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, best_fn=lambda m: m[best_metric], best_mode=best_mode,
                    keep_checkpoints_without_metrics=False, enable_async_checkpointing=async_save,
                    cleanup_tmp_directories=True))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    def save(self, state: TrainState, *, force: bool = False) -> bool:
        step = int(jax.device_get(state.step))
        if step in self._manager.all_steps():  # e.g. a resumed run that had already finished
            return False
        items = {PARAMS: ocp.args.StandardSave(state.params),
                 TRAIN: ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state, "rng": state.rng})}
        if self._data_iter is not None:
            items[DATA_ITER] = _iter_save(self._data_iter)
        self._seal()  # the previous save is complete once Orbax starts the next one
        saved = self._manager.save(step, args=ocp.args.Composite(**items), force=force)
        if saved:
            self._unsealed.append(step)
        return saved

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _seal(self) -> None:
        """Waits for pending saves and records the checksums of what they wrote (process 0, local disks)."""
        if not self._unsealed:
            return
        self._manager.wait_until_finished()
        if jax.process_index() == 0 and _is_local(self.directory):
            for step in self._unsealed:
                if os.path.isdir(self.step_dir(step)):  # not deleted by keep_checkpoint_max meanwhile
                    write_checksums(self.step_dir(step))
        self._unsealed = []

    def save_best(self, step: int, params: Any, metrics: dict) -> None:
        """Offers ``params`` to the best-checkpoint manager; it keeps them only if the metric improved."""
        if self._best is not None and self.best_metric in metrics and step not in self._best.all_steps():
            self._best.save(step, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardSave(params)}),
                            metrics={self.best_metric: float(metrics[self.best_metric])}, force=True)

    def restore_latest(self, abstract: TrainState) -> tuple[TrainState | None, int | None]:
        """``(state, step)`` of the newest intact checkpoint, or ``(None, None)`` when there is none.

        A damaged one (failed checksums, unreadable) is moved to ``damaged_checkpoints`` with a warning and
        the next older one tried; with ``on_damaged="stop"`` a :class:`CheckpointDamagedError` says what is
        wrong instead."""
        steps = sorted(self.all_steps(), reverse=True)
        if not steps:
            return None, None
        for step in steps:
            problem = verify_checksums(self.step_dir(step)) if _is_local(self.directory) else None
            if problem is None:
                try:
                    return self.restore(abstract, step), step
                except Exception as e:  # noqa: BLE001 -- Orbax and TensorStore raise many kinds
                    problem = f"it cannot be read ({type(e).__name__}: {str(e)[:500]})"
            message = f"checkpoint {self.step_dir(step)} is damaged: {problem}"
            if self.on_damaged == "stop":
                raise CheckpointDamagedError(
                    f"{message}. Pass --on_damaged_checkpoint=fallback to resume from the newest intact "
                    "checkpoint instead, or move the damaged one away")
            moved = self._move_aside(step)
            older = [s for s in steps if s < step]
            logging.warning("%s; moved to %s; %s", message, moved,
                            f"trying step {older[0]}" if older else "no older checkpoint is left")
            print(f"[checkpoint] WARNING: {message}; moved to {moved}", flush=True)
        raise CheckpointDamagedError(
            f"every checkpoint in {self.directory} is damaged (moved to {self._damaged_root()}); delete "
            "output_dir to start over, or restore them from a backup")

    def _damaged_root(self) -> str:
        return os.path.join(os.path.dirname(self.directory), DAMAGED_DIR)

    def _move_aside(self, step: int) -> str:
        """Moves a damaged step out of the manager's sight (so a resumed run can save that step again)."""
        target = os.path.join(self._damaged_root(), f"{step}-{time.strftime('%Y%m%dT%H%M%S')}")
        if jax.process_index() == 0:
            os.makedirs(self._damaged_root(), exist_ok=True)
            shutil.move(self.step_dir(step), target)
        self._manager.reload()
        return target

    def restore(self, abstract: TrainState, step: int | None = None) -> TrainState:
        """The state at ``step`` (default: latest), laid out as ``abstract`` says (any mesh), and the
        data iterator rewound to where it was."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        items = {PARAMS: ocp.args.StandardRestore(abstract.params),
                 TRAIN: ocp.args.StandardRestore({"step": abstract.step, "opt_state": abstract.opt_state,
                                                  "rng": abstract.rng})}
        if self._data_iter is not None:
            items[DATA_ITER] = _iter_restore(self._data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        if self._data_iter is not None and not _is_grain_iterator(self._data_iter):
            self._data_iter.set_state(restored[DATA_ITER])
        train = restored[TRAIN]
        return TrainState(step=train["step"], params=restored[PARAMS], opt_state=train["opt_state"],
                          rng=train["rng"])

    def wait(self) -> None:
        self._manager.wait_until_finished()
        self._seal()
        if self._best is not None:
            self._best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._manager.close()
        if self._best is not None:
            self._best.close()


def checkpoint_dir(output_dir: str) -> str:
    return os.path.join(output_dir, "checkpoints")


def restore_params(path: str, abstract_params: Any) -> Any:
    """Parameters of the latest complete checkpoint under ``path`` (a run's ``output_dir``, its
    ``checkpoints`` folder, ``best_checkpoint``, or one step's folder), placed as ``abstract_params`` says."""
    path = os.path.abspath(path)
    candidates = [path, os.path.join(path, "checkpoints")]
    for root in candidates:
        if os.path.isdir(os.path.join(root, PARAMS)):  # a single step's folder
            _refuse_damaged(root)
            handler = ocp.StandardCheckpointer()
            return handler.restore(os.path.join(root, PARAMS), abstract_params)
        if not os.path.isdir(root):
            continue
        manager = ocp.CheckpointManager(root, item_names=(PARAMS,),
                                        item_handlers={PARAMS: ocp.StandardCheckpointHandler()},
                                        options=ocp.CheckpointManagerOptions(read_only=True))
        step = manager.latest_step()
        if step is not None:
            _refuse_damaged(os.path.join(root, str(step)))
            restored = manager.restore(step, args=ocp.args.Composite(
                **{PARAMS: ocp.args.StandardRestore(abstract_params)}))
            manager.close()
            return restored[PARAMS]
        manager.close()
    raise FileNotFoundError(
        f"init_checkpoint {path} holds no complete checkpoint: expected a run's output_dir, its "
        f"'checkpoints' folder, or a step folder with a '{PARAMS}' item (or an HF dir with config.json)")


def _refuse_damaged(step_dir: str) -> None:
    problem = verify_checksums(step_dir)
    if problem is not None:
        raise CheckpointDamagedError(f"init_checkpoint {step_dir} is damaged: {problem}")
