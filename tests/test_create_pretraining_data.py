"""The tokenization stage: store contents equal the reference tokenizers, split, resume, bad input, CLI."""

import base64
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bertgpt_jax import create_pretraining_data as cpd
from bertgpt_jax import tokenization
from bertgpt_jax.data import token_store
from bertgpt_jax.tokenization import corpus


def _corpus_file(path, num_docs=120, seed=0):
    rng = np.random.default_rng(seed)
    words = ["the", "model", "learns", "Représentation", "北京", "naïve", "tokens", "über", "😀", "data"]
    docs = []
    for d in range(num_docs):
        docs.append([" ".join(rng.choice(words, int(rng.integers(3, 12)))) + f" doc{d}."
                     for _ in range(int(rng.integers(1, 6)))])
    path.write_text("\n\n".join("\n".join(doc) for doc in docs) + "\n", encoding="utf-8")
    return docs


def _store_docs(store_dir, split):
    store = token_store.TokenStore(store_dir)
    return [(t.tolist(), e.tolist()) for t, e in store.documents(split)]


def test_wordpiece_store_matches_reference_tokenizer(minilm_dir, tmp_path):
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    docs = _corpus_file(tmp_path / "c.txt")
    vocab = os.path.join(minilm_dir, "vocab.txt")
    out = cpd.create_token_store(str(tmp_path / "c.txt"), str(tmp_path / "store"), vocab_file=vocab,
                                 validation_fraction=0.2, max_shard_tokens=500, num_workers=2, progress=False)
    store = token_store.TokenStore(out)
    m = store.manifest
    assert m["dtype"] == "<u2" and m["tokenizer"]["vocab_size"] == 30522
    assert m["tokenizer"]["fingerprint"] == tokenization.from_file(vocab).fingerprint
    assert m["tokenizer"]["mask_token_id"] == 103 and m["tokenizer"]["eos_token_id"] is None
    assert store.tokenizer().fingerprint == m["tokenizer"]["fingerprint"]
    ref = BertTokenizerLegacy(vocab, do_lower_case=True)
    by_ids = {tuple(tuple(ref.encode(x, add_special_tokens=False)) for x in d): d for d in docs}
    assert len(by_ids) == len(docs)
    seen = 0
    for split in ("train", "validation"):
        info = m["splits"][split]
        assert len(info["shards"]) >= 2 and info["documents"] > 0
        got = _store_docs(out, split)
        assert len(got) == info["documents"]
        assert sum(len(t) for t, _ in got) == info["tokens"] and sum(len(e) for _, e in got) == info["sentences"]
        for tokens, ends in got:
            key = tuple(tuple(tokens[s:e]) for s, e in zip([0] + ends[:-1], ends))
            assert key in by_ids, "a stored document differs from the reference tokenization"
            assert cpd.split_of(by_ids[key], 0.2, 0) == split
            seen += 1
    assert seen == len(docs) == m["input"]["documents"]
    assert 0.05 < m["splits"]["validation"]["documents"] / len(docs) < 0.4


