"""Batches for one JAX process: global shuffle, per-process share, epochs, prefetch, checkpointable state.

    it = make_iterator(ds, global_batch_size=256, shuffle=True, seed=0, num_epochs=None)
    batch = next(it)          # dict of numpy arrays, leading dim global_batch_size // process_count
    state = it.get_state()    # or grain.checkpoint.CheckpointSave(it) inside an Orbax Composite
    it.set_state(state)       # continues at exactly the next batch

Global batch ``k`` is positions ``[s*G, (s+1)*G)`` of epoch ``e``'s permutation (``e, s = divmod(k,
steps_per_epoch)``; the permutation is a pure function of ``seed`` and ``e``); process ``p`` of ``P``
takes the ``p``-th contiguous block of ``G / P`` of them, which is the layout
``jax.make_array_from_process_local_data`` expects for a batch sharded over the data axis. Every process
computes the same permutation, so together they see each example of an epoch exactly once.

Datasets from :func:`bert_dataset`/:func:`gpt_dataset` build a batch in one vectorised call (their
``examples(indices)``), passing index ``i + e * len(ds)`` so dynamic masking differs per epoch; any
other Grain ``MapDataset`` of dicts of arrays works too, one example at a time.

``drop_remainder=False`` keeps the last partial batch of an epoch, padded to full size with copies of
its first example; such batches carry ``is_real_example`` (int32, 0 on padding) and zero
``masked_lm_weights`` on padding, as the original BERT's evaluation does. :func:`make_eval_iterator`
is that, unshuffled, for one epoch.
"""

from __future__ import annotations

import sys
import threading

import grain
import jax
import numpy as np


