"""Throughput of the tokenization stage beside the bare native tokenizers and the pure-Python reference.

    python bench/bench_tokenization.py [--mb 16] [--reference_mb 2]

Everything runs in one process on the same text (the embedded corpus, repeated to ``--mb`` MB), so the
ratios hold even when absolute speeds drift on a shared machine. MB = 10**6 bytes of raw UTF-8 text.
Stage = create_pretraining_data end to end: reading the file, tokenizing in worker processes, writing
ArrayRecord shards and the manifest (pool start-up included).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")  # the bare batched baseline may use every core
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def _timed(fn, repeat: int = 1) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _write_corpus(path: str, target_mb: float) -> list[list[str]]:
    from bertgpt_jax.tokenization import corpus

    base = list(corpus.read_documents("default"))
    docs, size, k = [], 0, 0
    while size < target_mb * 1e6:
        doc = base[k % len(base)]
        docs.append(doc)
        size += sum(len(s.encode()) + 1 for s in doc) + 1
        k += 1
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join("\n".join(d) for d in docs) + "\n")
    return docs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=32.0, help="corpus size for the native paths")
    parser.add_argument("--reference_mb", type=float, default=2.0, help="slice for the pure-Python reference")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; each figure is its best round")
    args = parser.parse_args()

    import tiktoken
    from tokenizers import Tokenizer as HFTokenizer
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    from bertgpt_jax import create_pretraining_data, tokenization
    from bertgpt_jax.tokenization.bpe import GPT2_PATTERN
    from tests import artifacts

    load_before = os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="bench_tok_")
    path = os.path.join(work, "corpus.txt")
    docs = _write_corpus(path, args.mb)
    mb = os.path.getsize(path) / 1e6
    sentences = [s for d in docs for s in d]
    doc_texts = ["\n".join(d) for d in docs]
    vocab_dir = artifacts.minilm_dir()
    gpt2 = artifacts.gpt2_tiktoken()
    rows = []

    def stage(vocab_file: str):
        def run():
            out = os.path.join(work, "store")
            shutil.rmtree(out, ignore_errors=True)
            create_pretraining_data.create_token_store(path, out, vocab_file=vocab_file, progress=False)
        return run

    def interleaved(named: dict, rounds: int) -> dict:
        """Best rate of each measurement over ``rounds`` rounds that alternate between them, so a burst of
        load from other work on the machine hurts all of them alike."""
        best = dict.fromkeys(named, 0.0)
        for _ in range(rounds):
            for name, (fn, size_mb) in named.items():
                best[name] = max(best[name], size_mb / _timed(fn))
        return best

    # WordPiece ---------------------------------------------------------------------------------------
    ref = BertTokenizerLegacy(os.path.join(vocab_dir, "vocab.txt"), do_lower_case=True)
    ref_sents, ref_bytes = [], 0
    for s in sentences:
        if ref_bytes >= args.reference_mb * 1e6:
            break
        ref_sents.append(s)
        ref_bytes += len(s.encode()) + 1
    ours = tokenization.from_file(os.path.join(vocab_dir, "vocab.txt"))
    stock = HFTokenizer.from_file(os.path.join(vocab_dir, "tokenizer.json"))  # BertNormalizer etc., as shipped
    stock.no_truncation()
    stock.no_padding()
    chunks = [sentences[i:i + 20000] for i in range(0, len(sentences), 20000)]
    wp = interleaved({
        "python": (lambda: [ref.convert_tokens_to_ids(ref.tokenize(s)) for s in ref_sents], ref_bytes / 1e6),
        "stock_1": (lambda: [stock.encode(s, add_special_tokens=False) for s in sentences[:len(ref_sents)]],
                    ref_bytes / 1e6),
        "stock": (lambda: [stock.encode_batch_fast(c, add_special_tokens=False) for c in chunks], mb),
        "ours": (lambda: [ours.hf.encode_batch_fast(c, add_special_tokens=False) for c in chunks], mb),
        "stage": (stage(os.path.join(vocab_dir, "vocab.txt")), mb)}, args.repeat)
    rows += [("wordpiece", "pure Python BertTokenizerLegacy (1 core)", wp["python"]),
             ("wordpiece", "HF tokenizers encode, stock tokenizer.json (1 core)", wp["stock_1"]),
             ("wordpiece", "HF tokenizers encode_batch, stock tokenizer.json", wp["stock"]),
             ("wordpiece", "HF tokenizers encode_batch, exact BERT normaliser", wp["ours"]),
             ("wordpiece", "stage: create_pretraining_data", wp["stage"])]

    # Byte-level BPE (GPT-2) --------------------------------------------------------------------------
    import base64

    with open(gpt2, "rb") as f:
        ranks = {base64.b64decode(a): int(b) for a, b in (line.split() for line in f if line.strip())}
    enc = tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": 50256})
    line_mb = sum(len(s.encode()) + 1 for s in sentences[:len(ref_sents)]) / 1e6
    bp = interleaved({
        "lines": (lambda: [enc.encode_ordinary(s) for s in sentences[:len(ref_sents)]], line_mb),
        "doc_1": (lambda: [enc.encode_ordinary(t) for t in doc_texts], mb),
        "batch": (lambda: enc.encode_ordinary_batch(doc_texts, num_threads=os.cpu_count() or 1), mb),
        "stage": (stage(gpt2), mb)}, 2 * args.repeat)  # seconds each: more rounds against noise
    rows += [("bpe", "tiktoken encode_ordinary per line (1 core)", bp["lines"]),
             ("bpe", "tiktoken encode_ordinary per document (1 core)", bp["doc_1"]),
             ("bpe", "tiktoken encode_ordinary_batch per document (all cores)", bp["batch"]),
             ("bpe", "stage: create_pretraining_data", bp["stage"])]
    stage_wp, bare_ours, bare_stock, python_rate = wp["stage"], wp["ours"], wp["stock"], wp["python"]
    stage_bpe, tik_1, tik_batch = bp["stage"], bp["doc_1"], bp["batch"]

    print(f"\ncorpus: {mb:.1f} MB ({len(docs)} documents, {len(sentences)} sentences); "
          f"{os.cpu_count()} cores; pure-Python reference on {ref_bytes / 1e6:.1f} MB; load average "
          f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after (above 0 = other work shared the cores)")
    print(f"{'kind':<10} {'what':<58} {'MB/s':>7}")
    for kind, what, rate in rows:
        print(f"{kind:<10} {what:<58} {rate:7.2f}")
    print(f"\nwordpiece stage / bare HF batched: {stage_wp / bare_stock:.2f} (stock normaliser), "
          f"{stage_wp / bare_ours:.2f} (same exact normaliser) (target >= 0.90); "
          f"stage / pure Python = {stage_wp / python_rate:.1f}x (target >= 4x)")
    print(f"bpe stage / best bare tiktoken = {stage_bpe / max(tik_1, tik_batch):.2f} (target >= 0.90)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
