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


def shard_stats_path(shard_path: str) -> str:
    """The per-shard record the tokenization stage writes beside each shard (split, counts, largest id)."""
    return shard_path + ".json"


def _read_json(path: str, what: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e}); the file is damaged: re-create the store "
                         "with python -m bertgpt_jax.create_pretraining_data") from None


class TokenStore:
    """Read access to a complete token store.

    ``manifest["splits"][split]`` holds ``shards`` (file names), ``documents``, ``sentences``, ``tokens``
    (and ``max_token_id`` when the store records it); ``manifest["tokenizer"]`` holds ``kind``,
    ``vocab_size``, ``fingerprint`` and the special-token ids. Opening checks that the manifest agrees with
    itself and with the per-shard records (see :meth:`check`).
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
        self.manifest = _read_json(path, "token store manifest")
        if not isinstance(self.manifest, dict) or self.manifest.get("format") != FORMAT:
            raise ValueError(f"{path} is not a bertgpt_jax token store manifest")
        self.dtype = np.dtype(self.manifest["dtype"])
        self.check()

    def check(self) -> None:
        """Raises, naming the file, when the manifest's shard lists disagree with the shards' own records
        (a shard dropped from a list, or listed under the wrong split), when a shard appears in two splits,
        or when a token id or special id lies outside the vocabulary."""
        path = os.path.join(self.dir, MANIFEST)
        vocab = int(self.tokenizer_info["vocab_size"])
        for key, value in sorted(self.tokenizer_info.items()):
            if key.endswith("_token_id") and value is not None and not 0 <= int(value) < vocab:
                raise ValueError(f"{path}: tokenizer {key} {value} lies outside the vocabulary of {vocab} ids")
        owner: dict[str, str] = {}
        for split, info in self.manifest["splits"].items():
            for name in info["shards"]:
                if name in owner:
                    raise ValueError(f"{path}: shard {name} is listed under both {owner[name]!r} and {split!r}; "
                                     "the splits must be disjoint")
                owner[name] = split
            top = info.get("max_token_id")
            if top is not None and int(top) >= vocab:
                raise ValueError(f"{path}: split {split!r} holds token id {top}, outside the vocabulary of "
                                 f"{vocab} ids; the store and its tokenizer do not belong together")
        config_key = self.manifest.get("config_key")
        records = {}
        for name in sorted(os.listdir(self.dir)):
            if not name.endswith(".array_record.json"):
                continue
            meta = _read_json(os.path.join(self.dir, name), "shard record")
            if config_key is not None and meta.get("config") == config_key:
                records[name[: -len(".json")]] = meta
        for name, meta in records.items():
            if name not in owner:
                raise ValueError(f"{path} does not list shard {name}, which its record "
                                 f"{name}.json puts in split {meta.get('split')!r}: the manifest was edited "
                                 "or damaged")
            if meta.get("split") != owner[name]:
                raise ValueError(f"{path} lists shard {name} under {owner[name]!r}, but its record {name}.json "
                                 f"says it belongs to {meta.get('split')!r}")
            if meta.get("max_token_id") is not None and int(meta["max_token_id"]) >= vocab:
                raise ValueError(f"shard {os.path.join(self.dir, name)} holds token id {meta['max_token_id']}, "
                                 f"outside the vocabulary of {vocab} ids")
        for split, info in self.manifest["splits"].items():
            missing = [n for n in info["shards"] if not os.path.exists(os.path.join(self.dir, n))]
            if missing:
                raise ValueError(f"{path} lists shards of split {split!r} that do not exist: {missing}")
            if records and all(n in records for n in info["shards"]):
                docs = sum(int(records[n]["documents"]) for n in info["shards"])
                if docs != int(info["documents"]):
                    raise ValueError(f"{path}: split {split!r} claims {info['documents']} documents, its shards' "
                                     f"records hold {docs}")

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