class BatchedExamples(grain.MapDataset):
    """Item ``k`` is this process's share of global batch ``k`` (see the module docstring)."""

    def __init__(self, examples: grain.MapDataset, *, global_batch_size: int, shuffle: bool, seed: int,
                 num_epochs: int | None, process_index: int, process_count: int, drop_remainder: bool):
        super().__init__()
        if global_batch_size < 1 or global_batch_size % process_count:
            raise ValueError(f"global_batch_size {global_batch_size} must be a positive multiple of the "
                             f"process count {process_count}")
        if not 0 <= process_index < process_count:
            raise ValueError(f"process_index {process_index} must lie in [0, {process_count})")
        if num_epochs is not None and num_epochs < 1:
            raise ValueError(f"num_epochs {num_epochs} must be >= 1, or None for endless")
        n = len(examples)
        if n == 0:
            raise ValueError("the dataset is empty; nothing to batch")
        if drop_remainder and n < global_batch_size:
            raise ValueError(f"the dataset has {n} examples, fewer than one global batch of "
                             f"{global_batch_size}; use a smaller batch or drop_remainder=False")
        self.examples_ds = examples
        self.num_examples = n
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // process_count
        self.shuffle, self.seed, self.num_epochs = shuffle, seed, num_epochs
        self.process_index, self.process_count = process_index, process_count
        self.drop_remainder = drop_remainder
        self.steps_per_epoch = n // global_batch_size if drop_remainder else -(-n // global_batch_size)
        self._perm_cache: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_lock"], state["_perm_cache"] = None, {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return sys.maxsize if self.num_epochs is None else self.steps_per_epoch * self.num_epochs

    def __str__(self) -> str:
        return (f"BatchedExamples(local_batch={self.local_batch_size}, process={self.process_index}/"
                f"{self.process_count}, shuffle={self.shuffle})")

    def permutation(self, epoch: int) -> np.ndarray:
        """The order of epoch ``epoch``: a pure function of (seed, epoch)."""
        with self._lock:
            perm = self._perm_cache.get(epoch)
            if perm is None:
                perm = np.arange(self.num_examples, dtype=np.int32 if self.num_examples < 2**31 else np.int64)
                np.random.default_rng([self.seed, epoch]).shuffle(perm)
                # Prefetch threads straddle at most one epoch boundary: two epochs suffice.
                self._perm_cache = {e: p for e, p in self._perm_cache.items() if e == epoch - 1}
                self._perm_cache[epoch] = perm
        return perm

    def example_indices(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(dataset indices, real mask) of this process's share of global batch ``step``."""
        epoch, s = divmod(step, self.steps_per_epoch)
        pos = (s * self.global_batch_size + self.process_index * self.local_batch_size
               + np.arange(self.local_batch_size))
        real = pos < self.num_examples
        first = s * self.global_batch_size  # padding repeats the batch's first example
        pos = np.where(real, pos, first)
        order = self.permutation(epoch)[pos] if self.shuffle else pos
        return order.astype(np.int64) + epoch * self.num_examples, real  # int64: epoch * n passes 2**31

    def __getitem__(self, step):
        if isinstance(step, slice):
            return self.slice(step)
        if self.num_epochs is not None and step >= len(self):
            raise IndexError(f"step {step} is past the last of {len(self)} batches")
        indices, real = self.example_indices(step)
        if hasattr(self.examples_ds, "examples"):
            batch = self.examples_ds.examples(indices)
        else:
            items = [self.examples_ds[int(i)] for i in indices]
            batch = {k: np.stack([np.asarray(item[k]) for item in items]) for k in items[0]}
        if not self.drop_remainder:
            batch["is_real_example"] = real.astype(np.int32)
            if "masked_lm_weights" in batch:
                batch["masked_lm_weights"] = batch["masked_lm_weights"] * real[:, None].astype(np.float32)
        return batch


def batched_dataset(examples: grain.MapDataset, *, global_batch_size: int, shuffle: bool = True,
                    seed: int = 0, num_epochs: int | None = None, process_index: int | None = None,
                    process_count: int | None = None, drop_remainder: bool = True, prefetch_threads: int = 2,
                    prefetch_batches: int = 4, worker_processes: int = 0) -> grain.IterDataset:
    """The Grain ``IterDataset`` of this process's batches; :func:`make_iterator` is ``iter()`` of it.

    ``process_index``/``process_count`` default to ``jax.process_index()``/``jax.process_count()``.
    ``prefetch_threads`` threads keep ``prefetch_batches`` batches ready; ``worker_processes > 0`` builds
    batches in that many spawned processes instead (Grain ``mp_prefetch``: guard the entry point with
    ``if __name__ == "__main__":``, and outside ``absl.app.run`` call ``flags.FLAGS.mark_as_parsed()``).
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    batches = BatchedExamples(examples, global_batch_size=global_batch_size, shuffle=shuffle, seed=seed,
                              num_epochs=num_epochs, process_index=process_index, process_count=process_count,
                              drop_remainder=drop_remainder)
    if worker_processes > 0:
        return batches.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).mp_prefetch(
            grain.MultiprocessingOptions(num_workers=worker_processes, per_worker_buffer_size=prefetch_batches))
    return batches.to_iter_dataset(grain.ReadOptions(num_threads=prefetch_threads,
                                                     prefetch_buffer_size=prefetch_batches if prefetch_threads else 0))


def make_iterator(examples: grain.MapDataset, *, global_batch_size: int, shuffle: bool = True, seed: int = 0,
                  num_epochs: int | None = None, process_index: int | None = None,
                  process_count: int | None = None, drop_remainder: bool = True, prefetch_threads: int = 2,
                  prefetch_batches: int = 4, worker_processes: int = 0) -> grain.DatasetIterator:
    """A checkpointable iterator of this process's batches (``get_state``/``set_state``; Orbax via
    ``grain.checkpoint.CheckpointSave``/``CheckpointRestore``). Arguments as :func:`batched_dataset`."""
    return iter(batched_dataset(examples, global_batch_size=global_batch_size, shuffle=shuffle, seed=seed,
                                num_epochs=num_epochs, process_index=process_index, process_count=process_count,
                                drop_remainder=drop_remainder, prefetch_threads=prefetch_threads,
                                prefetch_batches=prefetch_batches, worker_processes=worker_processes))


class Subset(grain.MapDataset):
    """Items ``indices`` of ``examples``, in that order (batched in one call where ``examples`` can)."""

    def __init__(self, examples: grain.MapDataset, indices: np.ndarray):
        super().__init__()
        self.examples_ds = examples
        self.indices = np.asarray(indices, np.int64)
        if hasattr(examples, "examples"):  # what BatchedExamples calls for a whole batch
            self.examples = self._examples

    def __len__(self) -> int:
        return len(self.indices)

    def __str__(self) -> str:
        return f"Subset({len(self)} of {len(self.examples_ds)})"

    def __getitem__(self, i):
        if isinstance(i, slice):
            return self.slice(i)
        return self.examples_ds[int(self.indices[i])]

    def _examples(self, indices: np.ndarray) -> dict:
        return self.examples_ds.examples(self.indices[np.asarray(indices, np.int64)])


def eval_sample(examples: grain.MapDataset, max_examples: int | None, seed: int = 0) -> grain.MapDataset:
    """Every example when there are at most ``max_examples``; else a fixed sample of ``max_examples`` spread over
    the whole dataset, drawn from ``seed`` alone (the same at every evaluation) and kept in dataset order."""
    n = len(examples)
    if max_examples is None or n <= max_examples:
        return examples
    if max_examples < 1:
        raise ValueError(f"max_examples {max_examples} must be >= 1")
    return Subset(examples, np.sort(np.random.default_rng([seed, n]).choice(n, size=max_examples, replace=False)))


def make_eval_iterator(examples: grain.MapDataset, *, global_batch_size: int, process_index: int | None = None,
                       process_count: int | None = None, prefetch_threads: int = 2, max_examples: int | None = None,
                       sample_seed: int = 0) -> grain.DatasetIterator:
    """One unshuffled pass, the last batch padded (``is_real_example`` marks real rows), over every example or,
    with ``max_examples``, over :func:`eval_sample`'s fixed sample of them."""
    return make_iterator(eval_sample(examples, max_examples, sample_seed), global_batch_size=global_batch_size,
                         shuffle=False, num_epochs=1, process_index=process_index, process_count=process_count,
                         drop_remainder=False, prefetch_threads=prefetch_threads)
