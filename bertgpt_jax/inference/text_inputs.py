"""Model inputs from text: BERT's ``[CLS] A [SEP] B [SEP]`` with segment ids, as the original
``extract_features.py`` builds them, and padded batches of them."""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Encoded:
    """One example's ids, segment ids and token strings (specials included)."""

    input_ids: list[int]
    token_type_ids: list[int]
    tokens: list[str]


def read_examples(input_file: str) -> list[tuple[str, str | None]]:
    """One example per line, ``A ||| B`` for a pair (the original's format); an empty file is an error."""
    if not os.path.exists(input_file):
        raise FileNotFoundError(f"--input_file {input_file} does not exist")
    examples = []
    with open(input_file, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            a, sep, b = line.partition(" ||| ")
            examples.append((a, b if sep else None))
    if not examples:
        raise ValueError(f"--input_file {input_file} holds no example (it is empty or blank); write one text per "
                         "line, 'A ||| B' for a pair")
    return examples


def truncate_pair(a: list, b: list, max_length: int) -> None:
    """Pops from the longer sequence until both fit (the original's ``_truncate_seq_pair``)."""
    while len(a) + len(b) > max_length:
        (a if len(a) > len(b) else b).pop()


def encode_bert(tokenizer, text_a: str | list[int], text_b: str | list[int] | None = None,
                max_seq_length: int = 128) -> Encoded:
    """``[CLS] A [SEP]`` or ``[CLS] A [SEP] B [SEP]``, truncated to ``max_seq_length`` as the original does.
    ``text_a``/``text_b`` may be token ids already."""
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls is None or sep is None:
        raise ValueError(f"{tokenizer!r} has no [CLS]/[SEP] tokens; BERT inputs need a WordPiece vocabulary")
    a = list(text_a) if not isinstance(text_a, str) else tokenizer.encode(text_a)
    b = None if text_b is None else (list(text_b) if not isinstance(text_b, str) else tokenizer.encode(text_b))
    if b is not None:
        truncate_pair(a, b, max_seq_length - 3)
    else:
        a = a[:max_seq_length - 2]
    ids = [cls] + a + [sep]
    types = [0] * len(ids)
    if b is not None:
        ids += b + [sep]
        types += [1] * (len(b) + 1)
    return Encoded(ids, types, [tokenizer.id_to_token(i) for i in ids])


def encode_bert_batch(tokenizer, pairs: Sequence[tuple[str, str | None]], max_seq_length: int = 128
                      ) -> list[Encoded]:
    """:func:`encode_bert` of every ``(text_a, text_b or None)``, the texts tokenized in one batch call (the
    native tokenizers run a batch faster than a loop of single texts)."""
    texts = [a for a, _ in pairs] + [b for _, b in pairs if b is not None]
    ids = iter(tokenizer.encode_batch(texts))
    firsts = [next(ids) for _ in pairs]
    return [encode_bert(tokenizer, a, None if b is None else next(ids), max_seq_length) for a, (_, b) in
            zip(firsts, pairs)]


def pad_batch(encoded: list[Encoded], length: int, rows: int | None = None) -> dict[str, np.ndarray]:
    """``input_ids``, ``attention_mask``, ``token_type_ids`` [rows, length], right-padded with zeros (rows
    beyond the examples are all padding, ``attention_mask`` 0)."""
    rows = len(encoded) if rows is None else rows
    out = {k: np.zeros((rows, length), np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    for r, e in enumerate(encoded):
        n = len(e.input_ids)
        out["input_ids"][r, :n] = e.input_ids
        out["attention_mask"][r, :n] = 1
        out["token_type_ids"][r, :n] = e.token_type_ids
    return out


def length_bucket(n: int, limit: int, minimum: int = 16) -> int:
    """The padded length for a batch whose longest example has ``n`` tokens: a power of two (so batches
    share compiled functions), at most ``limit``."""
    return min(limit, max(minimum, 1 << max(n - 1, 0).bit_length()))


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple
