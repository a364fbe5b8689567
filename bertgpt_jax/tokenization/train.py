"""Learning a vocabulary of each kind from a corpus with the native trainers (HF tokenizers, sentencepiece)."""

from __future__ import annotations

import io
import os
from typing import Iterable, Iterator, Sequence

from bertgpt_jax.tokenization.base import Tokenizer

KINDS = ("wordpiece", "bpe", "sentencepiece")
DEFAULT_SPECIAL_TOKENS = {
    "wordpiece": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
    "bpe": ["<|endoftext|>"],
    "sentencepiece": ["[CLS]", "[SEP]", "[MASK]"],
}


def train_tokenizer(sentences: Iterable[str], kind: str = "wordpiece", vocab_size: int = 8192,
                    do_lower_case: bool = True, special_tokens: Sequence[str] | None = None,
                    min_frequency: int = 2, sentencepiece_model_type: str = "unigram") -> Tokenizer:
    """Trains a ``kind`` vocabulary of about ``vocab_size`` tokens on ``sentences`` (any iterable of str).

    Special tokens default per kind (``DEFAULT_SPECIAL_TOKENS``): WordPiece's come first (ids 0..4),
    BPE's follow the learned tokens (GPT-2's layout), SentencePiece's follow pad/unk/eos (ids 0..2).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {KINDS}")
    specials = list(DEFAULT_SPECIAL_TOKENS[kind] if special_tokens is None else special_tokens)
    if vocab_size <= len(specials) + (256 if kind == "bpe" else 0):
        raise ValueError(f"vocab_size {vocab_size} is too small for {kind} with {len(specials)} special tokens"
                         + (" and 256 byte tokens" if kind == "bpe" else ""))
    if kind == "wordpiece":
        return _train_wordpiece(sentences, vocab_size, do_lower_case, specials, min_frequency)
    if kind == "bpe":
        return _train_bpe(sentences, vocab_size, do_lower_case, specials, min_frequency)
    return _train_sentencepiece(sentences, vocab_size, do_lower_case, specials, sentencepiece_model_type)


def _batches(sentences: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    batch = []
    for s in sentences:
        batch.append(s)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _train_wordpiece(sentences, vocab_size, do_lower_case, specials, min_frequency):
    from tokenizers import trainers

    from bertgpt_jax.tokenization.wordpiece import WordPieceTokenizer

    unk = "[UNK]" if "[UNK]" in specials else None
    if unk is None:
        raise ValueError(f"WordPiece special tokens {specials} lack [UNK], which WordPiece needs")
    # Train with the very normaliser and pre-tokenizer the result will use.
    seed = WordPieceTokenizer(specials, do_lower_case=do_lower_case, unk_token=unk)
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=specials, continuing_subword_prefix="##",
                                        show_progress=False)
    seed.hf.train_from_iterator(_batches(sentences), trainer=trainer)
    # The trainer learns the same set of pieces every time, but numbers them in an order that varies from
    # process to process (hash-map order of equally frequent pieces); a canonical order makes the ids, and
    # so every run on the vocabulary, reproducible: the special tokens, then by length, word-starts before
    # "##" continuations of the same length, then by code point.
    learned = [p for p in seed.hf.get_vocab() if p not in specials]
    return WordPieceTokenizer(list(specials) + sorted(learned, key=canonical_piece_order), do_lower_case=do_lower_case,
                              unk_token=unk)


def canonical_piece_order(piece: str) -> tuple[int, bool, str]:
    """The sort key of a learned WordPiece piece: (length without "##", is a continuation, text)."""
    cont = piece.startswith("##") and len(piece) > 2
    core = piece[2:] if cont else piece
    return len(core), cont, core


def _train_bpe(sentences, vocab_size, do_lower_case, specials, min_frequency):
    import json

    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    from bertgpt_jax.tokenization.bpe import ByteLevelBPETokenizer

    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(specials), min_frequency=min_frequency,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
                                  show_progress=False)
    texts = (s.lower() for s in sentences) if do_lower_case else sentences
    hf.train_from_iterator(_batches(texts), trainer=trainer)
    model = json.loads(hf.to_str())["model"]
    learned = ByteLevelBPETokenizer._from_vocab_and_merges(model["vocab"], [
        tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]], "trained BPE")
    # Ids are the ranks (bytes 0..255, then merges in order), special tokens after them as in GPT-2.
    n = len(learned.ranks)
    return ByteLevelBPETokenizer(learned.ranks, {s: n + i for i, s in enumerate(specials)},
                                 lowercase=do_lower_case)


def _train_sentencepiece(sentences, vocab_size, do_lower_case, specials, model_type):
    import sentencepiece

    from bertgpt_jax.tokenization.spm import SentencePieceTokenizer

    if model_type not in ("unigram", "bpe"):
        raise ValueError(f"sentencepiece_model_type {model_type!r}: expected 'unigram' or 'bpe'")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, model_type=model_type,
        pad_id=0, unk_id=1, eos_id=2, bos_id=-1, user_defined_symbols=list(specials),
        normalization_rule_name="nmt_nfkc_cf" if do_lower_case else "nmt_nfkc",
        character_coverage=0.9995, hard_vocab_limit=False, num_threads=os.cpu_count() or 1,
        minloglevel=2)
    return SentencePieceTokenizer(model.getvalue(), source="trained SentencePiece model")
