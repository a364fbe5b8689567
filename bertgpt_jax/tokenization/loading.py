"""``from_file``: a tokenizer from whatever file or directory holds one; the kind follows from the files."""

from __future__ import annotations

import glob
import json
import os

from bertgpt_jax.tokenization.base import META_FILE, Tokenizer
from bertgpt_jax.tokenization.wordpiece import WordPieceTokenizer

_KNOWN = "vocab.txt, tokenizer.json, vocab.json + merges.txt, *.tiktoken, *.model, or a directory written by save()"


def from_file(path: str, do_lower_case: bool | None = None) -> Tokenizer:
    """Loads a tokenizer from a file or directory; the kind follows from the file names and contents.

    ``do_lower_case`` applies to a bare WordPiece ``vocab.txt`` (which cannot say); elsewhere it is read
    from the files.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer file {path!r} does not exist; give one of: {_KNOWN}")
    if os.path.isdir(path):
        return _from_dir(path, do_lower_case)
    name = os.path.basename(path)
    try:
        if name.endswith(".txt") and name != "merges.txt":
            return WordPieceTokenizer.from_vocab_file(path, do_lower_case=do_lower_case)
        if name.endswith(".json") and name != "vocab.json":
            return _from_hf_json(path)
        if name.endswith(".tiktoken"):
            from bertgpt_jax.tokenization.bpe import ByteLevelBPETokenizer

            return ByteLevelBPETokenizer.from_tiktoken_file(path)
        if name.endswith(".model"):
            from bertgpt_jax.tokenization.spm import SentencePieceTokenizer

            return SentencePieceTokenizer.from_model_file(path)
        if name in ("vocab.json", "merges.txt"):
            return _from_dir(os.path.dirname(path) or ".", do_lower_case)
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"cannot read tokenizer file {path!r}: {type(e).__name__}: {e}") from e
    raise ValueError(f"cannot tell which tokenizer {path!r} holds; give one of: {_KNOWN}")


def _from_dir(path: str, do_lower_case: bool | None) -> Tokenizer:
    meta_path = os.path.join(path, META_FILE)
    if os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        return _from_meta(path, meta)
    # vocab.txt before tokenizer.json: the original BERT format, read with the original rules (a word
    # limit of 200 characters; HF files often say 100), and do_lower_case from tokenizer_config.json.
    candidates = ["vocab.txt", "tokenizer.json", "vocab.json"]
    for name in candidates:
        if os.path.exists(os.path.join(path, name)):
            if name == "vocab.json":
                from bertgpt_jax.tokenization.bpe import ByteLevelBPETokenizer

                return ByteLevelBPETokenizer.from_vocab_merges(os.path.join(path, "vocab.json"),
                                                               os.path.join(path, "merges.txt"))
            return from_file(os.path.join(path, name), do_lower_case)
    for pattern in ("*.tiktoken", "*.model"):
        found = sorted(glob.glob(os.path.join(path, pattern)))
        if len(found) == 1:
            return from_file(found[0])
    raise ValueError(f"directory {path!r} holds no tokenizer; expected one of: {_KNOWN}")


def _from_meta(path: str, meta: dict) -> Tokenizer:
    kind = meta.get("kind")
    if kind == "wordpiece":
        return WordPieceTokenizer.from_vocab_file(
            os.path.join(path, meta["vocab_file"]), do_lower_case=meta["do_lower_case"],
            tokenize_chinese_chars=meta["tokenize_chinese_chars"],
            max_input_chars_per_word=meta["max_input_chars_per_word"], unk_token=meta["unk_token"],
            rules=meta.get("rules", "hf"))
    if kind == "bpe":
        from bertgpt_jax.tokenization.bpe import ByteLevelBPETokenizer

        return ByteLevelBPETokenizer.from_meta(path, meta)
    if kind == "sentencepiece":
        from bertgpt_jax.tokenization.spm import SentencePieceTokenizer

        return SentencePieceTokenizer.from_meta(path, meta)
    raise ValueError(f"{os.path.join(path, META_FILE)}: unknown tokenizer kind {kind!r}; "
                     "expected wordpiece, bpe or sentencepiece")


def _from_hf_json(path: str) -> Tokenizer:
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    model_type = (spec.get("model") or {}).get("type")
    if model_type == "WordPiece":
        return WordPieceTokenizer.from_hf_json(spec, path)
    if model_type == "BPE":
        from bertgpt_jax.tokenization.bpe import ByteLevelBPETokenizer

        return ByteLevelBPETokenizer.from_hf_json(spec, path)
    raise ValueError(f"{path}: HF tokenizer model {model_type!r} is not supported; "
                     "expected WordPiece or byte-level BPE")
