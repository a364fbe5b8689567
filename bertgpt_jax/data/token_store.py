"""The token store: sharded ArrayRecord files of tokenized documents, plus ``manifest.json``.

Layout of a store directory::

    manifest.json                         written last, atomically: its presence means the store is complete
    tokenizer/                            the tokenizer that produced the ids (``tokenization.from_file`` loads it)
    train-00000-of-00004.array_record     one record per document
    validation-00000-of-00001.array_record

A record is one document: ``uint32 n`` (number of sentences), ``uint32 ends[n]`` (exclusive end offset of
each sentence in the token array), then the tokens in the store's dtype (``uint16`` when the vocabulary
fits, else ``uint32``), all little-endian.
"""

from __future__ import annotations

import json
import os
from typing import Iterable, Sequence

import numpy as np

from bertgpt_jax import atomic_files

MANIFEST = "manifest.json"
TOKENIZER_DIR = "tokenizer"
FORMAT = "bertgpt_jax.token_store"
VERSION = 1
_HEADER = np.dtype("<u4")


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.array_record"


def encode_document(tokens: np.ndarray, sentence_ends: Sequence[int], dtype: np.dtype) -> bytes:
    """Serializes one document: ``tokens`` (all sentences concatenated) and each sentence's end offset."""
    ends = np.asarray(sentence_ends, dtype=_HEADER)
    tokens = np.asarray(tokens)
    if len(ends) and int(ends[-1]) != len(tokens):
        raise ValueError(f"last sentence end {int(ends[-1])} != number of tokens {len(tokens)}")
    return b"".join((len(ends).to_bytes(4, "little"), ends.tobytes(), tokens.astype(dtype, copy=False).tobytes()))


def decode_document(record: bytes, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """The inverse of :func:`encode_document`: ``(tokens, sentence_ends)``, read-only views of ``record``."""
    n = int(np.frombuffer(record, _HEADER, count=1)[0])
    ends = np.frombuffer(record, _HEADER, count=n, offset=4)
    tokens = np.frombuffer(record, dtype, offset=4 * (n + 1))
    return tokens, ends


def split_sentences(tokens: np.ndarray, ends: np.ndarray) -> list[np.ndarray]:
    starts = np.concatenate([[0], ends[:-1]]).astype(np.int64)
    return [tokens[s:e] for s, e in zip(starts, ends.astype(np.int64))]


# One record per chunk, so any document is read alone. Snappy: several times faster to write and faster to
# read than ArrayRecord's default brotli or zstd, for shards a little larger (bench/README.md has the
# figures); the tokenization stage's writer shares the cores with the tokenizers.
WRITER_OPTIONS = "group_size:1,snappy"


def write_shard(path: str, records: Iterable[bytes]) -> int:
    """Writes records to ``path`` atomically (a temporary name, renamed when complete). Returns the count."""
    from array_record.python.array_record_module import ArrayRecordWriter

    count = 0
    with atomic_files.atomic_path(path) as tmp:
        writer = ArrayRecordWriter(tmp, WRITER_OPTIONS)
        try:
            for record in records:
                writer.write(record)
                count += 1
        finally:
            writer.close()
    return count


def write_manifest(store_dir: str, manifest: dict) -> None:
    manifest = {"format": FORMAT, "version": VERSION, **manifest}
    atomic_files.write_json(os.path.join(store_dir, MANIFEST), manifest, indent=2, sort_keys=True)


class TokenStore:
    """Read access to a complete token store.

    ``manifest["splits"][split]`` holds ``shards`` (file names), ``documents``, ``sentences``, ``tokens``;
    ``manifest["tokenizer"]`` holds ``kind``, ``vocab_size``, ``fingerprint`` and the special-token ids.
    """

    def __init__(self, store_dir: str):
        self.dir = store_dir
        path = os.path.join(store_dir, MANIFEST)
        if not os.path.exists(path):
            if os.path.isdir(store_dir) and any(n.endswith(".array_record") for n in os.listdir(store_dir)):
                raise ValueError(f"token store {store_dir} has shards but no {MANIFEST}: it is incomplete; "
                                 "re-run create_pretraining_data to finish it")
            raise FileNotFoundError(f"{store_dir} is not a token store (no {MANIFEST}); create one with "
                                    "python -m bertgpt_jax.create_pretraining_data")
        with open(path, encoding="utf-8") as f:
            self.manifest = json.load(f)
        if self.manifest.get("format") != FORMAT:
            raise ValueError(f"{path} is not a bertgpt_jax token store manifest")
        self.dtype = np.dtype(self.manifest["dtype"])

    @property
    def splits(self) -> list[str]:
        return list(self.manifest["splits"])

    @property
    def tokenizer_info(self) -> dict:
        return self.manifest["tokenizer"]

    def tokenizer(self):
        from bertgpt_jax import tokenization

        return tokenization.from_file(os.path.join(self.dir, TOKENIZER_DIR))

    def shard_paths(self, split: str) -> list[str]:
        if split not in self.manifest["splits"]:
            raise ValueError(f"token store {self.dir} has no split {split!r}; it has {self.splits}")
        info = self.manifest["splits"][split]
        if not info.get("documents"):
            raise ValueError(f"split {split!r} of token store {self.dir} is empty")
        return [os.path.join(self.dir, s) for s in info["shards"]]

    def source(self, split: str):
        """A Grain random-access source of raw records (decode with :meth:`decode`)."""
        import grain

        return grain.sources.ArrayRecordDataSource(self.shard_paths(split))

    def decode(self, record: bytes) -> tuple[np.ndarray, np.ndarray]:
        return decode_document(record, self.dtype)

    def documents(self, split: str):
        """Iterates ``(tokens, sentence_ends)`` over a split, in store order."""
        src = self.source(split)
        for i in range(len(src)):
            yield self.decode(src[i])
