"""Entity-level precision, recall and F1 of tag sequences, as seqeval computes them by default (its
"conlleval" mode): chunks are read from BIO, IOB1, IOE and IOBES tags alike by the same begin/end rules, a
type change ends a chunk, and scores are micro-averaged over (type, start, end) chunks."""

from __future__ import annotations

from typing import Sequence


def _split(tag: str) -> tuple[str, str]:
    """(prefix letter, type) as seqeval reads a tag: its first character and what follows the first dash."""
    return tag[0], tag[1:].split("-", 1)[-1] or "_"


def _ends(prev_tag, tag, prev_type, kind) -> bool:
    return (prev_tag in ("E", "S") or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
            or (prev_tag not in ("O", ".") and prev_type != kind))


def _starts(prev_tag, tag, prev_type, kind) -> bool:
    return (tag in ("B", "S") or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
            or (tag not in ("O", ".") and prev_type != kind))


def get_entities(tags: Sequence[str] | Sequence[Sequence[str]]) -> list[tuple[str, int, int]]:
    """(type, first, last) of every chunk; a list of sentences is read as one sequence with "O" between."""
    if tags and not isinstance(tags[0], str):
        tags = [t for sentence in tags for t in list(sentence) + ["O"]]
    chunks, prev_tag, prev_type, begin = [], "O", "_", 0
    for i, tag in enumerate(list(tags) + ["O"]):
        t, kind = _split(tag)
        if _ends(prev_tag, t, prev_type, kind):
            chunks.append((prev_type, begin, i - 1))
        if _starts(prev_tag, t, prev_type, kind):
            begin = i
        prev_tag, prev_type = t, kind
    return chunks


def entity_scores(true: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> dict:
    """``precision``, ``recall``, ``f1`` (micro, over chunks) and ``accuracy`` (over tags)."""
    if len(true) != len(pred) or any(len(a) != len(b) for a, b in zip(true, pred)):
        raise ValueError("true and predicted tag sequences differ in length")
    gold, guess = set(get_entities(true)), set(get_entities(pred))
    correct = len(gold & guess)
    p = correct / len(guess) if guess else 0.0
    r = correct / len(gold) if gold else 0.0
    n = sum(len(s) for s in true)
    acc = sum(a == b for s, t in zip(true, pred) for a, b in zip(s, t)) / max(n, 1)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "accuracy": acc}
