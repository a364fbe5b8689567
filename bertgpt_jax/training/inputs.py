"""Train and eval batch iterators for the loop (the synthetic dataset, or a token store), and their
placement onto the mesh as global arrays."""

from __future__ import annotations

from typing import Iterator

import jax
import numpy as np

from bertgpt_jax import sharding as sharding_lib
from bertgpt_jax.training.synthetic import SyntheticIterator

SYNTHETIC = "synthetic"
_EVAL_SEED_OFFSET = 1_000_003


def store_vocab_size(dataset: str) -> int | None:
    """The vocabulary size recorded in a token store's manifest, or None for ``synthetic``."""
    if dataset == SYNTHETIC:
        return None
    from bertgpt_jax.data.token_store import TokenStore

    return int(TokenStore(dataset).tokenizer_info["vocab_size"])


def train_iterator(dataset: str, model_type: str, global_batch: int, seq_len: int, vocab_size: int,
                   max_predictions: int, seed: int) -> Iterator[dict]:
    if dataset == SYNTHETIC:
        return SyntheticIterator(model_type, global_batch, seq_len, vocab_size,
                                 max_predictions_per_seq=max_predictions, seed=seed)
    return _store_iterator(dataset, "train", model_type, global_batch, seq_len, max_predictions, seed, True)


def eval_iterator(dataset: str, model_type: str, global_batch: int, seq_len: int, vocab_size: int,
                  max_predictions: int, seed: int) -> Iterator[dict]:
    """A fresh iterator over the validation split (the same batches at every evaluation)."""
    if dataset == SYNTHETIC:
        return SyntheticIterator(model_type, global_batch, seq_len, vocab_size,
                                 max_predictions_per_seq=max_predictions, seed=seed + _EVAL_SEED_OFFSET)
    return _store_iterator(dataset, "validation", model_type, global_batch, seq_len, max_predictions, seed, False)


def _store_iterator(store_dir: str, split: str, model_type: str, global_batch: int, seq_len: int,
                    max_predictions: int, seed: int, train: bool) -> Iterator[dict]:
    from bertgpt_jax import data

    if model_type == "bert":
        ds = data.bert_dataset(store_dir, split=split, max_seq_length=seq_len,
                               max_predictions_per_seq=max_predictions, seed=seed)
    else:
        ds = data.gpt_dataset(store_dir, split=split, seq_len=seq_len, seed=seed)
    if train:
        return data.make_iterator(ds, global_batch_size=global_batch, shuffle=True, seed=seed)
    return data.make_eval_iterator(ds, global_batch_size=global_batch)


def place(batch: dict, mesh: jax.sharding.Mesh, global_batch: int, is_global: bool) -> dict:
    """Numpy batch -> global jax arrays on ``shardings``.

    A global batch (the synthetic iterator) is cut per device; a process-local batch (the token-store
    pipeline, one shard per host) is assembled across processes.
    """
    out = {}
    for name, value in batch.items():
        x = np.asarray(value)
        sharding = sharding_lib.batch_sharding(mesh, x.ndim)
        if is_global:
            out[name] = jax.make_array_from_callback(x.shape, sharding, lambda index, x=x: x[index])
        else:
            shape = (global_batch,) + x.shape[1:]
            out[name] = jax.make_array_from_process_local_data(sharding, x, shape)
    return out
