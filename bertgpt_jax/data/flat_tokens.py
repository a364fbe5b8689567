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
    # Once per process that loads the split (not in workers that unpickle it): one pass over the ids.
    _check_ids(flat.tokens, int(store.tokenizer_info["vocab_size"]), f"{prefix}.tokens")
    if len(flat.tokens) == 0:
        raise ValueError(f"split {split!r} of token store {store.dir} holds no tokens")
    return flat


def _open(prefix: str, tokenizer_info: dict) -> FlatSplit:
    try:
        with open(prefix + ".json", encoding="utf-8") as f:
            header = json.load(f)
    except ValueError as e:
        raise ValueError(f"pipeline cache header {prefix}.json is damaged ({e}); delete the cache directory "
                         f"{os.path.dirname(prefix)} and it is rebuilt") from None
    arrays = {}
    for name in ("tokens", "sentence_ends", "doc_sentences"):
        dtype, count = np.dtype(header[name]["dtype"]), header[name]["count"]
        path = f"{prefix}.{name}"
        if count and os.path.getsize(path) != count * dtype.itemsize:
            raise ValueError(f"pipeline cache file {path} has {os.path.getsize(path)} bytes, its header says "
                             f"{count * dtype.itemsize}; delete {os.path.dirname(prefix)} and it is rebuilt")
        # np.memmap refuses empty files; an empty split is reported by load().
        arrays[name] = np.memmap(path, dtype=dtype, mode="r", shape=(count,)) if count else np.zeros((0,), dtype)
    return FlatSplit(prefix=prefix, tokenizer_info=tokenizer_info, **arrays)


def _check_ids(tokens: np.ndarray, vocab_size: int, path: str) -> None:
    """Every id below ``vocab_size`` (one pass over the memory-mapped file, in chunks)."""
    step = 1 << 24
    for lo in range(0, len(tokens), step):
        top = int(tokens[lo:lo + step].max())
        if top >= vocab_size:
            raise ValueError(f"{path} holds token id {top}, outside the vocabulary of {vocab_size} ids; the file "
                             f"is damaged or stale: delete the cache directory {os.path.dirname(path)} and it is "
                             "rebuilt from the store")


def _build(store: token_store.TokenStore, split: str, prefix: str) -> None:
    # Unique temporary names: several processes may build the same cache at once; the last rename wins
    # and all of them write identical bytes. On any failure they are removed, and the error names the file.
    tmp = f".{uuid.uuid4().hex}.tmp"
    names = ("tokens", "sentence_ends", "doc_sentences")
    files = {}
    try:
        for n in names:
            files[n] = open(f"{prefix}.{n}{tmp}", "wb")
        counts = _fill(store, split, files)
        for f in files.values():
            f.close()
        for n in names:
            os.replace(f"{prefix}.{n}{tmp}", f"{prefix}.{n}")
    except OSError as e:
        raise OSError(f"cannot write the pipeline cache {prefix}.* in {os.path.dirname(prefix)} ({e}); free "
                      "space there or pass cache_dir= another directory") from e
    finally:
        for n, f in files.items():
            f.close()
            if os.path.exists(f"{prefix}.{n}{tmp}"):
                os.remove(f"{prefix}.{n}{tmp}")
    header = {"tokens": {"dtype": store.dtype.str, "count": counts["tokens"]},
              "sentence_ends": {"dtype": "<i8", "count": counts["sentence_ends"]},
              "doc_sentences": {"dtype": "<i8", "count": counts["doc_sentences"]}}
    atomic_files.write_json(prefix + ".json", header)


def _fill(store: token_store.TokenStore, split: str, files: dict) -> dict:
    """Writes the split's flat arrays shard by shard; a shard that cannot be read is named."""
    import grain

    total_tokens, total_sentences, num_docs = 0, 0, 0
    files["doc_sentences"].write(np.zeros(1, "<i8").tobytes())
    counts = {"doc_sentences": 1}
    for path in store.shard_paths(split):
        try:
            src = grain.sources.ArrayRecordDataSource([path])
            num_docs += len(src)
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
        except (RuntimeError, ValueError, IndexError) as e:
            raise ValueError(f"token store shard {path} cannot be read ({type(e).__name__}: {str(e)[:300]}); the "
                             "file is damaged: re-create the store with python -m "
                             "bertgpt_jax.create_pretraining_data") from None
    documents = int(store.manifest["splits"][split]["documents"])
    if num_docs != documents:
        raise ValueError(f"split {split!r} of token store {store.dir}: the manifest counts {documents} documents, "
                         f"its shards hold {num_docs}; the manifest and the shards do not belong together")
    counts["tokens"], counts["sentence_ends"] = total_tokens, total_sentences
    return counts
