"""Checks that a token store fits the run before any example is built: tokenizer, special ids, lengths."""

from __future__ import annotations

import os

import numpy as np

from bertgpt_jax.data import token_store


def check_tokenizer(store: token_store.TokenStore, *, tokenizer=None, vocab_file: str | None = None,
                    expected_fingerprint: str | None = None, do_lower_case: bool | None = None) -> None:
    """Raises if the store was written with another tokenizer than the configured one.

    Give the tokenizer object, the ``vocab_file`` (any file ``tokenization.from_file`` reads) or the
    fingerprint itself; with none of them there is nothing to compare and nothing is checked.
    """
    wanted, what = None, None
    if expected_fingerprint is not None:
        wanted, what = expected_fingerprint, "expected_fingerprint"
    elif tokenizer is not None:
        wanted, what = tokenizer.fingerprint, f"the configured tokenizer {tokenizer!r}"
    elif vocab_file is not None:
        from bertgpt_jax import tokenization

        wanted = tokenization.from_file(vocab_file, do_lower_case=do_lower_case).fingerprint
        what = f"vocab_file {vocab_file}"
    if wanted is None:
        return
    have = store.tokenizer_info.get("fingerprint")
    if have != wanted:
        raise ValueError(
            f"token store {store.dir} was written with another tokenizer (fingerprint {have}) than "
            f"{what} (fingerprint {wanted}); re-create the store with this tokenizer, or configure the "
            f"run with the store's own tokenizer in {os.path.join(store.dir, token_store.TOKENIZER_DIR)}")


def special_id(store: token_store.TokenStore, name: str, purpose: str) -> int:
    """The id of special token ``name`` (cls, sep, mask, pad, eos, ...), or an error saying why it is needed."""
    index = store.tokenizer_info.get(f"{name}_token_id")
    if index is None:
        raise ValueError(f"token store {store.dir} (tokenizer kind {store.tokenizer_info.get('kind')!r}) has "
                         f"no {name} token, which {purpose} needs; use a tokenizer that defines one")
    return int(index)


def word_start_table(store: token_store.TokenStore) -> np.ndarray:
    """``bool[vocab_size]`` for whole-word masking, from the store's own tokenizer."""
    table = np.asarray(store.tokenizer().word_start_table(), bool)
    vocab_size = int(store.tokenizer_info["vocab_size"])
    if table.shape != (vocab_size,):
        raise ValueError(f"word_start_table of the tokenizer in {store.dir} has shape {table.shape}, "
                         f"expected ({vocab_size},)")
    return table
