"""The tokenization stage: a raw corpus -> a token store (sharded ArrayRecord + manifest.json).

    python -m bertgpt_jax.create_pretraining_data --input_file=default --output_dir=/tmp/store \\
        [--vocab_file=vocab.txt | --train_tokenizer=wordpiece --vocab_size=8192] [--do_lower_case]

Streams the corpus with bounded memory: the main process reads blocks of whole documents and writes shards;
a pool of worker processes, one per core, parses, splits and tokenizes the blocks, in order. It writes
each split as a run of shards of about ``max_shard_tokens`` tokens. A shard is finished atomically (temporary
name, then its stats file, then the rename), so a re-run resumes after the last finished shard of each split
instead of tokenizing everything again; ``manifest.json`` is written last. Documents go to train or
validation by a keyed hash of their text, so the split does not depend on order or on the worker count.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import sys
import time
from typing import Sequence

import numpy as np

from bertgpt_jax import atomic_files
from bertgpt_jax.data import token_store
from bertgpt_jax.tokenization import corpus
from bertgpt_jax.tokenization.base import Tokenizer

SPLITS = ("train", "validation")
RUN_FILE = "run.json"
SMALL_INPUT_BYTES = 4 << 20
HASH_INPUT_BYTES = 64 << 20  # inputs up to this size are also keyed by a hash of their content
_HASH_RANGE = 1 << 32


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """The settings that decide the store's contents (a re-run must match them to resume)."""

    input_file: str
    validation_fraction: float
    split_seed: int
    max_shard_tokens: int
    text_field: str
    unit_bytes: int  # positions (unit, document) that resuming relies on depend on it
    fingerprint: str


def shard_file(split: str, index: int) -> str:
    # The count is unknown while streaming, so names carry only the index; the manifest lists them.
    return f"{split}-{index:05d}.array_record"


def split_of(doc: Sequence[str], validation_fraction: float, seed: int) -> str:
    """``train`` or ``validation`` by a keyed hash of the document's text: stable across runs and orders."""
    h = hashlib.blake2b("\n".join(doc).encode("utf-8", "surrogatepass"), digest_size=4,
                        key=seed.to_bytes(8, "little"))
    return "validation" if int.from_bytes(h.digest(), "little") < validation_fraction * _HASH_RANGE else "train"


# -- tokenizing, in worker processes ----------------------------------------------------------------

_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(tokenizer_dir: str) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one worker per core already
    if _WORKER_TOKENIZER is None:  # spawned; a forked worker has the parent's tokenizer already
        from bertgpt_jax import tokenization

        _WORKER_TOKENIZER = tokenization.from_file(tokenizer_dir)


def encode_documents(tokenizer: Tokenizer, docs: Sequence[Sequence[str]], dtype: np.dtype) -> list[tuple]:
    """Tokenizes documents into store records: ``(record | None, sentences, tokens, empty_sentences)`` each.

    Sentences that produce no token are dropped (counted); a document left without tokens gives None.
    """
    out = []
    if hasattr(tokenizer, "encode_documents"):  # whole-document encoding (byte-level BPE), as arrays
        for doc, (tokens, ends) in zip(docs, tokenizer.encode_documents(docs)):
            ends = np.asarray(ends, np.int64)
            empty = 0
            if ends[0] == 0 or (len(ends) > 1 and not np.all(ends[1:] != ends[:-1])):  # rare: empty sentences
                kept = np.unique(ends[ends > 0])
                empty, ends = len(ends) - len(kept), kept
            out.append((token_store.encode_document(tokens, ends, dtype), len(ends), len(tokens), empty)
                       if len(tokens) else (None, 0, 0, len(doc)))
        return out
    flat = tokenizer.encode_batch([s for doc in docs for s in doc])
    k = 0
    for doc in docs:
        sentences = flat[k:k + len(doc)]
        k += len(doc)
        kept = [s for s in sentences if s]
        if not kept:
            out.append((None, 0, 0, len(sentences)))
            continue
        ends = np.cumsum([len(s) for s in kept])
        tokens = np.fromiter(itertools.chain.from_iterable(kept), dtype=np.int64, count=int(ends[-1]))
        out.append((token_store.encode_document(tokens, ends, dtype), len(kept), int(ends[-1]),
                    len(sentences) - len(kept)))
    return out


