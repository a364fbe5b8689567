"""GPT-2's byte-level BPE, run by tiktoken (Rust): loads ``.tiktoken`` rank files and ``vocab.json`` + ``merges.txt``.

Ranks follow tiktoken's rule (merge the adjacent pair whose concatenation has the lowest rank). For GPT-2's
own files that gives exactly GPT-2's ids; a ``vocab.json`` whose ids are not in merge order is handled by a
rank -> id table. ``decode(encode(x)) == x`` for every string, since the ids spell out its UTF-8 bytes.
"""

from __future__ import annotations

import binascii
import json
import operator
import os
from functools import lru_cache
from typing import Sequence

import numpy as np

from bertgpt_jax import atomic_files
from bertgpt_jax.tokenization.base import Tokenizer, special_table, write_meta

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
# Names of special tokens as the common vocabularies spell them.
SPECIAL_SPELLINGS = {"<|endoftext|>": "eos", "</s>": "eos", "[CLS]": "cls", "<s>": "cls", "[SEP]": "sep",
                     "[MASK]": "mask", "<mask>": "mask", "[PAD]": "pad", "<pad>": "pad", "<|pad|>": "pad",
                     "[UNK]": "unk", "<unk>": "unk"}


@lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte (a space is ``Ġ``), as in vocab.json."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _token_text(token: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


