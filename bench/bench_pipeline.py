"""Input-pipeline throughput from a token store: BERT examples/s (T=128, P=20) and GPT windows/s (T=1024).

    python bench/bench_pipeline.py                       # synthetic stores in a temporary directory
    python bench/bench_pipeline.py --bert_store DIR --gpt_store DIR --seconds 5

Targets on a 2-core machine: BERT >= 20,000 examples/s, GPT >= 50,000 windows/s. Each figure is taken
through ``make_iterator`` (the trainer's path: shuffle, per-process share, prefetch thread). Beside it,
in the same run, the per-example Python way (the original ``create_masked_lm_predictions`` on lists;
a per-window slice-and-stack loader as nanoGPT's ``get_batch``) so the ratio holds on a busy machine.
Synthetic stores use the real BERT vocabulary (for whole-word masking) and GPT-2's vocabulary size.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bertgpt_jax import data  # noqa: E402
from bertgpt_jax.data import token_store  # noqa: E402


def synthetic_bert_store(path: str, num_tokens: int, seed: int = 0) -> str:
    """Documents of ~30 sentences of ~25 tokens, ids drawn from MiniLM's vocabulary (non-special part)."""
    from bertgpt_jax import tokenization
    from tests import artifacts

    tok = tokenization.from_file(os.path.join(artifacts.minilm_dir(), "vocab.txt"))
    tok_dir = os.path.join(path, token_store.TOKENIZER_DIR)
    tok.save(tok_dir)
    rng = np.random.default_rng(seed)
    records, total = [], 0
    while total < num_tokens:
        sent_len = np.clip(rng.geometric(1 / 25, int(rng.integers(5, 60))), 3, 120)
        tokens = rng.integers(1000, tok.vocab_size, int(sent_len.sum()))
        dtype = token_store.token_dtype(tok.vocab_size)
        records.append(token_store.encode_document(tokens, np.cumsum(sent_len), dtype))
        total += len(tokens)
    _finish(path, records, tok.info())
    return path


