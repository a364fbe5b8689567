"""Corpus readers: formats, compression, path lists, bad input, and the embedded default corpus."""

import gzip
import itertools
import json

import pytest

from bertgpt_jax.tokenization import corpus


def _read(spec, **kw):
    stats = corpus.CorpusStats()
    return list(corpus.read_documents(spec, stats, **kw)), stats


def test_bert_text_format(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("First sentence.\n  Second one.  \n\n\n   \nDoc two only.\n\nThird doc.\nLast line no newline",
                    encoding="utf-8")
    docs, stats = _read(str(path))
    assert docs == [["First sentence.", "Second one."], ["Doc two only."], ["Third doc.", "Last line no newline"]]
    assert (stats.files, stats.documents, stats.sentences) == (1, 3, 5)
    assert stats.bytes == path.stat().st_size and not stats.skipped


def test_jsonl_gzip_globs_and_comma_lists(tmp_path):
    rows = [{"text": "One sentence. Another Sentence! A third?\nNew line."}, {"text": ""}, {"title": "x"},
            "not an object", {"text": "Solo"}]
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
        f.write("{broken json\n")
    with gzip.open(tmp_path / "c.txt.gz", "wt", encoding="utf-8") as f:
        f.write("Gz doc.\n\nSecond gz doc.\n")
    (tmp_path / "d.txt").write_text("Plain.\n", encoding="utf-8")
    docs, stats = _read(f"{tmp_path}/*.gz,{tmp_path}/d.txt")
    assert docs == [["One sentence.", "Another Sentence!", "A third?", "New line."], ["Solo"],
                    ["Gz doc."], ["Second gz doc."], ["Plain."]]
    assert stats.files == 3 and stats.documents == 5
    assert dict(stats.skipped) == {"empty_documents": 1, "no_text_field": 2, "bad_json_lines": 1}
    docs, _ = _read(str(tmp_path / "b.jsonl.gz"), text_field="title")
    assert docs == [["x"]]


def test_missing_input_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt.*does not exist"):
        _read(str(tmp_path / "nope.txt"))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        _read(str(tmp_path / "*.jsonl"))
    with pytest.raises(ImportError, match="tensorflow-datasets"):
        _read("tfds:wikipedia")


def test_invalid_utf8_counted_and_replaced(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good line\nbad \xff\xfe bytes\n\xc3\x28 also bad\n\nnext doc\n")
    docs, stats = _read(str(path))
    assert docs == [["good line", "bad \ufffd\ufffd bytes", "\ufffd( also bad"], ["next doc"]]
    assert stats.skipped["invalid_utf8_lines"] == 2


def test_ten_megabyte_line_without_newline(tmp_path):
    words = [f"word{i}" for i in range(1_400_000)]
    text = " ".join(words)  # ~11 MB, no newline at all
    assert len(text) > 10_000_000
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    cjk = "漢" * 1_000_000  # 3 MB without any space: cut at character boundaries
    (tmp_path / "cjk.txt").write_text(cjk, encoding="utf-8")
    docs, stats = _read(str(tmp_path / "big.txt"))
    assert len(docs) == 1 and len(docs[0]) > 10
    assert all(len(s.encode()) <= corpus.MAX_LINE_BYTES for s in docs[0])
    assert " ".join(docs[0]).split() == words  # pieces end at spaces: no word is cut
    docs, stats = _read(str(tmp_path / "cjk.txt"))
    assert "".join(docs[0]) == cjk and stats.skipped["long_line_pieces"] >= 2
    assert not stats.skipped["invalid_utf8_lines"]


def test_split_sentences():
    assert corpus.split_sentences("Dr. Who arrived. He said \"Hi.\" Then 3 left! Why? (Because.)  x\n\n y") == [
        "Dr.", "Who arrived.", "He said \"Hi.\"", "Then 3 left!", "Why?", "(Because.)  x", "y"]


def test_default_corpus_is_embedded_real_text():
    docs, stats = _read("default")
    assert stats.documents == len(docs) > 500 and stats.sentences > 20_000 and stats.bytes > 1_500_000
    flat = [s for d in docs for s in d]
    assert any("Return" in s for s in flat) and all(s == s.strip() and s for s in flat)
    assert any(d[0].startswith("The ") for d in docs)
    # The builder reads Python's own documentation (nothing imported) in the same document format.
    first = list(itertools.islice(corpus.python_documentation_documents(), 3))
    assert len(first) == 3 and all(len(d) >= 1 and all(isinstance(s, str) and s for s in d) for d in first)


def test_tfds_source_through_data_source(monkeypatch):
    """The TFDS path against a stand-in module with tfds.data_source's contract (the package itself is an
    optional extra: its dependencies weigh ~90 MB)."""
    import sys
    import types

    calls = []

    def data_source(name, split):
        calls.append((name, split))
        return [{"text": b"First doc. Two sentences."}, {"text": b""}, {"text": b"Bad \xff byte."}]

    monkeypatch.setitem(sys.modules, "tensorflow_datasets", types.SimpleNamespace(data_source=data_source))
    docs, stats = _read("tfds:wikipedia/20230601.en:validation")
    assert calls == [("wikipedia/20230601.en", "validation")]
    assert docs == [["First doc.", "Two sentences."], ["Bad \ufffd byte."]]
    assert stats.skipped["empty_documents"] == 1 and stats.skipped["invalid_utf8_lines"] == 1
