"""A split of a token store as flat memory-mapped arrays, built once and cached next to the store.

The example builders never touch ArrayRecord in the hot loop: they slice these arrays. Three files per
split (raw little-endian, plus a JSON header), named by a key of the split's manifest entry so a
rewritten store never reads a stale cache:

    tokens            every document's tokens, concatenated (the store's dtype)
    sentence_ends     int64, exclusive global end offset of each sentence
    doc_sentences     int64 [documents + 1], offset of each document's first sentence in sentence_ends

Empty sentences and empty documents are dropped while building, so every sentence has >= 1 token
and the sentences of consecutive documents tile ``tokens`` without gaps.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import uuid

import numpy as np

from bertgpt_jax import atomic_files
from bertgpt_jax.data import token_store

_READ_BATCH = 1024


@dataclasses.dataclass(frozen=True)
class FlatSplit:
    """Memory-mapped arrays of one split; picklable by path (worker processes reopen the files)."""

    prefix: str
    tokens: np.ndarray
    sentence_ends: np.ndarray
    doc_sentences: np.ndarray
    tokenizer_info: dict

    @property
    def num_documents(self) -> int:
        return len(self.doc_sentences) - 1

    def __reduce__(self):
        return (_open, (self.prefix, self.tokenizer_info))


def cache_key(store: token_store.TokenStore, split: str) -> str:
    """A short digest of what the cache depends on: the split's manifest entry, the tokenizer, and each
    shard's size and modification time (a store rewritten in place gets a fresh cache)."""
    files = [(os.path.getsize(p), os.stat(p).st_mtime_ns) for p in store.shard_paths(split)]
    payload = json.dumps({"split": store.manifest["splits"][split], "dtype": str(store.dtype),
                          "fingerprint": store.tokenizer_info.get("fingerprint"), "files": files},
                         sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:16]


def default_cache_dir(store_dir: str) -> str:
    return os.path.join(store_dir, "cache")


def load(store: token_store.TokenStore, split: str, cache_dir: str | None = None) -> FlatSplit:
    """Opens the flat arrays of ``split``, building them first if no cache exists yet."""
    store.shard_paths(split)  # raises a clear error on an unknown or empty split
    cache_dir = cache_dir or default_cache_dir(store.dir)
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise OSError(f"cannot create the pipeline cache directory {cache_dir} ({e}); pass cache_dir= "
                      "a writable directory") from e
    prefix = os.path.join(cache_dir, f"{split}-{cache_key(store, split)}")
    if not os.path.exists(prefix + ".json"):
        _build(store, split, prefix)
    flat = _open(prefix, store.tokenizer_info)
    if len(flat.tokens) == 0:
        raise ValueError(f"split {split!r} of token store {store.dir} holds no tokens")
    return flat


def _open(prefix: str, tokenizer_info: dict) -> FlatSplit:
    with open(prefix + ".json", encoding="utf-8") as f:
        header = json.load(f)
    arrays = {}
    for name in ("tokens", "sentence_ends", "doc_sentences"):
        dtype, count = np.dtype(header[name]["dtype"]), header[name]["count"]
        # np.memmap refuses empty files; an empty split is reported by load().
        arrays[name] = (np.memmap(f"{prefix}.{name}", dtype=dtype, mode="r", shape=(count,)) if count
                        else np.zeros((0,), dtype))
    return FlatSplit(prefix=prefix, tokenizer_info=tokenizer_info, **arrays)


def _build(store: token_store.TokenStore, split: str, prefix: str) -> None:
    # Unique temporary names: several processes may build the same cache at once; the last rename wins
    # and all of them write identical bytes.
    tmp = f".{uuid.uuid4().hex}.tmp"
    names = ("tokens", "sentence_ends", "doc_sentences")
    files = {n: open(f"{prefix}.{n}{tmp}", "wb") for n in names}
    counts = dict.fromkeys(names, 0)
    try:
        src = store.source(split)
        total_tokens, total_sentences = 0, 0
        files["doc_sentences"].write(np.zeros(1, "<i8").tobytes())
        counts["doc_sentences"] = 1
        for lo in range(0, len(src), _READ_BATCH):
            records = src.__getitems__(range(lo, min(lo + _READ_BATCH, len(src))))
            for record in records:
                tokens, ends = store.decode(record)
                ends = ends.astype(np.int64)
                keep = np.diff(ends, prepend=0) > 0  # drop empty sentences
                if not keep.any():
                    continue
                files["tokens"].write(tokens.astype(store.dtype, copy=False).tobytes())
                files["sentence_ends"].write((ends[keep] + total_tokens).astype("<i8").tobytes())
                total_tokens += len(tokens)
                total_sentences += int(keep.sum())
                files["doc_sentences"].write(np.array([total_sentences], "<i8").tobytes())
                counts["doc_sentences"] += 1
        counts["tokens"], counts["sentence_ends"] = total_tokens, total_sentences
    finally:
        for f in files.values():
            f.close()
    for n in names:
        os.replace(f"{prefix}.{n}{tmp}", f"{prefix}.{n}")
    header = {"tokens": {"dtype": store.dtype.str, "count": counts["tokens"]},
              "sentence_ends": {"dtype": "<i8", "count": counts["sentence_ends"]},
              "doc_sentences": {"dtype": "<i8", "count": counts["doc_sentences"]}}
    atomic_files.write_json(prefix + ".json", header)