def process_unit(tokenizer: Tokenizer, task: tuple) -> tuple[list[tuple], corpus.CorpusStats]:
    """Parses, splits and tokenizes one work unit: ``[(index, split, record, sentences, tokens, empty)]``
    for the documents not in finished shards, and the unit's reading counts."""
    unit_no, kind, payload, dtype, fraction, seed, resume, text_field = task
    stats = corpus.CorpusStats()
    docs = corpus.parse_unit(kind, payload, stats, text_field)
    todo = []
    for i, doc in enumerate(docs):
        split = split_of(doc, fraction, seed)
        if (unit_no, i) >= tuple(resume[split]):  # documents in finished shards are not tokenized again
            todo.append((i, split, doc))
    encoded = encode_documents(tokenizer, [doc for _, _, doc in todo], np.dtype(dtype))
    return [(i, split, *rec) for (i, split, _), rec in zip(todo, encoded)], stats


def _process_in_worker(task: tuple):
    return process_unit(_WORKER_TOKENIZER, task)


# -- writing shards -----------------------------------------------------------------------------------

class _SplitWriter:
    """Writes one split as consecutive shards; a shard is finished once it holds ``max_tokens`` tokens."""

    def __init__(self, store_dir: str, split: str, max_tokens: int, first_index: int, config_key: str,
                 dtype: np.dtype):
        self.store_dir, self.split, self.max_tokens, self.config_key = store_dir, split, max_tokens, config_key
        self.dtype = np.dtype(dtype)
        self.index = first_index
        self.writer = None
        self._reset()

    def _reset(self):
        self.stats = {"documents": 0, "sentences": 0, "tokens": 0, "empty_sentences": 0,
                      "empty_token_documents": 0, "max_token_id": -1}

    def write(self, record: bytes | None, sentences: int, tokens: int, empty_sentences: int,
              position: tuple[int, int]):
        self.stats["empty_sentences"] += empty_sentences
        if record is None:
            self.stats["empty_token_documents"] += 1
        else:
            if self.writer is None:
                from array_record.python.array_record_module import ArrayRecordWriter

                self.path = os.path.join(self.store_dir, shard_file(self.split, self.index))
                self.writer = ArrayRecordWriter(self.path + ".tmp", token_store.WRITER_OPTIONS)
            self.writer.write(record)
            ids, _ = token_store.decode_document(record, self.dtype)
            self.stats["max_token_id"] = max(self.stats["max_token_id"], int(ids.max()))
            self.stats["documents"] += 1
            self.stats["sentences"] += sentences
            self.stats["tokens"] += tokens
        self.last = position
        if self.stats["tokens"] >= self.max_tokens:
            self.finish()

    def finish(self) -> None:
        """Closes the open shard: stats file first, then the rename that makes the shard count as done."""
        if self.writer is None:
            return
        self.writer.close()
        self.writer = None
        # Resuming skips every document at or before this (unit, document-in-unit) position.
        meta = {**self.stats, "split": self.split, "index": self.index, "end": [self.last[0], self.last[1] + 1],
                "config": self.config_key}
        atomic_files.write_json(self.path + ".json", meta, indent=2, sort_keys=True)
        os.replace(self.path + ".tmp", self.path)
        self.index += 1
        self._reset()

    def carry_counts(self) -> dict:
        # Skips seen after the last shard closed (documents that gave no token) still count.
        return {k: self.stats[k] for k in ("empty_sentences", "empty_token_documents")}


