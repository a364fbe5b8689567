"""Corpus readers: every source yields documents as lists of sentences (strings), streaming.

Sources (``input_file``): ``default`` (the embedded corpus), text files in the original BERT format (one
sentence per line, a blank line between documents), JSONL with a text field (``.jsonl``/``.json``), each
optionally ``.gz``; globs and comma-separated lists of those, local or ``gs://`` (via ``etils.epath``);
``tfds:NAME[:SPLIT]`` for a TFDS dataset through ``tfds.data_source``. Invalid UTF-8 is replaced and
counted, empty documents skipped and counted, and lines longer than ``max_line_bytes`` split at a space.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import itertools
import json
import os
import re
from typing import IO, Iterable, Iterator

DEFAULT = "default"
DEFAULT_CORPUS = os.path.join(os.path.dirname(__file__), "default_corpus", "python_docs.txt.gz")
MAX_LINE_BYTES = 1 << 20
_JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
# A sentence ends at . ! or ? followed by space and an opening capital, digit, quote or bracket.
_SENTENCE_END = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][\"')\]]))\s+(?=[\"'(\[]?[A-Z0-9])")


@dataclasses.dataclass
class CorpusStats:
    """What a read saw: documents and sentences yielded, raw bytes read, and what was skipped and why."""

    files: int = 0
    documents: int = 0
    sentences: int = 0
    bytes: int = 0
    skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

    def add(self, other: "CorpusStats") -> None:
        """Adds counts gathered elsewhere (a worker's parse of a unit)."""
        self.files += other.files
        self.documents += other.documents
        self.sentences += other.sentences
        self.bytes += other.bytes
        self.skipped.update(other.skipped)

    def to_dict(self) -> dict:
        return {"files": self.files, "documents": self.documents, "sentences": self.sentences,
                "bytes": self.bytes, "skipped": dict(sorted(self.skipped.items()))}


def split_sentences(text: str) -> list[str]:
    """Splits running text into sentences: at line breaks, then after sentence-ending punctuation."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            out.extend(s for s in (p.strip() for p in _SENTENCE_END.split(line)) if s)
    return out


def expand_paths(input_file: str) -> list[str]:
    """Comma-separated paths and globs -> the sorted list of files; a pattern that matches nothing is an error."""
    paths = []
    for part in (p.strip() for p in input_file.split(",")):
        if not part:
            continue
        if "://" in part:
            from etils import epath

            path = epath.Path(part)
            found = sorted(str(p) for p in path.parent.glob(path.name)) if glob.has_magic(part) else (
                [part] if path.exists() else [])
        else:
            found = sorted(glob.glob(os.path.expanduser(part))) if glob.has_magic(part) else (
                [part] if os.path.isfile(os.path.expanduser(part)) else [])
            found = [os.path.expanduser(p) for p in found if os.path.isfile(os.path.expanduser(p))]
        if not found:
            what = "matches no file" if glob.has_magic(part) else "does not exist (or is not a file)"
            raise FileNotFoundError(f"input file {part!r} {what}; give text/JSONL files, globs, "
                                    f"comma lists, {DEFAULT!r} or tfds:NAME[:SPLIT]")
        paths.extend(found)
    if not paths:
        raise ValueError(f"input_file {input_file!r} names no file")
    return paths


def _open(path: str) -> IO[bytes]:
    if "://" in path:
        from etils import epath

        f = epath.Path(path).open("rb")
    else:
        f = open(path, "rb")
    return gzip.GzipFile(fileobj=f) if path.endswith(".gz") else f


def _decode(raw: bytes, stats: CorpusStats) -> list[str]:
    try:
        return raw.decode("utf-8").split("\n")
    except UnicodeDecodeError:  # find and count the bad lines; keep their text with U+FFFD
        lines = []
        for line in raw.split(b"\n"):
            try:
                lines.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                stats.skipped["invalid_utf8_lines"] += 1
                stats.skipped["invalid_utf8_bytes"] += len(line)
                lines.append(line.decode("utf-8", errors="replace"))
        return lines


def _split_long_line(line: str, max_line_bytes: int, stats: CorpusStats) -> list[str]:
    """A line over ``max_line_bytes`` in pieces cut at the last space (else at a character boundary)."""
    raw, pieces = line.encode("utf-8"), []
    while len(raw) > max_line_bytes:
        cut = raw.rfind(b" ", 0, max_line_bytes)
        if cut <= 0:
            cut = max_line_bytes
            while cut > 0 and (raw[cut] & 0xC0) == 0x80:
                cut -= 1
        pieces.append(raw[:cut].decode("utf-8").strip())
        stats.skipped["long_line_pieces"] += 1
        raw = raw[cut:]
    pieces.append(raw.decode("utf-8").strip())
    return [p for p in pieces if p]


def _blocks(f: IO[bytes], stats: CorpusStats, block_bytes: int, boundary: bytes) -> Iterator[bytes]:
    """Large reads cut just after the last ``boundary`` (a blank line between documents, or a newline
    for JSONL), so each block holds whole documents. A document longer than a block grows the block."""
    carry = b""
    while True:
        block = f.read(block_bytes)
        stats.bytes += len(block)
        if not block:
            if carry:
                yield carry
            return
        data = carry + block if carry else block
        cut = data.rfind(boundary)
        if cut >= 0:
            cut += len(boundary)
            yield data[:cut]
            carry = data[cut:]
        else:
            carry = data


def _emit(doc: list[str], stats: CorpusStats) -> list[str] | None:
    if not doc:
        stats.skipped["empty_documents"] += 1
        return None
    stats.documents += 1
    stats.sentences += len(doc)
    return doc


def parse_text_block(raw: bytes, stats: CorpusStats, max_line_bytes: int = MAX_LINE_BYTES) -> list[list[str]]:
    """Documents of a block in the original BERT format: one sentence per line, blank lines between."""
    lines = [line.strip() for line in _decode(raw, stats)]
    if max(map(len, lines), default=0) * 4 <= max_line_bytes:  # no line can be too long: group in C
        docs = [list(group) for keep, group in itertools.groupby(lines, bool) if keep]
        stats.documents += len(docs)
        stats.sentences += sum(map(len, docs))
        return docs
    docs, doc = [], []
    for line in lines:
        if line:
            if len(line) * 4 > max_line_bytes and len(line.encode("utf-8")) > max_line_bytes:
                doc.extend(_split_long_line(line, max_line_bytes, stats))
            else:
                doc.append(line)
        elif doc:
            docs.append(_emit(doc, stats))
            doc = []
    if doc:
        docs.append(_emit(doc, stats))
    return docs


def parse_jsonl_block(raw: bytes, stats: CorpusStats, text_field: str = "text") -> list[list[str]]:
    """JSON Lines: one document per line, its text under ``text_field``, split into sentences."""
    docs = []
    for line in _decode(raw, stats):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            stats.skipped["bad_json_lines"] += 1
            continue
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            stats.skipped[f"no_{text_field}_field"] += 1
            continue
        doc = _emit(split_sentences(text), stats)
        if doc is not None:
            docs.append(doc)
    return docs


def parse_unit(kind: str, payload, stats: CorpusStats, text_field: str = "text") -> list[list[str]]:
    """The documents of one work unit from :func:`iter_units` (run where the tokenizing happens)."""
    if kind == "text":
        return parse_text_block(payload, stats)
    if kind == "jsonl":
        return parse_jsonl_block(payload, stats, text_field)
    return payload  # "docs": parsed already


def iter_units(input_file: str, stats: CorpusStats, text_field: str = "text",
               block_bytes: int = 1 << 18) -> Iterator[tuple[str, object]]:
    """The corpus as work units of whole documents: ``("text" | "jsonl", raw bytes)`` from files, or
    ``("docs", documents)``. Parsing a unit is left to :func:`parse_unit`, so it can run in a worker."""
    if input_file == DEFAULT:
        input_file = DEFAULT_CORPUS
    if input_file.startswith("tfds:"):
        batch, size = [], 0
        for doc in read_tfds(input_file, stats, text_field):
            batch.append(doc)
            size += sum(len(s) for s in doc)
            if size >= block_bytes:
                yield "docs", batch
                batch, size = [], 0
        if batch:
            yield "docs", batch
        return
    for path in expand_paths(input_file):
        stats.files += 1
        base = path[:-3] if path.endswith(".gz") else path
        kind, boundary = ("jsonl", b"\n") if base.endswith(_JSON_SUFFIXES) else ("text", b"\n\n")
        with _open(path) as f:
            for block in _blocks(f, stats, block_bytes, boundary):
                yield kind, block


def read_text_file(path: str, stats: CorpusStats, max_line_bytes: int = MAX_LINE_BYTES) -> Iterator[list[str]]:
    """The original BERT format: one sentence per line, blank lines between documents."""
    with _open(path) as f:
        for block in _blocks(f, stats, 1 << 20, b"\n\n"):
            yield from parse_text_block(block, stats, max_line_bytes)


def read_jsonl_file(path: str, stats: CorpusStats, text_field: str = "text") -> Iterator[list[str]]:
    """JSON Lines files (one document per line)."""
    with _open(path) as f:
        for block in _blocks(f, stats, 1 << 20, b"\n"):
            yield from parse_jsonl_block(block, stats, text_field)


def read_tfds(spec: str, stats: CorpusStats, text_field: str = "text") -> Iterator[list[str]]:
    """``tfds:NAME[:SPLIT]`` through ``tfds.data_source`` (no TensorFlow needed); texts split into sentences."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(f"{spec!r} needs tensorflow-datasets: pip install 'bertgpt_jax[tfds]'") from e
    parts = spec.split(":")
    name, split = parts[1], (parts[2] if len(parts) > 2 else "train")
    source = tfds.data_source(name, split=split)
    stats.files += 1
    for i in range(len(source)):
        value = source[i][text_field]
        if isinstance(value, bytes):
            stats.bytes += len(value)
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                stats.skipped["invalid_utf8_lines"] += 1
                value = value.decode("utf-8", errors="replace")
        doc = _emit(split_sentences(value), stats)
        if doc is not None:
            yield doc


def read_documents(input_file: str, stats: CorpusStats | None = None, text_field: str = "text") -> Iterator[list[str]]:
    """Streams the documents of ``input_file`` (see the module docstring for what it may name)."""
    stats = stats if stats is not None else CorpusStats()
    for kind, payload in iter_units(input_file, stats, text_field):
        yield from parse_unit(kind, payload, stats, text_field)


def iter_sentences(input_file: str, stats: CorpusStats | None = None, text_field: str = "text") -> Iterator[str]:
    """Every sentence of the corpus in order (what the vocabulary trainers read)."""
    for doc in read_documents(input_file, stats, text_field):
        yield from doc


# -- the embedded default corpus --------------------------------------------------------------------

def _docstring_paragraphs(text: str) -> Iterable[str]:
    for para in re.split(r"\n\s*\n", text):
        lines = [ln.strip() for ln in para.splitlines()]
        # Code examples and tables read poorly as sentences.
        if lines and not lines[0].startswith((">>>", "...", "+--", "|")):
            yield " ".join(ln for ln in lines if ln)


def python_documentation_documents() -> Iterator[list[str]]:
    """Documents from the text that ships with Python: ``pydoc_data`` topics, then each stdlib module's
    docstrings (module, classes, functions; read with ``ast``, nothing imported)."""
    import ast
    import sysconfig

    from pydoc_data.topics import topics

    for name in sorted(topics):
        doc = [s for p in _docstring_paragraphs(topics[name]) for s in split_sentences(p)]
        if doc:
            yield doc
    stdlib = sysconfig.get_paths()["stdlib"]
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "turtledemo"}
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        for name in sorted(f for f in files if f.endswith(".py")):
            try:
                with open(os.path.join(root, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            doc = []
            nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
            for node in [tree] + sorted(nodes, key=lambda n: n.lineno):  # in source order
                text = ast.get_docstring(node) or ""
                doc.extend(s for p in _docstring_paragraphs(text) for s in split_sentences(p))
            if len(doc) >= 2:
                yield doc


def build_default_corpus(path: str = DEFAULT_CORPUS) -> str:
    """Writes the embedded corpus (BERT text format, gzip) from this Python's documentation.

    The package ships the file built once (CPython 3.11 docs, PSF licence), so every machine sees the
    same text; this rebuilds it.
    """
    tmp = path + ".tmp"
    with gzip.GzipFile(tmp, "wb", mtime=0) as f:
        for doc in python_documentation_documents():
            f.write(("\n".join(doc) + "\n\n").encode("utf-8"))
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    print(build_default_corpus())
