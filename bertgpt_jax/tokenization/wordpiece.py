"""BERT's WordPiece tokenizer with the original rules, run by HF ``tokenizers`` (Rust) for speed.

The rules (checked against transformers' pure-Python ``BertTokenizerLegacy`` in tests): control characters
dropped, whitespace normalised, CJK ideographs split into single characters, NFC, optional lower-casing with
accent stripping, punctuation split, greedy longest-match-first with ``##`` continuation, words longer than
200 characters -> ``[UNK]`` (the original release's limit; transformers' classes default to 100). Text that
looks like a special token (``"[MASK]"``) is ordinary text, as in the original ``FullTokenizer``.

Two rule sets differ in two places (``rules``): ``"hf"`` is transformers' ``BertTokenizer``, which drops every
Unicode C* character (private-use, unassigned, surrogates too) and NFC-composes before anything else; ``"original"``
is google-research/bert's ``FullTokenizer``, which drops only Cc/Cf (a private-use character stays, and its word
becomes [UNK]) and never composes (a cased vocabulary sees ``e\u0301`` as two characters, not ``\u00e9``). Which
vocabulary gets which: trained vocabularies, ``tokenizer.json``, and ``vocab.txt`` in an HF directory get
``"hf"`` (what HF checkpoints were tokenized with); a ``vocab.txt`` beside a ``bert_config.json`` and no
``tokenizer_config.json`` (a Google release directory) gets ``"original"``. The choice is saved with the
tokenizer and is part of its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from functools import lru_cache
from typing import Sequence

import numpy as np
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from bertgpt_jax import atomic_files
from bertgpt_jax.tokenization.base import Tokenizer, special_table, write_meta

MAX_INPUT_CHARS_PER_WORD = 200
_SPECIAL_TOKENS = {"cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]", "pad": "[PAD]", "unk": "[UNK]"}


def _ranges_to_class(ranges: list[tuple[int, int]]) -> str:
    return "[" + "".join(f"\\x{{{a:x}}}" + (f"-\\x{{{b:x}}}" if b > a else "") for a, b in ranges) + "]"


def _cache_path() -> str:
    """Where the character classes are cached: ``$BERTGPT_JAX_CACHE_DIR`` (else the user's cache directory),
    keyed by the Unicode version and by this module's source, so changed code never reads an old table."""
    root = os.environ.get("BERTGPT_JAX_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bertgpt_jax")
    with open(__file__, "rb") as f:
        code = hashlib.sha256(f.read()).hexdigest()[:12]
    return os.path.join(root, f"bert_char_classes-unicode{unicodedata.unidata_version}-{code}.json")


@lru_cache(maxsize=1)
def _classes() -> dict[str, str]:
    """``_build_classes()``, cached on disk (building takes about a second)."""
    cache = _cache_path()
    try:
        with open(cache, encoding="utf-8") as f:
            classes = json.load(f)
        if set(classes) == {"drop", "drop_original", "space", "punct", "accent"}:
            return classes
    except (OSError, ValueError):
        pass
    classes = _build_classes()
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        atomic_files.write_json(cache, classes)
    except OSError:
        pass  # a read-only home only costs the rebuild
    return classes


def _add(spans: list, cp: int) -> None:
    if spans and spans[-1][1] == cp - 1:
        spans[-1][1] = cp
    else:
        spans.append([cp, cp])


def _build_classes() -> dict[str, str]:
    """BERT's character classes as regex classes, taken from Python's ``unicodedata`` as the reference
    implementation does: the Rust normalizer's own tables are of another Unicode version and treat some
    categories otherwise (checked over the code points in tests/test_tokenization.py).

    drop: NUL, U+FFFD and every category C* but tab/newline/return (transformers' ``_clean_text``/``_is_control``);
    drop_original: NUL, U+FFFD and Cc/Cf but tab/newline/return (google-research/bert's ``_is_control``);
    space: space, tab, newline, return and Zs (``_is_whitespace``); punct: ASCII non-alphanumerics and P*
    (``_is_punctuation``); accent: Mn (what ``_run_strip_accents`` drops after NFD).
    """
    ascii_punct = set(range(33, 48)) | set(range(58, 65)) | set(range(91, 97)) | set(range(123, 127))
    ranges: dict[str, list] = {"drop": [], "drop_original": [], "space": [], "punct": [], "accent": []}
    category = unicodedata.category
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        c = chr(cp)
        cat = category(c)
        if c not in "\t\n\r" and (cp == 0 or cp == 0xFFFD or cat in ("Cc", "Cf")):
            _add(ranges["drop_original"], cp)  # the original's _clean_text drops only these
        if c in "\t\n\r " or cat == "Zs":
            name = "space"
        elif cp == 0 or cp == 0xFFFD or cat[0] == "C":
            name = "drop"
        elif cp in ascii_punct or cat[0] == "P":
            name = "punct"
        elif cat == "Mn":
            name = "accent"
        else:
            continue
        _add(ranges[name], cp)
    return {name: _ranges_to_class(spans) for name, spans in ranges.items()}


RULES = ("hf", "original")


def _normalizer(do_lower_case: bool, rules: str = "hf"):
    # BertTokenizer cleans, NFC-composes, then lower-cases and strips accents (NFD, drop Mn); the original
    # cleans fewer categories and does not compose.
    cls = _classes()
    steps = [normalizers.Replace(Regex(cls["drop" if rules == "hf" else "drop_original"]), ""),
             normalizers.Replace(Regex(cls["space"]), " ")] + ([normalizers.NFC()] if rules == "hf" else [])
    if do_lower_case:
        # Python's str.lower turns a word-final capital sigma into final sigma; Rust's per-char one does not.
        steps += [normalizers.Replace(Regex("(?<=\\p{Cased})\u03a3(?![\\p{Case_Ignorable}]*\\p{Cased})"), "\u03c2"),
                  normalizers.Lowercase(), normalizers.NFD(), normalizers.Replace(Regex(cls["accent"]), "")]
    return normalizers.Sequence(steps)


# BERT's _is_chinese_char: the CJK ideograph blocks (the Rust normalizer's list differs).
_CJK = ("[\\x{4e00}-\\x{9fff}\\x{3400}-\\x{4dbf}\\x{20000}-\\x{2a6df}\\x{2a700}-\\x{2b73f}\\x{2b740}-\\x{2b81f}"
        "\\x{2b820}-\\x{2ceaf}\\x{f900}-\\x{faff}\\x{2f800}-\\x{2fa1f}]")


def _pre_tokenizer(tokenize_chinese_chars: bool):
    # Splitting each ideograph off here equals BERT's padding it with spaces before NFC: no canonical
    # composition involves an ideograph, and NFC maps compatibility ideographs into the same blocks.
    isolated = _classes()["punct"] + ("|" + _CJK if tokenize_chinese_chars else "")
    return pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                    pre_tokenizers.Split(Regex(isolated), "isolated")])