def _finished_shards(store_dir: str, split: str, config_key: str) -> list[dict]:
    """The consecutive finished shards of a split from an earlier run with the same settings."""
    done = []
    while True:
        path = os.path.join(store_dir, shard_file(split, len(done)))
        if not (os.path.exists(path) and os.path.exists(path + ".json")):
            return done
        with open(path + ".json", encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("config") != config_key:
            return done
        done.append(meta)


# -- the stage ----------------------------------------------------------------------------------------

def _resolve_tokenizer(output_dir: str, input_file: str, tokenizer, vocab_file, train_tokenizer: str,
                       vocab_size: int, do_lower_case: bool, text_field: str, train_max_sentences) -> Tokenizer:
    from bertgpt_jax import tokenization

    tok_dir = os.path.join(output_dir, token_store.TOKENIZER_DIR)
    if tokenizer is None and vocab_file:
        tokenizer = tokenization.from_file(vocab_file, do_lower_case=do_lower_case)
    if tokenizer is None and os.path.isdir(tok_dir):
        return tokenization.from_file(tok_dir)  # a re-run keeps the vocabulary it trained before
    if tokenizer is None:
        print(f"[create_pretraining_data] training a {train_tokenizer} vocabulary of {vocab_size} on "
              f"{input_file}", file=sys.stderr, flush=True)
        sentences = corpus.iter_sentences(input_file, text_field=text_field)
        if train_max_sentences:
            sentences = itertools.islice(sentences, train_max_sentences)
        tokenizer = tokenization.train_tokenizer(sentences, kind=train_tokenizer, vocab_size=vocab_size,
                                                 do_lower_case=True if do_lower_case is None else do_lower_case)
    if os.path.isdir(tok_dir):
        if tokenization.from_file(tok_dir).fingerprint != tokenizer.fingerprint:
            raise ValueError(f"{output_dir} holds a store made with another tokenizer ({tok_dir}); "
                             "write to a new output_dir or delete this one")
    else:
        tmp = tok_dir + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tokenizer.save(tmp)
        os.replace(tmp, tok_dir)
    return tokenizer


def input_identity(input_file: str) -> list:
    """What a resume must find unchanged: each input file's path, size and modification time, and for
    inputs up to ``HASH_INPUT_BYTES`` in all a SHA-256 of the content (a same-second, same-size edit)."""
    if input_file.startswith("tfds:"):
        return [input_file]
    paths = corpus.expand_paths(corpus.DEFAULT_CORPUS if input_file == corpus.DEFAULT else input_file)
    if any("://" in p for p in paths):
        return sorted(paths)
    stats = [(p, os.stat(p)) for p in paths]
    hashed = sum(st.st_size for _, st in stats) <= HASH_INPUT_BYTES
    out = []
    for p, st in stats:
        entry = [os.path.abspath(p), st.st_size, st.st_mtime_ns]
        if hashed:
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
            entry.append(h.hexdigest())
        out.append(entry)
    return out


def _changed_inputs(before: list, now: list) -> str:
    old = {e[0]: e for e in before if isinstance(e, list)}
    names = [e[0] for e in now if isinstance(e, list) and old.get(e[0]) != e]
    names += [p for p in old if p not in {e[0] for e in now if isinstance(e, list)}]
    return ", ".join(names) or "the list of input files"


def _remove_stale_shards(output_dir: str, config_key: str) -> int:
    """Deletes finished shards (and their records) of an earlier run whose settings or input differ."""
    removed = 0
    for name in os.listdir(output_dir):
        if not name.endswith(".array_record.json"):
            continue
        try:
            with open(os.path.join(output_dir, name), encoding="utf-8") as f:
                stale = json.load(f).get("config") != config_key
        except ValueError:
            stale = True
        if stale:
            for path in (os.path.join(output_dir, name[: -len(".json")]), os.path.join(output_dir, name)):
                if os.path.exists(path):
                    os.remove(path)
            removed += 1
    return removed


def _total_bytes(input_file: str) -> int | None:
    """Sum of the input files' sizes, for the progress bar's ETA (None when unknown: gzip, gs://, tfds)."""
    if input_file.startswith("tfds:"):
        return None
    paths = corpus.expand_paths(corpus.DEFAULT_CORPUS if input_file == corpus.DEFAULT else input_file)
    if any(p.endswith(".gz") or "://" in p for p in paths):
        return None
    return sum(os.path.getsize(p) for p in paths)


def create_token_store(input_file: str = corpus.DEFAULT, output_dir: str = "", *, vocab_file: str | None = None,
                       tokenizer: Tokenizer | None = None, train_tokenizer: str = "wordpiece",
                       vocab_size: int = 8192, do_lower_case: bool | None = None, validation_fraction: float = 0.02,
                       split_seed: int = 0, max_shard_tokens: int = 1 << 26, num_workers: int | None = None,
                       text_field: str = "text", unit_bytes: int = 1 << 18, train_max_sentences: int | None = None,
                       progress: bool = True) -> str:
    """Tokenizes ``input_file`` into a token store in ``output_dir`` and returns ``output_dir``.

    The tokenizer is ``tokenizer``, else loaded from ``vocab_file``, else (when neither is given) trained on
    the corpus: ``train_tokenizer`` (wordpiece | bpe | sentencepiece) with ``vocab_size`` and ``do_lower_case``
    (None: as the vocabulary's files say, True when they cannot say or for training).
    ``num_workers`` tokenizing processes (default: every core, or this process alone for inputs under 4 MiB;
    0 tokenizes in this process).
    """
    global _WORKER_TOKENIZER  # handed to forked workers without a reload
    if not output_dir:
        raise ValueError("output_dir is required: the directory the token store is written to")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction {validation_fraction} must be in [0, 1)")
    if max_shard_tokens < 1:
        raise ValueError(f"max_shard_tokens {max_shard_tokens} must be positive")
    if not input_file.startswith("tfds:") and input_file != corpus.DEFAULT:
        paths = corpus.expand_paths(input_file)  # a missing input fails now, before any vocabulary training
        if all("://" not in p and os.path.getsize(p) == 0 for p in paths):
            raise ValueError(f"input_file {input_file} is empty ({len(paths)} file(s) of 0 bytes): there is "
                             "nothing to tokenize")
    identity = input_identity(input_file)
    os.makedirs(output_dir, exist_ok=True)
    args = {"input_file": input_file, "vocab_file": vocab_file, "train_tokenizer": train_tokenizer,
            "vocab_size": vocab_size, "do_lower_case": do_lower_case, "validation_fraction": validation_fraction,
            "split_seed": split_seed, "max_shard_tokens": max_shard_tokens, "text_field": text_field}
    manifest_path = os.path.join(output_dir, token_store.MANIFEST)
    tok = _resolve_tokenizer(output_dir, input_file, tokenizer, vocab_file, train_tokenizer, vocab_size,
                             do_lower_case, text_field, train_max_sentences)
    config = StageConfig(input_file, float(validation_fraction), int(split_seed), int(max_shard_tokens),
                         text_field, int(unit_bytes), tok.fingerprint)
    # The key of a store's contents: its settings and its input (a changed input is never resumed).
    config_key = hashlib.sha256(json.dumps({**dataclasses.asdict(config), "input": identity},
                                           sort_keys=True).encode()).hexdigest()[:16]
    run_path = os.path.join(output_dir, RUN_FILE)
    previous = None
    if os.path.exists(run_path):
        try:
            with open(run_path, encoding="utf-8") as f:
                previous = json.load(f)
        except ValueError:
            previous = None
    input_changed = (previous is not None and previous.get("config") == dataclasses.asdict(config)
                     and previous.get("input") != identity)
    if os.path.exists(manifest_path):
        with open(manifest_path, encoding="utf-8") as f:
            if json.load(f).get("config_key") == config_key:
                return output_dir  # complete already
        if input_changed:
            raise ValueError(f"{output_dir} holds a complete token store of an earlier version of the input "
                             f"({_changed_inputs(previous['input'], identity)} changed since); write to a new "
                             "output_dir or delete this one to tokenize the input as it is now")
        raise ValueError(f"{output_dir} holds a complete token store made with other settings; write to a "
                         "new output_dir or delete this one")
    if input_changed:
        print(f"[create_pretraining_data] the input changed since the interrupted run "
              f"({_changed_inputs(previous['input'], identity)}): its shards are discarded, starting over",
              file=sys.stderr, flush=True)
    _remove_stale_shards(output_dir, config_key)
    dtype = token_store.token_dtype(tok.vocab_size)
    done = {s: _finished_shards(output_dir, s, config_key) for s in SPLITS}
    resume = {s: (done[s][-1]["end"] if done[s] else [0, 0]) for s in SPLITS}
    writers = {s: _SplitWriter(output_dir, s, max_shard_tokens, len(done[s]), config_key, dtype) for s in SPLITS}
    stats = corpus.CorpusStats()
    atomic_files.write_json(run_path, {"args": args, "config": dataclasses.asdict(config), "input": identity,
                                       "config_key": config_key})
    units = corpus.iter_units(input_file, stats, text_field, unit_bytes)
    tasks = ((n, kind, payload, dtype.str, validation_fraction, split_seed, resume, text_field)
             for n, (kind, payload) in enumerate(units))
    total = _total_bytes(input_file)
    workers = num_workers
    if workers is None:  # a small known input is done sooner in this process than by starting a pool
        workers = 0 if total is not None and total < SMALL_INPUT_BYTES else (os.cpu_count() or 1)
    bar = _progress(progress, total)
    started = time.perf_counter()
    pool = None
    try:
        if workers > 0:
            # fork is cheap, but not under a live JAX runtime (the trainer's demo calls this): then spawn.
            method = "spawn" if "jax" in sys.modules else "fork"
            _WORKER_TOKENIZER = tok if method == "fork" else None
            pool = multiprocessing.get_context(method).Pool(
                workers, initializer=_init_worker, initargs=(os.path.join(output_dir, token_store.TOKENIZER_DIR),))
        inflight = collections.deque()

        def drain(block_until: int) -> None:
            while len(inflight) > block_until:
                unit_no, result = inflight.popleft()
                encoded, unit_stats = result.get() if pool is not None else result
                stats.add(unit_stats)
                for i, split, *rec in encoded:
                    writers[split].write(*rec, position=(unit_no, i))
                if bar is not None:
                    bar.update(stats.bytes - bar.n)

        for task in tasks:
            if pool is not None:
                inflight.append((task[0], pool.apply_async(_process_in_worker, (task,))))
                drain(2 * workers)  # bounded memory: only a few units in flight
            else:
                inflight.append((task[0], process_unit(tok, task)))
                drain(0)
        drain(0)
        for w in writers.values():
            w.finish()
    finally:
        _WORKER_TOKENIZER = None
        if pool is not None:
            pool.terminate()
        if bar is not None:
            bar.close()
    invalid = stats.skipped.get("invalid_utf8_bytes", 0)
    if invalid > stats.bytes / 2:
        print(f"[create_pretraining_data] WARNING: {invalid} of the {stats.bytes} bytes read from {input_file} "
              "are not valid UTF-8 text: is it a binary file?", file=sys.stderr, flush=True)
    if not any(w.index or w.stats["documents"] for w in writers.values()):
        raise ValueError(f"input_file {input_file} yielded no document with any token ({stats.bytes} bytes read, "
                         f"skipped: {dict(stats.skipped) or 'nothing'}); expected text, one sentence per line "
                         "and a blank line between documents, or JSONL with a text field")
    return _write_store_manifest(output_dir, tok, dtype, config_key, args, stats, writers,
                                 time.perf_counter() - started)


def _progress(enabled: bool, total: int | None):
    if not enabled:
        return None
    from bertgpt_jax import progress

    return progress.progress(total, unit="B", desc="tokenizing", scale_bytes=True, smoothing=0.1)


def _write_store_manifest(output_dir, tok, dtype, config_key, args, stats, writers, seconds) -> str:
    splits, skipped = {}, collections.Counter(stats.skipped)
    for split in SPLITS:
        shards = _finished_shards(output_dir, split, config_key)
        info = {"shards": [], "documents": 0, "sentences": 0, "tokens": 0, "max_token_id": -1}
        for meta in shards:
            info["shards"].append(shard_file(split, meta["index"]))
            for k in ("documents", "sentences", "tokens"):
                info[k] += meta[k]
            info["max_token_id"] = max(info["max_token_id"], int(meta.get("max_token_id", tok.vocab_size - 1)))
            skipped["sentences_without_tokens"] += meta["empty_sentences"]
            skipped["documents_without_tokens"] += meta["empty_token_documents"]
        carry = writers[split].carry_counts()
        skipped["sentences_without_tokens"] += carry["empty_sentences"]
        skipped["documents_without_tokens"] += carry["empty_token_documents"]
        splits[split] = info
    token_store.write_manifest(output_dir, {
        "dtype": dtype.str, "splits": splits, "tokenizer": tok.info(), "config_key": config_key,
        "input": {"files": stats.files, "bytes": stats.bytes, "documents": stats.documents,
                  "sentences": stats.sentences},
        "skipped": {k: v for k, v in sorted(skipped.items()) if v}, "args": args,
        "seconds": round(seconds, 3)})
    return output_dir


build_store = create_token_store  # the name the trainer's demo calls

INSTANCES_FILE = "bert_instances.json"
# The BERT instance recipe: the names, defaults and help of pretrain's flags (tasks.PretrainingData).
RECIPE_FIELDS = ("max_predictions_per_seq", "dupe_factor", "dynamic_masking", "do_whole_word_mask", "masked_lm_prob",
                 "short_seq_prob")


def cut_bert_instances(store_dir: str, *, max_seq_length: int, random_seed: int, **recipe) -> dict:
    """Cuts the BERT MLM+NSP instances of every split now, as the original ``create_pretraining_data.py`` does
    (cached beside the store, where ``pretrain`` with the same recipe finds them), and records the recipe and
    the instance counts in ``store_dir/bert_instances.json``."""
    from bertgpt_jax.data import bert_examples

    store = token_store.TokenStore(store_dir)
    counts = {}
    for split in store.splits:
        if not store.manifest["splits"][split].get("documents"):
            continue
        ds = bert_examples.bert_dataset(store_dir, split, max_seq_length=max_seq_length, seed=random_seed,
                                        whole_word_mask=recipe["do_whole_word_mask"],
                                        **{k: v for k, v in recipe.items() if k != "do_whole_word_mask"})
        counts[split] = len(ds)
    record = {"recipe": {"max_seq_length": max_seq_length, "random_seed": random_seed, **recipe},
              "instances": counts}
    atomic_files.write_json(os.path.join(store_dir, INSTANCES_FILE), record)
    return record


def main(argv) -> None:
    del argv
    from absl import flags

    F = flags.FLAGS
    out = create_token_store(
        F.input_file, F.output_dir, vocab_file=F.vocab_file, train_tokenizer=F.train_tokenizer,
        vocab_size=F.vocab_size, do_lower_case=F.do_lower_case, validation_fraction=F.validation_fraction,
        split_seed=F.random_seed, max_shard_tokens=F.max_shard_tokens, num_workers=F.num_workers,
        text_field=F.text_field, train_max_sentences=F.train_max_sentences)
    with open(os.path.join(out, token_store.MANIFEST), encoding="utf-8") as f:
        manifest = json.load(f)
    for split, info in manifest["splits"].items():
        print(f"{split}: {info['documents']} documents, {info['sentences']} sentences, {info['tokens']} tokens "
              f"in {len(info['shards'])} shards")
    print(f"skipped: {manifest['skipped'] or 'nothing'}; tokenizer {manifest['tokenizer']['kind']} "
          f"(vocab {manifest['tokenizer']['vocab_size']}) -> {out}")
    if F.max_seq_length:
        record = cut_bert_instances(out, max_seq_length=F.max_seq_length, random_seed=F.random_seed,
                                    **{name: F[name].value for name in RECIPE_FIELDS})
        print(f"BERT instances ({', '.join(f'{k}={v}' for k, v in record['recipe'].items())}): "
              + ", ".join(f"{split} {n}" for split, n in record["instances"].items()))


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("input_file", corpus.DEFAULT, "Input: text files (one sentence per line, blank line "
                        "between documents), JSONL, .gz, globs, comma lists, gs://, tfds:NAME[:SPLIT], or "
                        "'default' (the embedded Python documentation corpus).")
    flags.DEFINE_string("output_dir", None, "Directory of the token store to write.")
    flags.DEFINE_string("vocab_file", None, "Tokenizer to use (vocab.txt, tokenizer.json, *.tiktoken, *.model, "
                        "a saved directory); when absent one is trained on the corpus.")
    flags.DEFINE_bool("do_lower_case", None, "Lower-case the input. Default: as the vocab_file's directory says "
                      "(tokenizer_config.json), else True; for training, True.")
    flags.DEFINE_enum("train_tokenizer", "wordpiece", ["wordpiece", "bpe", "sentencepiece"],
                      "Kind of tokenizer to train when no vocab_file is given.")
    flags.DEFINE_integer("vocab_size", 8192, "Vocabulary size when training a tokenizer.")
    flags.DEFINE_integer("train_max_sentences", None, "Train the vocabulary on at most this many sentences.")
    flags.DEFINE_float("validation_fraction", 0.02, "Fraction of documents held out for validation.")
    flags.DEFINE_integer("random_seed", 12345, "Key of the hash that splits documents, and seed of the BERT "
                         "instances' cutting and masking (the original's 12345).")
    flags.DEFINE_integer("max_seq_length", None, "Also cut the BERT MLM+NSP instances now for this sequence length, "
                         "as the original script does (cached in the store for pretrain runs with the same recipe, "
                         "recorded in bert_instances.json). Default: pretrain cuts them when it first reads the store.")
    from bertgpt_jax.tasks.pretraining import PretrainingData

    fields = {f.name: f for f in dataclasses.fields(PretrainingData)}
    define = {int: flags.DEFINE_integer, float: flags.DEFINE_float, bool: flags.DEFINE_bool}
    for name in RECIPE_FIELDS:
        f = fields[name]
        define[type(f.default)](name, f.default, f.metadata["help"] + " With --max_seq_length.")
    flags.DEFINE_integer("max_shard_tokens", 1 << 26, "A shard is closed once it holds this many tokens.")
    flags.DEFINE_integer("num_workers", None, "Tokenizing processes (default: one per core).")
    flags.DEFINE_string("text_field", "text", "JSONL/TFDS field that holds the text.")
    flags.mark_flag_as_required("output_dir")


if __name__ == "__main__":
    from bertgpt_jax import cli

    _define_flags()
    cli.run(main, user_errors=(ValueError, FileNotFoundError, NotADirectoryError))