def test_bpe_store_equals_tiktoken_on_documents(gpt2_tiktoken, tmp_path):
    import tiktoken

    from bertgpt_jax.tokenization.bpe import GPT2_PATTERN

    docs = _corpus_file(tmp_path / "c.txt", num_docs=40)
    out = cpd.create_token_store(str(tmp_path / "c.txt"), str(tmp_path / "store"), vocab_file=gpt2_tiktoken,
                                 validation_fraction=0.0, num_workers=0, progress=False)
    with open(gpt2_tiktoken, "rb") as f:
        ranks = {base64.b64decode(a): int(b) for a, b in (line.split() for line in f if line.strip())}
    ref = tiktoken.Encoding("ref", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
    got = _store_docs(out, "train")
    assert [t for t, _ in got] == [ref.encode_ordinary("\n".join(d)) for d in docs]
    tok = token_store.TokenStore(out).tokenizer()
    for (tokens, ends), doc in zip(got, docs):
        pieces = [tok.decode(tokens[s:e]) for s, e in zip([0] + ends[:-1], ends)]
        assert pieces == [s + "\n" for s in doc[:-1]] + [doc[-1]]
    m = token_store.TokenStore(out).manifest
    assert m["tokenizer"]["kind"] == "bpe" and m["tokenizer"]["eos_token_id"] == 50256
    assert m["splits"]["validation"]["documents"] == 0


def test_identical_output_for_any_worker_count(minilm_dir, tmp_path):
    _corpus_file(tmp_path / "c.txt", num_docs=60)
    vocab = os.path.join(minilm_dir, "vocab.txt")
    a = cpd.create_token_store(str(tmp_path / "c.txt"), str(tmp_path / "a"), vocab_file=vocab,
                               num_workers=0, max_shard_tokens=300, progress=False, validation_fraction=0.3)
    b = cpd.create_token_store(str(tmp_path / "c.txt"), str(tmp_path / "b"), vocab_file=vocab, unit_bytes=300,
                               num_workers=2, max_shard_tokens=300, progress=False, validation_fraction=0.3)
    names = sorted(os.path.basename(p) for p in glob.glob(os.path.join(a, "*.array_record")))
    assert len(names) > 2 and names == sorted(os.path.basename(p) for p in glob.glob(os.path.join(b, "*.array_record")))
    for split in ("train", "validation"):
        assert _store_docs(a, split) == _store_docs(b, split)


def test_resume_after_crash_skips_finished_shards(minilm_dir, tmp_path, monkeypatch):
    _corpus_file(tmp_path / "c.txt", num_docs=80)
    kw = dict(vocab_file=os.path.join(minilm_dir, "vocab.txt"), num_workers=0, max_shard_tokens=200,
              progress=False, validation_fraction=0.1, unit_bytes=700)
    reference = cpd.create_token_store(str(tmp_path / "c.txt"), str(tmp_path / "ref"), **kw)

    crashed = str(tmp_path / "crash")
    real_finish, finished = cpd._SplitWriter.finish, []

    def finish_then_crash(self):
        real_finish(self)
        finished.append(self.index)
        if len(finished) == 4:
            raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(cpd._SplitWriter, "finish", finish_then_crash)
    with pytest.raises(KeyboardInterrupt):
        cpd.create_token_store(str(tmp_path / "c.txt"), crashed, **kw)
    monkeypatch.setattr(cpd._SplitWriter, "finish", real_finish)
    assert not os.path.exists(os.path.join(crashed, "manifest.json"))
    with pytest.raises(ValueError, match="incomplete"):
        token_store.TokenStore(crashed)

    real_encode, encoded = cpd.encode_documents, []

    def counting(tokenizer, docs, dtype):
        encoded.extend(docs)
        return real_encode(tokenizer, docs, dtype)

    monkeypatch.setattr(cpd, "encode_documents", counting)
    cpd.create_token_store(str(tmp_path / "c.txt"), crashed, **kw)
    ref_store = token_store.TokenStore(reference)
    assert 0 < len(encoded) < ref_store.manifest["input"]["documents"]  # finished shards were skipped
    for split in ("train", "validation"):
        assert _store_docs(crashed, split) == _store_docs(reference, split)
    new = json.load(open(os.path.join(crashed, "manifest.json")))
    assert new["splits"] == ref_store.manifest["splits"]
    # A complete store is left alone; other settings into the same directory are refused.
    encoded.clear()
    cpd.create_token_store(str(tmp_path / "c.txt"), crashed, **kw)
    assert encoded == []
    with pytest.raises(ValueError, match="other settings"):
        cpd.create_token_store(str(tmp_path / "c.txt"), crashed, **{**kw, "validation_fraction": 0.5})


def test_trains_a_vocabulary_when_none_is_given_and_counts_bad_input(tmp_path):
    text = "\n\n".join(f"Sentence number {i} about tokenizers.\nAnother line {i % 7}." for i in range(200))
    raw = text.encode() + b"\n\nbad \xff utf8 here.\n\n\x00\x01\x02\n\n"
    (tmp_path / "c.txt").write_bytes(raw)
    for kind in ("wordpiece", "bpe", "sentencepiece"):
        out = cpd.create_token_store(str(tmp_path / "c.txt"), str(tmp_path / kind), train_tokenizer=kind,
                                     vocab_size=400, num_workers=0, progress=False)
        m = token_store.TokenStore(out).manifest
        assert m["tokenizer"]["kind"] == kind and m["tokenizer"]["vocab_size"] <= 400
        assert m["skipped"]["invalid_utf8_lines"] == 1
        assert m["input"]["documents"] == 202
        if kind == "wordpiece":  # control characters only: no token, counted
            assert m["skipped"]["documents_without_tokens"] == 1
        total = sum(m["splits"][s]["documents"] for s in ("train", "validation"))
        assert total == 202 - m["skipped"].get("documents_without_tokens", 0)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        cpd.create_token_store(str(tmp_path / "missing.txt"), str(tmp_path / "x"), progress=False)
    assert not os.path.exists(tmp_path / "x" / "tokenizer")  # failed before training anything


def test_cli_on_default_corpus_subset(tmp_path, minilm_dir):
    docs = list(corpus.read_documents("default"))[:30]
    (tmp_path / "c.txt").write_text("\n\n".join("\n".join(d) for d in docs), encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.run([sys.executable, "-m", "bertgpt_jax.create_pretraining_data",
                           f"--input_file={tmp_path / 'c.txt'}", f"--output_dir={tmp_path / 'store'}",
                           f"--vocab_file={minilm_dir}", "--do_lower_case", "--num_workers=2"],
                          capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train:" in proc.stdout and "tokenizing" in proc.stderr  # the tqdm progress bar
    m = token_store.TokenStore(str(tmp_path / "store")).manifest
    assert m["input"]["documents"] == 30 and m["args"]["vocab_file"] == minilm_dir
    assert m["splits"]["train"]["tokens"] + m["splits"]["validation"]["tokens"] > 10_000


def test_streams_with_bounded_memory(gpt2_tiktoken, tmp_path):
    """Peak Python memory does not grow with the corpus (2 MB vs 8 MB): nothing accumulates documents."""
    import tracemalloc

    line = "Streaming keeps only a few blocks of the corpus in memory at any time, never all of it.\n"
    doc = line * 20 + "\n"
    tok = tokenization.from_file(gpt2_tiktoken)
    peaks = {}
    for mb in (2, 8):
        path = tmp_path / f"{mb}.txt"
        with open(path, "w", encoding="utf-8") as f:
            for _ in range(mb * 1_000_000 // len(doc)):
                f.write(doc)
        tracemalloc.start()
        try:
            cpd.create_token_store(str(path), str(tmp_path / f"store{mb}"), tokenizer=tok, num_workers=0,
                                   unit_bytes=1 << 16, progress=False)
            peaks[mb] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        m = token_store.TokenStore(str(tmp_path / f"store{mb}")).manifest
        assert m["input"]["bytes"] == os.path.getsize(path)
        assert m["input"]["documents"] == mb * 1_000_000 // len(doc)
    assert peaks[8] - peaks[2] < 1_000_000, f"peak Python memory {peaks} grows with the corpus"


def test_sentences_without_tokens_are_dropped_and_counted():
    class WholeDocument:  # a document tokenizer whose first and last sentences give no token
        def encode_documents(self, docs):
            return [(np.array([5, 6], np.int64), [0, 2, 2]) for _ in docs]

    class PerSentence:
        def encode_batch(self, texts):
            return [[7] * len(t) for t in texts]

    dtype = np.dtype("<u2")
    (record, sentences, tokens, empty), = cpd.encode_documents(WholeDocument(), [["", "ab", ""]], dtype)
    assert (sentences, tokens, empty) == (1, 2, 2)
    ids, ends = token_store.decode_document(record, dtype)
    assert ids.tolist() == [5, 6] and ends.tolist() == [2]
    out = cpd.encode_documents(PerSentence(), [["ab", "", "c"], ["", ""]], dtype)
    assert [o[1:] for o in out] == [(2, 3, 1), (0, 0, 2)] and out[1][0] is None
    ids, ends = token_store.decode_document(out[0][0], dtype)
    assert ids.tolist() == [7, 7, 7] and ends.tolist() == [2, 3]
