"""The ``synthetic`` dataset: batches of the right shapes, deterministic from (seed, step), and learnable.

Each task writes its own batch from the helpers here. Token sequences count upwards (each token is the
previous plus one, modulo the content vocabulary) from a random start skewed towards low ids, so a masked
token is predictable from its neighbours and a random "next sentence" shows as a break in the count: loss
falls quickly, which is what tests and benchmarks need.
"""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

PAD, CLS, SEP, MASK = 0, 1, 2, 3
FIRST_CONTENT = 4

MakeBatch = Callable[[np.random.Generator, int], dict]


class SyntheticBatches:
    """Endless iterator of this process's share of each global batch, with ``get_state``/``set_state``.

    Global batch ``k`` is ``make_batch(rng, global_batch_size)`` with ``rng`` seeded by ``(seed, k)``;
    process ``p`` of ``P`` gets its ``p``-th contiguous block of rows, as the token-store pipeline does.
    """

    def __init__(self, make_batch: MakeBatch, global_batch_size: int, *, seed: int = 0,
                 process_index: int | None = None, process_count: int | None = None, start_step: int = 0):
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        if global_batch_size % self.process_count:
            raise ValueError(f"global batch {global_batch_size} is not divisible by {self.process_count} processes")
        self.make_batch = make_batch
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.step = start_step

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rng = np.random.default_rng([self.seed, self.step])
        self.step += 1
        batch = self.make_batch(rng, self.global_batch_size)
        n = self.global_batch_size // self.process_count
        lo = self.process_index * n
        return {k: v[lo:lo + n] for k, v in batch.items()}

    def get_state(self) -> dict:
        return {"step": self.step, "seed": self.seed}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])
        self.seed = int(state["seed"])


def check_vocab(vocab_size: int) -> None:
    if vocab_size <= FIRST_CONTENT + 1:
        raise ValueError(f"synthetic data needs vocab_size > {FIRST_CONTENT + 1}, got {vocab_size}")


def counting(rng: np.random.Generator, shape: tuple[int, int], vocab_size: int) -> np.ndarray:
    """int32 rows that count upwards through the content ids from a random, low-skewed start."""
    n = vocab_size - FIRST_CONTENT
    # Starts skewed towards low ids give a non-uniform unigram distribution: a first thing to learn.
    start = np.floor(n * rng.random((shape[0], 1)) ** 3).astype(np.int64)
    return (FIRST_CONTENT + (start + np.arange(shape[1])[None, :]) % n).astype(np.int32)