class ByteLevelBPETokenizer(Tokenizer):
    """Byte-level BPE over ``ranks`` (token bytes -> rank) plus ``special_tokens`` (text -> id)."""

    kind = "bpe"

    def __init__(self, ranks: dict[bytes, int], special_tokens: dict[str, int], pattern: str = GPT2_PATTERN,
                 rank_to_id: np.ndarray | None = None, lowercase: bool = False):
        import tiktoken

        super().__init__()
        missing = [b for b in range(256) if bytes([b]) not in ranks]
        if missing:
            raise ValueError(f"byte-level BPE vocabulary lacks {len(missing)} single-byte tokens (e.g. byte "
                             f"{missing[0]}); all 256 bytes are needed to encode any text")
        self.ranks = dict(ranks)
        self.special_tokens = dict(special_tokens)
        self.pattern = pattern
        self.lowercase = bool(lowercase)
        self.enc = tiktoken.Encoding("bertgpt_jax", pat_str=pattern, mergeable_ranks=self.ranks,
                                     special_tokens=self.special_tokens)
        n_ranks = max(self.ranks.values()) + 1
        self.rank_to_id = None if rank_to_id is None else np.asarray(rank_to_id, dtype=np.int64)
        ids = (list(self.ranks.values()) if self.rank_to_id is None
               else [int(self.rank_to_id[r]) for r in self.ranks.values()])
        self._vocab_size = max(ids + list(self.special_tokens.values())) + 1
        self.id_to_bytes: list[bytes | None] = [None] * self._vocab_size
        for tok, r in self.ranks.items():
            self.id_to_bytes[r if self.rank_to_id is None else int(self.rank_to_id[r])] = tok
        self.id_to_special = {i: s for s, i in self.special_tokens.items()}
        self.id_to_rank = None
        if self.rank_to_id is not None:
            self.id_to_rank = np.full(self._vocab_size, -1, np.int64)
            self.id_to_rank[self.rank_to_id[:n_ranks]] = np.arange(n_ranks)
        for text, i in self.special_tokens.items():
            if text in SPECIAL_SPELLINGS and self.special[SPECIAL_SPELLINGS[text]] is None:
                self.special[SPECIAL_SPELLINGS[text]] = i
        newline_rank = self.ranks[b"\n"]
        self.newline_id = newline_rank if self.rank_to_id is None else int(self.rank_to_id[newline_rank])

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_tiktoken_file(cls, path: str, special_tokens: dict[str, int] | None = None) -> "ByteLevelBPETokenizer":
        """Loads a tiktoken rank file (``base64(token) rank`` per line); GPT-2's ``<|endoftext|>`` follows the
        ranks unless ``special_tokens`` says otherwise."""
        ranks = {}
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    token, rank = line.split()
                    ranks[binascii.a2b_base64(token, strict_mode=True)] = int(rank)
                except ValueError as e:  # binascii.Error is one
                    raise ValueError(f"{path}:{lineno}: not a tiktoken rank line (base64 token, space, rank): "
                                     f"{line[:80]!r}") from e
        if not ranks:
            raise ValueError(f"{path} holds no ranks; a .tiktoken file has one 'base64 rank' line per token")
        if special_tokens is None:
            special_tokens = {ENDOFTEXT: max(ranks.values()) + 1}
        return cls(ranks, special_tokens)

    @classmethod
    def from_vocab_merges(cls, vocab_path: str, merges_path: str) -> "ByteLevelBPETokenizer":
        """Loads GPT-2 style ``vocab.json`` + ``merges.txt``; tokens not made of GPT-2's byte characters
        (``<|endoftext|>``, ``[CLS]``...) become special tokens."""
        if not os.path.exists(merges_path):
            raise FileNotFoundError(f"{merges_path} is missing; a BPE vocab.json needs its merges.txt beside it")
        with open(vocab_path, encoding="utf-8") as f:
            vocab = json.load(f)
        with open(merges_path, encoding="utf-8") as f:
            merges = [tuple(line.rstrip("\r\n").split(" ")) for line in f
                      if line.strip() and not line.startswith("#version")]
        return cls._from_vocab_and_merges(vocab, merges, vocab_path)

    @classmethod
    def from_hf_json(cls, spec: dict, path: str = "tokenizer.json") -> "ByteLevelBPETokenizer":
        model = spec["model"]
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        vocab = dict(model["vocab"])
        for added in spec.get("added_tokens", []):
            vocab.setdefault(added["content"], added["id"])
        return cls._from_vocab_and_merges(vocab, merges, path)

    @classmethod
    def _from_vocab_and_merges(cls, vocab: dict[str, int], merges: list[tuple], path: str):
        decode = {c: b for b, c in byte_to_unicode().items()}
        # Learned tokens are the single bytes and what the merges make; anything else
        # (<|endoftext|>, [CLS]...) is a special token, even when spelled in byte characters.
        learned = set(byte_to_unicode().values()) | {m[0] + m[1] for m in merges if len(m) == 2}
        token_bytes, special = {}, {}
        for text, i in vocab.items():
            if text in learned and all(c in decode for c in text):
                token_bytes[text] = bytes(decode[c] for c in text)
            else:
                special[text] = int(i)
        # tiktoken ranks: single bytes first, then each merge's result in merge order.
        ranks, rank_ids = {}, []
        for b in range(256):
            text = byte_to_unicode()[b]
            if text not in vocab:
                raise ValueError(f"{path}: byte-level vocabulary lacks the single-byte token {text!r}")
            ranks[bytes([b])] = b
            rank_ids.append(int(vocab[text]))
        for n, merge in enumerate(merges):
            if len(merge) != 2:
                raise ValueError(f"{path}: merge {n} {' '.join(merge)!r} is not two tokens")
            merged = merge[0] + merge[1]
            if merged not in token_bytes:
                raise ValueError(f"{path}: merge {n} produces {merged!r}, which is not in the vocabulary")
            if token_bytes[merged] in ranks:
                continue
            ranks[token_bytes[merged]] = len(rank_ids)
            rank_ids.append(int(vocab[merged]))
        rank_to_id = np.asarray(rank_ids, np.int64)
        identity = bool(np.array_equal(rank_to_id, np.arange(len(rank_ids))))
        return cls(ranks, special, rank_to_id=None if identity else rank_to_id)

    @classmethod
    def from_meta(cls, directory: str, meta: dict) -> "ByteLevelBPETokenizer":
        tok = cls.from_tiktoken_file(os.path.join(directory, meta["ranks_file"]),
                                     special_tokens={k: int(v) for k, v in meta["special_tokens"].items()})
        return cls(tok.ranks, tok.special_tokens, pattern=meta["pattern"], lowercase=meta.get("lowercase", False),
                   rank_to_id=meta.get("rank_to_id"))

    # -- the interface -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def _to_ids(self, ranks: list[int]) -> list[int]:
        if self.rank_to_id is None:
            return ranks
        return self.rank_to_id[np.asarray(ranks, np.int64)].tolist()

    def encode(self, text: str) -> list[int]:
        # Text that looks like a special token is plain text: a corpus cannot inject <|endoftext|>.
        return self._to_ids(self.enc.encode_ordinary(text.lower() if self.lowercase else text))

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        texts = [t.lower() for t in texts] if self.lowercase else list(texts)
        return [self._to_ids(r) for r in self.enc.encode_ordinary_batch(texts, num_threads=num_threads)]

    def encode_document(self, sentences: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Encodes the sentences joined by newlines as one text (tiktoken is fast on long texts, slow on
        many short ones); each sentence but the last keeps its newline token. Returns ``(ids, ends)``, the
        ids as tiktoken gives them (uint32) unless a vocab.json renumbers them, the ends as int64."""
        text = self._document_text(sentences)
        # encode_to_numpy with no special tokens allowed or disallowed is encode_ordinary, minus the list.
        ids = self.enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
        if self.rank_to_id is not None:
            ids = self.rank_to_id[ids]
        if len(sentences) <= 1:
            return ids, np.array([len(ids)], np.int64)
        # When the text has exactly the joining newlines and each became a token of its own, those
        # tokens are the sentence boundaries.
        newlines = np.flatnonzero(ids == self.newline_id)
        if text.count("\n") == len(sentences) - 1 == len(newlines):
            ends = np.empty(len(sentences), np.int64)
            np.add(newlines, 1, out=ends[:-1])
            ends[-1] = len(ids)
            return ids, ends
        # Otherwise (sentences with newlines or outer whitespace) encode sentence by sentence.
        raw = [s + "\n" for s in sentences[:-1]] + [sentences[-1]]
        parts = self.encode_batch(raw)
        return np.array([i for p in parts for i in p], np.int64), np.cumsum([len(p) for p in parts])

    def encode_documents(self, docs: Sequence[Sequence[str]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`encode_document` of each document, in one tiktoken call for them all when that is exact.

        With GPT-2's pattern, documents joined by a blank line tokenize as each alone plus two newline
        tokens between them, provided no document starts or ends with whitespace and every newline comes
        out as a token of its own (both are checked; otherwise each document is encoded alone). One call
        per block instead of one per document saves the per-call and per-array costs (bench/README.md).
        """
        texts = [self._document_text(d) for d in docs]
        counts = [len(d) for d in docs]
        newlines = sum(counts) + len(docs) - 2  # (n - 1) in each document, two between documents
        if (len(docs) < 2 or self.pattern != GPT2_PATTERN or not all(counts)
                or not all(t and not t[0].isspace() and not t[-1].isspace() for t in texts)):
            return [self.encode_document(d) for d in docs]
        text = "\n\n".join(texts)
        if text.count("\n") != newlines:  # a sentence holds a newline of its own
            return [self.encode_document(d) for d in docs]
        ids = self.enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
        if self.rank_to_id is not None:
            ids = self.rank_to_id[ids]
        at = np.flatnonzero(ids == self.newline_id)
        if len(at) != newlines:  # some newline merged with neighbouring whitespace
            return [self.encode_document(d) for d in docs]
        out, k, start = [], 0, 0
        for j, n in enumerate(counts):
            end = int(at[k + n - 1]) if j + 1 < len(docs) else len(ids)
            ends = np.empty(n, np.int64)
            np.subtract(at[k:k + n - 1], start - 1, out=ends[:-1])  # each sentence keeps its newline
            ends[-1] = end - start
            out.append((ids[start:end], ends))
            k, start = k + n + 1, end + 2
        return out

    def _document_text(self, sentences: Sequence[str]) -> str:
        return "\n".join(s.lower() for s in sentences) if self.lowercase else "\n".join(sentences)

    def decode(self, ids: Sequence[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Sequence[int]) -> bytes:
        out = []
        for i in ids:
            i = int(i)
            if i in self.id_to_special:
                out.append(self.id_to_special[i].encode("utf-8"))
            elif 0 <= i < self._vocab_size and self.id_to_bytes[i] is not None:
                out.append(self.id_to_bytes[i])
            else:
                raise ValueError(f"token id {i} is not in this BPE vocabulary (size {self._vocab_size})")
        return b"".join(out)

    def id_to_token(self, index: int) -> str:
        if index in self.id_to_special:
            return self.id_to_special[index]
        return _token_text(self.id_to_bytes[index])

    def tokenize(self, text: str) -> list[str]:
        return [self.id_to_token(i) for i in self.encode(text)]

    def word_start_table(self) -> np.ndarray:
        table = np.array([b is not None and b[:1] == b" " for b in self.id_to_bytes], dtype=bool)
        return special_table(table, self.special)

    def save(self, directory: str) -> str:
        """Writes the ranks as ``bpe.tiktoken`` (tiktoken's format) plus the settings."""
        os.makedirs(directory, exist_ok=True)
        lines = [binascii.b2a_base64(tok, newline=False) + b" %d\n" % r for tok, r in self._ranked()]
        with atomic_files.atomic_open(os.path.join(directory, "bpe.tiktoken"), "wb") as f:
            f.write(b"".join(lines))
        write_meta(directory, {"kind": self.kind, "ranks_file": "bpe.tiktoken", "pattern": self.pattern,
                               "special_tokens": self.special_tokens, "lowercase": self.lowercase,
                               # ids differ from ranks when a vocab.json numbers tokens otherwise
                               "rank_to_id": None if self.rank_to_id is None else self.rank_to_id.tolist()})
        return directory

    def _settings(self) -> dict:
        return {"pattern": self.pattern, "special_tokens": self.special_tokens, "lowercase": self.lowercase}

    def _ranked(self) -> list[tuple[bytes, int]]:
        """``(token bytes, rank)`` in rank order (a rank file is in that order already)."""
        items = list(self.ranks.items())
        if any(a[1] > b[1] for a, b in zip(items, items[1:])):
            items.sort(key=operator.itemgetter(1))
        return items

    def _vocab_digest_items(self):
        ids = None if self.rank_to_id is None else self.rank_to_id.tolist()
        return [tok + b"\x00" + (r if ids is None else ids[r]).to_bytes(4, "little") for tok, r in self._ranked()]