def synthetic_gpt_store(path: str, num_tokens: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    records, total = [], 0
    while total < num_tokens:
        tokens = rng.integers(0, 50256, int(rng.integers(50, 3000)))
        records.append(token_store.encode_document(tokens, [len(tokens)], np.dtype("<u2")))
        total += len(tokens)
    info = {"kind": "bpe", "vocab_size": 50257, "fingerprint": "synthetic", "eos_token_id": 50256,
            **{f"{n}_token_id": None for n in ("cls", "sep", "mask", "pad", "unk")}}
    _finish(path, records, info)
    return path


def _finish(path: str, records: list[bytes], tokenizer_info: dict) -> None:
    os.makedirs(path, exist_ok=True)
    name = token_store.shard_name("train", 0, 1)
    token_store.write_shard(os.path.join(path, name), records)
    dtype = token_store.token_dtype(tokenizer_info["vocab_size"])
    token_store.write_manifest(path, {"dtype": dtype.str, "tokenizer": tokenizer_info,
                                      "splits": {"train": {"shards": [name], "documents": len(records)}}})


def rate(it, seconds: float) -> float:
    """Examples per second drawn from iterator ``it`` for about ``seconds``."""
    next(it)  # warm-up: first batch, thread start
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += len(next(it)["input_ids"])
    return n / (time.perf_counter() - t0)


def original_masking(tokens: list, vocab_size: int, rng: random.Random, max_pred=20, prob=0.15) -> tuple:
    """create_masked_lm_predictions (original, per example, on lists) plus padding to fixed features."""
    cand = [i for i, t in enumerate(tokens) if t not in (101, 102)]
    rng.shuffle(cand)
    output = list(tokens)
    k = min(max_pred, max(1, int(round(len(tokens) * prob))))
    masked = []
    for index in cand[:k]:
        if rng.random() < 0.8:
            new = 103
        elif rng.random() < 0.5:
            new = tokens[index]
        else:
            new = rng.randint(0, vocab_size - 1)
        output[index] = new
        masked.append((index, tokens[index]))
    masked.sort()
    pad = 128 - len(output)
    return (np.array(output + [0] * pad, np.int32), np.array([1] * len(output) + [0] * pad, np.int32),
            np.array([p for p, _ in masked] + [0] * (max_pred - len(masked)), np.int32),
            np.array([t for _, t in masked] + [0] * (max_pred - len(masked)), np.int32))


def bench_original_bert(ds, seconds: float) -> float:
    """The per-example Python way over the same instances (unmasked tokens taken from our cut)."""
    raw = ds.examples(np.arange(min(len(ds), 4096)))
    rows = [r[m.astype(bool)].tolist() for r, m in zip(raw["input_ids"], raw["input_mask"])]
    rng = random.Random(0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        original_masking(rows[n % len(rows)], ds.vocab_size, rng)
        n += 1
    return n / (time.perf_counter() - t0)


def bench_slice_and_stack_gpt(ds, seconds: float, batch: int) -> float:
    """nanoGPT-style get_batch: one memmap slice per window, then np.stack."""
    T, stream = ds.seq_len, ds.stream
    rng = np.random.default_rng(0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        starts = rng.integers(0, len(ds), batch) * T
        x = np.stack([stream[i:i + T].astype(np.int32) for i in starts])
        y = np.stack([stream[i + 1:i + 1 + T].astype(np.int32) for i in starts])
        n += len(x) + 0 * len(y)
    return n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bert_store", help="token store with a WordPiece tokenizer (default: synthetic)")
    parser.add_argument("--gpt_store", help="token store with an EOS token (default: synthetic)")
    parser.add_argument("--tokens", type=int, default=20_000_000, help="size of each synthetic store")
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per figure")
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        bert_store = args.bert_store or synthetic_bert_store(os.path.join(tmp, "bert"), args.tokens)
        gpt_store = args.gpt_store or synthetic_gpt_store(os.path.join(tmp, "gpt"), args.tokens)
        results["synthetic_stores_s"] = round(time.perf_counter() - t0, 1)
        num_tokens = None

        t0 = time.perf_counter()
        ds = data.bert_dataset(bert_store, "train", max_seq_length=128, max_predictions_per_seq=20, seed=1,
                               cache_dir=os.path.join(tmp, "cache"))
        results["bert_first_open_s"] = round(time.perf_counter() - t0, 2)  # flatten the store + cut instances
        num_tokens = len(ds.flat.tokens)
        results["bert_store_tokens"] = num_tokens
        results["bert_instances"] = len(ds)
        for wwm in (False, True):
            ds = data.bert_dataset(bert_store, "train", max_seq_length=128, max_predictions_per_seq=20, seed=1,
                                   whole_word_mask=wwm, cache_dir=os.path.join(tmp, "cache"))
            it = data.make_iterator(ds, global_batch_size=256, seed=0, process_count=1, process_index=0)
            results[f"bert_T128_P20{'_wwm' if wwm else ''}_examples_per_s"] = round(rate(it, args.seconds))
        results["bert_original_per_example_python_examples_per_s"] = round(bench_original_bert(ds, args.seconds))

        t0 = time.perf_counter()
        ds = data.gpt_dataset(gpt_store, "train", seq_len=1024, cache_dir=os.path.join(tmp, "cache"))
        results["gpt_first_open_s"] = round(time.perf_counter() - t0, 2)
        results["gpt_windows"] = len(ds)
        for bounds in (False, True):
            ds = data.gpt_dataset(gpt_store, "train", seq_len=1024, document_boundaries=bounds,
                                  cache_dir=os.path.join(tmp, "cache"))
            it = data.make_iterator(ds, global_batch_size=64, seed=0, process_count=1, process_index=0)
            results[f"gpt_T1024{'_doc_boundaries' if bounds else ''}_windows_per_s"] = round(rate(it, args.seconds))
        results["gpt_slice_and_stack_windows_per_s"] = round(bench_slice_and_stack_gpt(ds, args.seconds, 64))

    results["bert_speedup_vs_per_example_python"] = round(
        results["bert_T128_P20_examples_per_s"] / results["bert_original_per_example_python_examples_per_s"], 1)
    results["gpt_speedup_vs_slice_and_stack"] = round(
        results["gpt_T1024_windows_per_s"] / results["gpt_slice_and_stack_windows_per_s"], 1)
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value:,}" if isinstance(value, int) else f"{key:<{width}}  {value}")
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
