"""The task interface: everything that differs between training objectives, behind one object.

The training engine (``bertgpt_jax.training``: state, step, loop, checkpointing, metrics) takes a task and
never asks which one it is. A task owns its model (which computes its own loss sums), the features it reads
and where they come from, the example batch that initialises the model, the loss as sums and counts, the
metrics it reports, its FLOPs per token and its synthetic batches. A new objective is a new subclass.

Contracts the engine relies on:

- Batches are dicts of numpy arrays holding this process's share of a global batch (leading dimension
  ``global_batch_size // jax.process_count()``); the engine assembles the global array across processes.
- ``loss_sums`` returns sums, never means; ``counts`` returns the denominators from the batch alone, so
  microbatches and devices add up to the full-batch mean exactly.
- Evaluation batches may carry ``is_real_example`` (0 on padding rows) and must count padding for nothing.
- Iterators for training are checkpointable: a Grain ``DatasetIterator``, or ``get_state``/``set_state``
  with a JSON-serialisable state.
"""

from __future__ import annotations

import abc
import os
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bertgpt_jax.configs import ModelConfig

Batch = dict[str, np.ndarray]


class Task(abc.ABC):
    """One objective on one model. Subclasses set ``model`` in ``__init__``."""

    #: The eval metrics (names without the ``eval/`` prefix) a run reports when it ends.
    headline_metrics: tuple[str, ...] = ("loss",)

    def __init__(self, model_cfg: ModelConfig, model: nn.Module, seq_len: int):
        self.model_cfg = model_cfg
        self.model = model
        self.seq_len = seq_len  # tokens per example, for tokens/s and MFU

    # ---- the model -----------------------------------------------------------------------------

    @abc.abstractmethod
    def example_batch(self, batch_size: int) -> Batch:
        """A batch of ``batch_size`` examples with every feature at its shape and dtype (zeros will do):
        what initialises the model and lays out the compiled step's inputs."""

    @abc.abstractmethod
    def init_params(self, rng: jax.Array, batch: Batch) -> Any:
        """The model's (logically boxed) parameters, from ``model.init`` on ``batch``."""

    def load_init_params(self, path: str, abstract_params: Any) -> Any:
        """Parameters to start from (``init_checkpoint``): an earlier run's ``output_dir`` (or one of its
        checkpoint folders), or an HF directory. Host or device arrays shaped as ``abstract_params``."""
        from bertgpt_jax.training import checkpointing

        if os.path.exists(os.path.join(path, "config.json")) and not os.path.isdir(os.path.join(path, "checkpoints")):
            return self.load_hf_params(path)
        return checkpointing.restore_params(path, abstract_params)

    def load_hf_params(self, path: str) -> Any:
        """Parameters from an HF directory, checked against this task's architecture."""
        from bertgpt_jax import convert

        hf_cfg, params = convert.from_hf(path, init_missing_heads=True, scan_layers=self.model_cfg.scan_layers)
        for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size", "model_type"):
            if getattr(hf_cfg, field) != getattr(self.model_cfg, field):
                raise ValueError(f"init_checkpoint {path} has {field}={getattr(hf_cfg, field)}, but the model has "
                                 f"{getattr(self.model_cfg, field)}; pass --model={path} to train its architecture")
        return params

    # ---- the loss --------------------------------------------------------------------------------

    @abc.abstractmethod
    def loss_sums(self, params: Any, batch: Batch, *, deterministic: bool,
                  dropout_rng: jax.Array | None = None) -> dict[str, jax.Array]:
        """Forward pass and the loss as sums (``<name>_loss_sum``, plus whatever metrics need, e.g.
        ``<name>_correct_sum``), over this batch."""

    @abc.abstractmethod
    def counts(self, batch: Batch) -> dict[str, jax.Array]:
        """The denominators (``<name>_count``) of each loss in ``batch``, computed from the batch alone."""

    def objective(self, sums: dict[str, jax.Array], totals: dict[str, jax.Array]) -> jax.Array:
        """The scalar trained on: the sum over losses of ``<name>_loss_sum / <name>_count``, with ``totals``
        the counts of the whole global batch (so microbatch objectives add up to the batch mean)."""
        names = [k[:-len("_loss_sum")] for k in sorted(sums) if k.endswith("_loss_sum")]
        return sum(sums[f"{n}_loss_sum"] / jnp.maximum(totals[f"{n}_count"], 1.0) for n in names)

    @abc.abstractmethod
    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        """Host-side metrics (``loss`` first, then accuracies, perplexity, ...) from sums accumulated
        over batches, with the counts beside them."""

    # ---- the data --------------------------------------------------------------------------------

    @abc.abstractmethod
    def train_batches(self, global_batch_size: int, seed: int) -> Iterator[Batch]:
        """An endless, checkpointable iterator of this process's share of each training batch."""

    @abc.abstractmethod
    def eval_batches(self, global_batch_size: int, seed: int, max_examples: int | None = None) -> Iterator[Batch]:
        """A fresh iterator over the evaluation examples (the same batches at every evaluation): all of them, or
        a fixed sample of ``max_examples`` spread over the whole split."""

    def evaluate(self, params: Any, mesh: jax.sharding.Mesh) -> dict[str, float] | None:
        """The task's own evaluation of ``params`` (metric names without ``eval/``), for metrics that are no
        sums over batches (F1 over entities, SQuAD's exact match after span decoding). None, the default:
        the engine sums ``loss_sums`` over ``eval_batches`` and calls ``summarize``."""
        return None

    def check(self) -> None:
        """Raises ``ValueError`` on settings that cannot work, before any compilation."""

    # ---- accounting ------------------------------------------------------------------------------

    @abc.abstractmethod
    def flops_per_token(self) -> float:
        """Training FLOPs per input token of the step this task runs (for MFU)."""


def real_examples(batch: Batch, n: int) -> jax.Array:
    """float32 [n]: 1 for real examples, 0 for padding rows of an evaluation batch (``is_real_example``)."""
    real = batch.get("is_real_example")
    return jnp.ones((n,), jnp.float32) if real is None else jnp.asarray(real).reshape(-1).astype(jnp.float32)
