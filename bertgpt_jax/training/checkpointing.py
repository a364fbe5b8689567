"""Orbax checkpoints of a run: parameters, optimizer state + step + RNG, and the data iterator.

Items are saved separately so ``init_checkpoint`` can read parameters alone (a phase-two BERT run, or
continued pretraining). Saves are asynchronous; Orbax writes into a temporary directory and renames it
when complete, so a half-written checkpoint is never seen by ``latest_step``/``restore``.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from bertgpt_jax.training.state import TrainState

PARAMS, TRAIN, DATA_ITER = "params", "train", "data_iter"


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
                 async_save: bool = True, best_metric: str | None = None, best_mode: str = "min"):
        self.directory = os.path.abspath(directory)
        self._data_iter = data_iter
        handlers = {PARAMS: ocp.StandardCheckpointHandler(), TRAIN: ocp.StandardCheckpointHandler()}
        if data_iter is not None:
            handlers[DATA_ITER] = (_handler_registry(data_iter).get(DATA_ITER) or ocp.JsonCheckpointHandler())
        self._manager = ocp.CheckpointManager(
            self.directory, item_names=tuple(handlers), item_handlers=handlers,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, enable_async_checkpointing=async_save,
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
        return self._manager.save(step, args=ocp.args.Composite(**items), force=force)

    def save_best(self, step: int, params: Any, metrics: dict) -> None:
        """Offers ``params`` to the best-checkpoint manager; it keeps them only if the metric improved."""
        if self._best is not None and self.best_metric in metrics and step not in self._best.all_steps():
            self._best.save(step, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardSave(params)}),
                            metrics={self.best_metric: float(metrics[self.best_metric])}, force=True)

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
            handler = ocp.StandardCheckpointer()
            return handler.restore(os.path.join(root, PARAMS), abstract_params)
        if not os.path.isdir(root):
            continue
        manager = ocp.CheckpointManager(root, item_names=(PARAMS,),
                                        item_handlers={PARAMS: ocp.StandardCheckpointHandler()},
                                        options=ocp.CheckpointManagerOptions(read_only=True))
        step = manager.latest_step()
        if step is not None:
            restored = manager.restore(step, args=ocp.args.Composite(
                **{PARAMS: ocp.args.StandardRestore(abstract_params)}))
            manager.close()
            return restored[PARAMS]
        manager.close()
    raise FileNotFoundError(
        f"init_checkpoint {path} holds no complete checkpoint: expected a run's output_dir, its "
        f"'checkpoints' folder, or a step folder with a '{PARAMS}' item (or an HF dir with config.json)")
