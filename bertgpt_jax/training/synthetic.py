"""The ``synthetic`` dataset: batches of the right shapes, deterministic from (seed, step), and learnable.

Token sequences count upwards (each token is the previous plus one, modulo the content vocabulary) from a
random start (skewed towards low ids), so a masked token is predictable from its neighbours and a random
"next sentence" shows as a break in the count: loss falls quickly, which is what tests and benchmarks need.
The iterator yields the GLOBAL batch; the loop places each process's rows on its devices.
"""

from __future__ import annotations

import numpy as np

PAD, CLS, SEP, MASK = 0, 1, 2, 3
_FIRST_CONTENT = 4


class SyntheticIterator:
    """Endless iterator of global batches (dicts of numpy arrays) with ``get_state``/``set_state``."""

    global_batch = True

    def __init__(self, model_type: str, batch_size: int, seq_len: int, vocab_size: int, *,
                 max_predictions_per_seq: int = 20, seed: int = 0, start_step: int = 0):
        if vocab_size <= _FIRST_CONTENT + 1:
            raise ValueError(f"synthetic data needs vocab_size > {_FIRST_CONTENT + 1}, got {vocab_size}")
        if model_type == "bert" and seq_len < 8:
            raise ValueError(f"synthetic BERT data needs max_seq_length >= 8, got {seq_len}")
        self.model_type = model_type
        self.batch_size = batch_size
        self.seq_len = seq_len
        self.vocab_size = vocab_size
        self.max_predictions = max_predictions_per_seq
        self.seed = seed
        self.step = start_step

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        rng = np.random.default_rng([self.seed, self.step])
        self.step += 1
        if self.model_type == "bert":
            return _bert_batch(rng, self.batch_size, self.seq_len, self.vocab_size, self.max_predictions)
        return _gpt_batch(rng, self.batch_size, self.seq_len, self.vocab_size)

    def get_state(self) -> dict:
        return {"step": self.step, "seed": self.seed}

    def set_state(self, state: dict) -> None:
        self.step = int(state["step"])
        self.seed = int(state["seed"])


def _counting(rng: np.random.Generator, shape: tuple[int, int], vocab_size: int) -> np.ndarray:
    n = vocab_size - _FIRST_CONTENT
    # Starts skewed towards low ids give a non-uniform unigram distribution: a first thing to learn.
    start = np.floor(n * rng.random((shape[0], 1)) ** 3).astype(np.int64)
    return (_FIRST_CONTENT + (start + np.arange(shape[1])[None, :]) % n).astype(np.int32)


def _bert_batch(rng: np.random.Generator, batch: int, seq_len: int, vocab_size: int, max_pred: int) -> dict:
    content = seq_len - 3  # [CLS] A [SEP] B [SEP]
    len_a = rng.integers(content // 4, 3 * content // 4 + 1, size=batch)
    first = _counting(rng, (batch, content), vocab_size)
    other = _counting(rng, (batch, content), vocab_size)
    is_random_next = rng.integers(0, 2, size=batch).astype(np.int32)
    input_ids = np.zeros((batch, seq_len), np.int32)
    segment_ids = np.zeros((batch, seq_len), np.int32)
    positions = np.zeros((batch, max_pred), np.int32)
    ids = np.zeros((batch, max_pred), np.int32)
    weights = np.zeros((batch, max_pred), np.float32)
    for b in range(batch):
        a = int(len_a[b])
        second = other[b] if is_random_next[b] else first[b]
        row = np.concatenate([[CLS], first[b, :a], [SEP], second[a:content], [SEP]])
        input_ids[b] = row
        segment_ids[b, a + 2:] = 1
        candidates = np.concatenate([np.arange(1, a + 1), np.arange(a + 2, seq_len - 1)])
        n_pred = min(max_pred, max(1, int(round(0.15 * len(candidates)))))
        chosen = np.sort(rng.choice(candidates, size=n_pred, replace=False))
        positions[b, :n_pred] = chosen
        ids[b, :n_pred] = input_ids[b, chosen]
        weights[b, :n_pred] = 1.0
        input_ids[b, chosen] = MASK
    return {
        "input_ids": input_ids,
        "input_mask": np.ones((batch, seq_len), np.int32),
        "segment_ids": segment_ids,
        "masked_lm_positions": positions,
        "masked_lm_ids": ids,
        "masked_lm_weights": weights,
        "next_sentence_labels": is_random_next,
    }


def _gpt_batch(rng: np.random.Generator, batch: int, seq_len: int, vocab_size: int) -> dict:
    tokens = _counting(rng, (batch, seq_len + 1), vocab_size)
    return {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:]}
