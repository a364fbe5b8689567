"""Token classification data in the CoNLL-2003 format: one token per line (the word first, its tag last,
whitespace-separated), a blank line between sentences, ``-DOCSTART-`` lines skipped. Each word's tag goes
on its first WordPiece; the other pieces, [CLS], [SEP] and padding carry weight 0 in the loss and the
metrics. Predictions are written back in the same format (``word gold predicted``)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
from absl import logging


@dataclasses.dataclass
class Sentence:
    words: list[str]
    tags: list[str] | None
    line: int  # where it starts in its file


def read_conll(path: str, with_tags: bool = True) -> list[Sentence]:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    sentences, words, tags, start = [], [], [], 1
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.split()
            if not parts or parts[0] == "-DOCSTART-":
                if words:
                    sentences.append(Sentence(words, tags if with_tags else None, start))
                words, tags, start = [], [], line_no + 1
                continue
            if with_tags and len(parts) < 2:
                raise ValueError(f"{path}:{line_no}: {line.strip()!r} has no tag column; CoNLL lines are "
                                 "'word ... tag'")
            words.append(parts[0])
            tags.append(parts[-1])
    if words:
        sentences.append(Sentence(words, tags if with_tags else None, start))
    if not sentences:
        raise ValueError(f"{path} is empty (no sentences)")
    return sentences


def label_list(sentences: list[Sentence]) -> list[str]:
    """The sorted tag set of the training sentences."""
    return sorted({t for s in sentences for t in s.tags})


def convert_sentences_to_features(sentences: list[Sentence], labels: list[str], max_seq_length: int, tokenizer,
                                  path: str = "") -> dict[str, np.ndarray]:
    """``input_ids``, ``input_mask``, ``segment_ids``, ``label_ids`` and ``label_weights`` [N, T] (1 at the first
    piece of each word), ``word_index`` [N, T] (the word each first piece starts, -1 elsewhere). Words beyond
    ``max_seq_length - 2`` pieces are cut (counted and logged; they are predicted ``O``)."""
    label_map = {t: i for i, t in enumerate(labels)}
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id or 0
    vocab = sorted({w for s in sentences for w in s.words})
    pieces = dict(zip(vocab, tokenizer.encode_batch(vocab)))
    n, T = len(sentences), max_seq_length
    out = {"input_ids": np.full((n, T), pad_id, np.int32), "input_mask": np.zeros((n, T), np.int32),
           "segment_ids": np.zeros((n, T), np.int32), "label_ids": np.zeros((n, T), np.int32),
           "label_weights": np.zeros((n, T), np.float32), "word_index": np.full((n, T), -1, np.int32)}
    cut = 0
    for i, s in enumerate(sentences):
        ids, pos = [cls_id], 1
        for w_index, w in enumerate(s.words):
            p = list(pieces[w]) or [tokenizer.unk_token_id or 0]
            if pos + len(p) > T - 1:
                cut += 1
                break
            out["word_index"][i, pos] = w_index
            out["label_weights"][i, pos] = 1.0
            if s.tags is not None:
                tag = s.tags[w_index]
                if tag not in label_map:
                    raise ValueError(f"{path}:{s.line + w_index}: tag {tag!r} is not one of the training tags "
                                     f"{labels}")
                out["label_ids"][i, pos] = label_map[tag]
            ids += p
            pos += len(p)
        ids.append(sep_id)
        out["input_ids"][i, :len(ids)] = ids
        out["input_mask"][i, :len(ids)] = 1
    if cut:
        logging.info("%d of %d sentences cut at max_seq_length %d", cut, n, max_seq_length)
        print(f"[conll] {cut} of {n} sentences cut at max_seq_length={max_seq_length} (the rest of their words "
              "are predicted O)", flush=True)
    out["is_real_example"] = np.ones((n,), np.int32)
    return out


def predicted_tags(sentences: list[Sentence], features: dict, logits: np.ndarray, labels: list[str]) -> list[list[str]]:
    """Each word's tag: the argmax at its first piece; words cut off by max_seq_length get "O"."""
    best = np.argmax(logits, axis=-1)
    out = []
    for i, s in enumerate(sentences):
        tags = ["O"] * len(s.words)
        for pos in np.nonzero(features["word_index"][i] >= 0)[0]:
            tags[features["word_index"][i, pos]] = labels[best[i, pos]]
        out.append(tags)
    return out


def write_conll(path: str, sentences: list[Sentence], predictions: list[list[str]]) -> None:
    """``word gold predicted`` lines (``word predicted`` without gold tags), a blank line between sentences."""
    with open(path, "w", encoding="utf-8") as f:
        for s, pred in zip(sentences, predictions):
            for j, w in enumerate(s.words):
                f.write(" ".join([w] + ([s.tags[j]] if s.tags is not None else []) + [pred[j]]) + "\n")
            f.write("\n")