class WordPieceTokenizer(Tokenizer):
    """WordPiece over a fixed vocabulary (a list of tokens; the id is the index)."""

    kind = "wordpiece"

    def __init__(self, vocab: Sequence[str], do_lower_case: bool = True, tokenize_chinese_chars: bool = True,
                 max_input_chars_per_word: int = MAX_INPUT_CHARS_PER_WORD, unk_token: str = "[UNK]",
                 rules: str = "hf"):
        super().__init__()
        if rules not in RULES:
            raise ValueError(f"WordPiece rules {rules!r} are not one of {RULES} (transformers' BertTokenizer or "
                             "google-research/bert's FullTokenizer)")
        self.rules = rules
        self.vocab = list(vocab)
        index = {tok: i for i, tok in enumerate(self.vocab)}
        if len(index) != len(self.vocab):
            dup = next(t for i, t in enumerate(self.vocab) if index[t] != i)
            raise ValueError(f"WordPiece vocabulary lists token {dup!r} twice; every line must be unique")
        if unk_token not in index:
            raise ValueError(f"WordPiece vocabulary has no unknown token {unk_token!r}; add it (BERT uses [UNK])")
        self.do_lower_case = bool(do_lower_case)
        self.tokenize_chinese_chars = bool(tokenize_chinese_chars)
        self.max_input_chars_per_word = int(max_input_chars_per_word)
        self.unk_token = unk_token
        names = dict(_SPECIAL_TOKENS, unk=unk_token)
        self.special.update({name: index.get(tok) for name, tok in names.items()})
        def build(normalizer, pre_tokenizer) -> HFTokenizer:
            hf = HFTokenizer(models.WordPiece(index, unk_token=unk_token, continuing_subword_prefix="##",
                                              max_input_chars_per_word=self.max_input_chars_per_word))
            hf.normalizer, hf.pre_tokenizer = normalizer, pre_tokenizer
            hf.decoder = decoders.WordPiece(prefix="##")
            return hf

        self.hf = build(_normalizer(self.do_lower_case, rules), _pre_tokenizer(self.tokenize_chinese_chars))
        # On ASCII text the stock Rust BERT normaliser and pre-tokenizer agree with the reference (tested)
        # and run faster than the exact pipeline above, which Unicode text needs (bench/README.md).
        self.hf_ascii = build(normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False,
                                                         strip_accents=False, lowercase=self.do_lower_case),
                              pre_tokenizers.BertPreTokenizer())

    # -- loading -------------------------------------------------------------------------------
    @classmethod
    def from_vocab_file(cls, path: str, do_lower_case: bool | None = None, **kwargs) -> "WordPieceTokenizer":
        """Loads a BERT ``vocab.txt`` (one token per line). ``do_lower_case`` defaults to a sibling
        ``tokenizer_config.json``'s setting, else True (the original default). ``rules`` default to
        ``"original"`` in a Google release directory (``bert_config.json`` and no ``tokenizer_config.json``
        beside it), else ``"hf"``."""
        with open(path, encoding="utf-8") as f:
            vocab = [line.rstrip("\r\n") for line in f]
        while vocab and vocab[-1] == "":  # a trailing newline is not a token
            vocab.pop()
        if not vocab:
            raise ValueError(f"{path} is empty; a WordPiece vocab.txt holds one token per line")
        if do_lower_case is None:
            do_lower_case = True
            config = os.path.join(os.path.dirname(path), "tokenizer_config.json")
            if os.path.exists(config):
                with open(config, encoding="utf-8") as f:
                    do_lower_case = bool(json.load(f).get("do_lower_case", True))
        if kwargs.get("rules") is None:
            here = os.path.dirname(path)
            release = os.path.exists(os.path.join(here, "bert_config.json")) and not os.path.exists(
                os.path.join(here, "tokenizer_config.json"))
            kwargs["rules"] = "original" if release else "hf"
        return cls(vocab, do_lower_case=do_lower_case, **kwargs)

    @classmethod
    def from_hf_json(cls, spec: dict, path: str = "tokenizer.json") -> "WordPieceTokenizer":
        """Builds from a parsed HF ``tokenizer.json`` whose model is WordPiece."""
        model = spec["model"]
        if model.get("continuing_subword_prefix", "##") != "##":
            raise ValueError(f"{path}: WordPiece prefix {model['continuing_subword_prefix']!r} is not '##'")
        vocab_map = model["vocab"]
        vocab = [None] * (max(vocab_map.values()) + 1)
        for tok, i in vocab_map.items():
            vocab[i] = tok
        if any(t is None for t in vocab):
            raise ValueError(f"{path}: WordPiece vocabulary ids are not contiguous from 0")
        norm = spec.get("normalizer") or {}
        bert = norm if norm.get("type") == "BertNormalizer" else next(
            (n for n in norm.get("normalizers", []) if n.get("type") == "BertNormalizer"), None)
        if bert is None:
            raise ValueError(f"{path}: WordPiece tokenizer without a BertNormalizer is not a BERT tokenizer")
        lower = bool(bert.get("lowercase", True))
        strip = bert.get("strip_accents")
        if strip is not None and bool(strip) != lower:
            raise ValueError(f"{path}: strip_accents={strip} with lowercase={lower} is not supported; "
                             "BERT strips accents exactly when it lower-cases")
        return cls(vocab, do_lower_case=lower, tokenize_chinese_chars=bool(bert.get("handle_chinese_chars", True)),
                   max_input_chars_per_word=int(model.get("max_input_chars_per_word", MAX_INPUT_CHARS_PER_WORD)),
                   unk_token=model.get("unk_token", "[UNK]"))

    # -- the interface -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def _pipeline(self, text: str) -> HFTokenizer:
        return self.hf_ascii if text.isascii() else self.hf

    def tokenize(self, text: str) -> list[str]:
        return self._pipeline(text).encode(text, add_special_tokens=False).tokens

    def encode(self, text: str) -> list[int]:
        return self._pipeline(text).encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = list(texts)
        unicode = [i for i, t in enumerate(texts) if not t.isascii()]
        if not unicode:
            return [e.ids for e in self.hf_ascii.encode_batch_fast(texts, add_special_tokens=False)]
        if len(unicode) == len(texts):
            return [e.ids for e in self.hf.encode_batch_fast(texts, add_special_tokens=False)]
        is_unicode = np.zeros(len(texts), bool)
        is_unicode[unicode] = True
        exact = iter(self.hf.encode_batch_fast([texts[i] for i in unicode], add_special_tokens=False))
        fast = iter(self.hf_ascii.encode_batch_fast([t for t, u in zip(texts, is_unicode) if not u],
                                                    add_special_tokens=False))
        return [(next(exact) if u else next(fast)).ids for u in is_unicode]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def id_to_token(self, index: int) -> str:
        return self.vocab[index]

    def word_start_table(self) -> np.ndarray:
        table = np.array([not t.startswith("##") for t in self.vocab], dtype=bool)
        return special_table(table, self.special)

    def save(self, directory: str) -> str:
        """Writes ``vocab.txt`` (the original format), HF ``tokenizer.json`` and our settings."""
        os.makedirs(directory, exist_ok=True)
        atomic_files.write_text(os.path.join(directory, "vocab.txt"), "".join(t + "\n" for t in self.vocab))
        self.hf.save(os.path.join(directory, "tokenizer.json"))
        write_meta(directory, {"kind": self.kind, "vocab_file": "vocab.txt", **self._settings()})
        return directory

    def _settings(self) -> dict:
        return {"do_lower_case": self.do_lower_case, "tokenize_chinese_chars": self.tokenize_chinese_chars,
                "max_input_chars_per_word": self.max_input_chars_per_word, "unk_token": self.unk_token,
                **({"rules": self.rules} if self.rules != "hf" else {})}

    def _vocab_digest_items(self):
        return (t.encode("utf-8") for t in self.vocab)
