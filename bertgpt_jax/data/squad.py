"""SQuAD v1.1 / v2.0 as the original ``run_squad.py`` reads, windows and post-processes it.

- :func:`read_squad_examples`: contexts split on whitespace into words, each answer's character offsets mapped
  to word positions; a training question (v1.1) must have exactly one answer, and its text must be found at its
  offset in the context (both are errors here, naming the question).
- :func:`convert_examples_to_features`: WordPiece per word (the token -> word alignment), the answer span
  tightened to the tokens of the answer text (``_improve_answer_span``), sliding windows of
  ``max_seq_length - len(query) - 3`` tokens whose starts are ``doc_stride`` apart, and for each token the
  window in which it has the most context (``_check_is_max_context``).
- :func:`write_predictions`: the n-best start/end pairs of each window (valid spans, the max-context rule,
  ``max_answer_length``), mapped back onto the original text (:func:`get_final_text`); for v2.0 the null answer
  scored with the minimum null score over the question's windows, and the question answered with "" when
  ``null score - best non-null score > null_score_diff_threshold``.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import unicodedata

import numpy as np
from absl import logging


@dataclasses.dataclass
class SquadExample:
    qas_id: str
    question_text: str
    doc_tokens: list[str]
    orig_answer_text: str | None = None
    start_position: int | None = None  # word index
    end_position: int | None = None
    is_impossible: bool = False


def is_whitespace(c: str) -> bool:
    return c in " \t\r\n" or ord(c) == 0x202F


def read_squad_examples(input_file: str, is_training: bool, version_2_with_negative: bool = False
                        ) -> list[SquadExample]:
    if not os.path.exists(input_file):
        raise FileNotFoundError(f"SQuAD file {input_file} does not exist")
    with open(input_file, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{input_file} is not JSON ({e}); expected the SQuAD format") from None
    if not isinstance(data, dict) or "data" not in data:
        raise ValueError(f"{input_file} has no 'data' list; expected the SQuAD format")
    return squad_examples(data["data"], input_file, is_training, version_2_with_negative)


def squad_examples(data: list[dict], source: str, is_training: bool, version_2_with_negative: bool = False
                   ) -> list[SquadExample]:
    """The examples of a SQuAD JSON's ``data`` list (articles -> paragraphs -> qas); ``source`` names it in
    errors (a file, or a TFDS split)."""
    input_file = source
    examples = []
    for entry in data:
        for paragraph in entry["paragraphs"]:
            text = paragraph["context"]
            doc_tokens: list[str] = []
            char_to_word = []
            prev_ws = True
            for c in text:
                if is_whitespace(c):
                    prev_ws = True
                else:
                    if prev_ws:
                        doc_tokens.append(c)
                    else:
                        doc_tokens[-1] += c
                    prev_ws = False
                char_to_word.append(len(doc_tokens) - 1)
            for qa in paragraph["qas"]:
                qid = qa["id"]
                is_impossible = bool(qa.get("is_impossible", False)) if version_2_with_negative else False
                ex = SquadExample(qid, qa["question"], doc_tokens, is_impossible=is_impossible)
                if is_training:
                    if len(qa["answers"]) != 1 and not is_impossible:
                        raise ValueError(f"{input_file}: training question {qid} has {len(qa['answers'])} answers; "
                                         "each must have exactly one (v2.0: or is_impossible with "
                                         "--version_2_with_negative)")
                    if is_impossible:
                        ex.start_position, ex.end_position, ex.orig_answer_text = -1, -1, ""
                    else:
                        answer = qa["answers"][0]
                        ans, offset = answer["text"], int(answer["answer_start"])
                        if not ans or offset < 0 or offset + len(ans) > len(text):
                            raise ValueError(f"{input_file}: question {qid}: answer {ans!r} at answer_start {offset} "
                                             f"lies outside its context of {len(text)} characters")
                        ex.start_position = char_to_word[offset]
                        ex.end_position = char_to_word[offset + len(ans) - 1]
                        actual = " ".join(doc_tokens[ex.start_position:ex.end_position + 1])
                        cleaned = " ".join(ans.split())
                        if actual.find(cleaned) == -1:
                            raise ValueError(f"{input_file}: question {qid}: answer {ans!r} does not match the "
                                             f"context at answer_start {offset} (the words there are {actual!r})")
                        ex.orig_answer_text = ans
                examples.append(ex)
    if not examples:
        raise ValueError(f"{input_file} holds no questions")
    return examples


# ---- features ------------------------------------------------------------------------------------


@dataclasses.dataclass
class SquadFeatures:
    """The windows' arrays (``input_ids``, ``input_mask``, ``segment_ids``, and for training
    ``start_positions``/``end_positions``) and, per window, what post-processing reads."""

    arrays: dict
    example_index: list[int]
    tokens: list[list[str]]
    token_to_orig_map: list[dict]
    token_is_max_context: list[dict]


def _improve_answer_span(doc_tokens, start, end, answer_tokens):
    """The innermost sub-span equal to the answer's own tokens (ids: joining pieces with spaces, as the original
    compares, is equality of the piece lists)."""
    target = list(answer_tokens)
    for new_start in range(start, end + 1):
        for new_end in range(end, new_start - 1, -1):
            if list(doc_tokens[new_start:new_end + 1]) == target:
                return new_start, new_end
    return start, end


def _check_is_max_context(doc_spans, cur_index: int, position: int) -> bool:
    best_score, best_index = None, None
    for i, (start, length) in enumerate(doc_spans):
        end = start + length - 1
        if position < start or position > end:
            continue
        score = min(position - start, end - position) + 0.01 * length
        if best_score is None or score > best_score:
            best_score, best_index = score, i
    return cur_index == best_index


def doc_spans(num_tokens: int, max_tokens_for_doc: int, doc_stride: int) -> list[tuple[int, int]]:
    """(start, length) of each window; starts ``min(length, doc_stride)`` apart, the last reaching the end."""
    spans, start = [], 0
    while start < num_tokens:
        length = min(num_tokens - start, max_tokens_for_doc)
        spans.append((start, length))
        if start + length == num_tokens:
            break
        start += min(length, doc_stride)
    return spans


def convert_examples_to_features(examples: list[SquadExample], tokenizer, max_seq_length: int, doc_stride: int,
                                 max_query_length: int, is_training: bool) -> SquadFeatures:
    if max_seq_length <= max_query_length + 3:
        raise ValueError(f"max_seq_length {max_seq_length} must exceed max_query_length {max_query_length} + 3 "
                         "([CLS] and two [SEP]), or no context token fits in a window")
    if doc_stride <= 0:
        raise ValueError(f"doc_stride must be positive, got {doc_stride}")
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        raise ValueError("the tokenizer has no [CLS]/[SEP] tokens; SQuAD needs a BERT vocabulary")
    pad_id = tokenizer.pad_token_id or 0
    # Every distinct word and question is encoded once, in batches.
    words = sorted({w for ex in examples for w in ex.doc_tokens})
    word_ids = dict(zip(words, tokenizer.encode_batch(words)))
    questions = tokenizer.encode_batch([ex.question_text for ex in examples])
    answers = (tokenizer.encode_batch([ex.orig_answer_text or "" for ex in examples]) if is_training
               else [None] * len(examples))
    rows = {k: [] for k in ("input_ids", "input_mask", "segment_ids", "start_positions", "end_positions")}
    out = SquadFeatures(rows, [], [], [], [])
    doc_cache: dict[int, tuple] = {}
    n_out_of_span = 0
    for ex_index, ex in enumerate(examples):
        query = list(questions[ex_index])[:max_query_length]
        key = id(ex.doc_tokens)
        if key not in doc_cache:
            tok_to_orig, orig_to_tok, all_doc = [], [], []
            for i, w in enumerate(ex.doc_tokens):
                orig_to_tok.append(len(all_doc))
                for t in word_ids[w]:
                    tok_to_orig.append(i)
                    all_doc.append(t)
            doc_cache[key] = (tok_to_orig, orig_to_tok, all_doc)
        tok_to_orig, orig_to_tok, all_doc = doc_cache[key]
        tok_start = tok_end = None
        if is_training and ex.is_impossible:
            tok_start = tok_end = -1
        if is_training and not ex.is_impossible:
            tok_start = orig_to_tok[ex.start_position]
            tok_end = (orig_to_tok[ex.end_position + 1] - 1 if ex.end_position < len(ex.doc_tokens) - 1
                       else len(all_doc) - 1)
            tok_start, tok_end = _improve_answer_span(all_doc, tok_start, tok_end, list(answers[ex_index]))
        spans = doc_spans(len(all_doc), max_seq_length - len(query) - 3, doc_stride)
        for span_index, (start, length) in enumerate(spans):
            ids = [cls_id] + query + [sep_id]
            segments = [0] * len(ids)
            to_orig, max_ctx = {}, {}
            for i in range(length):
                split = start + i
                to_orig[len(ids)] = tok_to_orig[split]
                max_ctx[len(ids)] = _check_is_max_context(spans, span_index, split)
                ids.append(all_doc[split])
                segments.append(1)
            ids.append(sep_id)
            segments.append(1)
            s_pos = e_pos = 0
            if is_training and not ex.is_impossible:
                if tok_start >= start and tok_end <= start + length - 1:
                    offset = len(query) + 2
                    s_pos, e_pos = tok_start - start + offset, tok_end - start + offset
                else:
                    n_out_of_span += 1
            pad = max_seq_length - len(ids)
            rows["input_ids"].append(ids + [pad_id] * pad)
            rows["input_mask"].append([1] * len(ids) + [0] * pad)
            rows["segment_ids"].append(segments + [0] * pad)
            rows["start_positions"].append(s_pos)
            rows["end_positions"].append(e_pos)
            out.example_index.append(ex_index)
            out.tokens.append(ids)
            out.token_to_orig_map.append(to_orig)
            out.token_is_max_context.append(max_ctx)
    out.arrays = {k: np.asarray(v, np.int32) for k, v in rows.items()}
    out.arrays["is_real_example"] = np.ones((len(out.example_index),), np.int32)
    if not is_training:
        del out.arrays["start_positions"], out.arrays["end_positions"]
    msg = (f"{len(examples)} questions -> {len(out.example_index)} windows of {max_seq_length} tokens "
           f"(doc_stride {doc_stride})")
    if is_training:
        msg += f"; {n_out_of_span} windows do not contain their answer (trained to point at [CLS])"
    logging.info(msg)
    print(f"[squad] {msg}", flush=True)
    return out


# ---- post-processing ---------------------------------------------------------------------------------


def _is_punctuation(c: str) -> bool:
    cp = ord(c)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(c).startswith("P")


def _is_chinese_char(cp: int) -> bool:
    return (0x4E00 <= cp <= 0x9FFF or 0x3400 <= cp <= 0x4DBF or 0x20000 <= cp <= 0x2A6DF or 0x2A700 <= cp <= 0x2B73F
            or 0x2B740 <= cp <= 0x2B81F or 0x2B820 <= cp <= 0x2CEAF or 0xF900 <= cp <= 0xFAFF
            or 0x2F800 <= cp <= 0x2FA1F)


_ASCII_CONTROL = frozenset(chr(c) for c in list(range(0x00, 0x09)) + [0x0B, 0x0C] + list(range(0x0E, 0x20)) + [0x7F])


def basic_tokenize(text: str, do_lower_case: bool = True) -> list[str]:
    """The original ``BasicTokenizer``: drop control characters, space out CJK characters, split on whitespace,
    lower-case and strip accents (``do_lower_case``), split off punctuation. Words are split once each
    (cached): post-processing calls this for every n-best answer."""
    if text.isascii() and not _ASCII_CONTROL.intersection(text):
        words = text.split()  # the same split as the character loop below, for such text
    else:
        chars = []
        for c in text:
            cp = ord(c)
            if cp == 0 or cp == 0xFFFD or (unicodedata.category(c).startswith("C") and c not in "\t\n\r"):
                continue
            if is_whitespace(c) or unicodedata.category(c) == "Zs":
                chars.append(" ")
            elif _is_chinese_char(cp):
                chars.append(f" {c} ")
            else:
                chars.append(c)
        words = "".join(chars).split()
    return [piece for w in words for piece in _split_word(w, do_lower_case)]


@functools.lru_cache(maxsize=1 << 18)
def _split_word(token: str, do_lower_case: bool) -> tuple[str, ...]:
    if do_lower_case:
        token = "".join(ch for ch in unicodedata.normalize("NFD", token.lower()) if unicodedata.category(ch) != "Mn")
    out, piece = [], ""
    for ch in token:
        if _is_punctuation(ch):
            if piece:
                out.append(piece)
            out.append(ch)
            piece = ""
        else:
            piece += ch
    if piece:
        out.append(piece)
    return tuple(out)


def _strip_spaces(text: str):
    chars, ns_to_s = [], {}
    for i, c in enumerate(text):
        if c == " ":
            continue
        ns_to_s[len(chars)] = i
        chars.append(c)
    return "".join(chars), ns_to_s


def get_final_text(pred_text: str, orig_text: str, do_lower_case: bool) -> str:
    """The span of ``orig_text`` (original words, original case and punctuation) that ``pred_text`` (the
    predicted WordPiece tokens, joined) stands for; ``orig_text`` itself when the two cannot be aligned."""
    tok_text = " ".join(basic_tokenize(orig_text, do_lower_case))
    start = tok_text.find(pred_text)
    if start == -1:
        return orig_text
    end = start + len(pred_text) - 1
    orig_ns, orig_map = _strip_spaces(orig_text)
    tok_ns, tok_map = _strip_spaces(tok_text)
    if len(orig_ns) != len(tok_ns):
        return orig_text
    tok_s_to_ns = {v: k for k, v in tok_map.items()}
    orig_start = orig_map.get(tok_s_to_ns[start]) if start in tok_s_to_ns else None
    orig_end = orig_map.get(tok_s_to_ns[end]) if end in tok_s_to_ns else None
    if orig_start is None or orig_end is None:
        return orig_text
    return orig_text[orig_start:orig_end + 1]


def _softmax(scores: list[float]) -> list[float]:
    if not scores:
        return []
    m = max(scores)
    exp = [math.exp(s - m) for s in scores]
    total = sum(exp)
    return [e / total for e in exp]


def _best_indexes(logits: np.ndarray, n: int) -> np.ndarray:
    # Stable, like Python's sorted(..., reverse=True): ties keep their order.
    return np.argsort(-np.asarray(logits), kind="stable")[:n]


def write_predictions(examples: list[SquadExample], features: SquadFeatures, start_logits: np.ndarray,
                      end_logits: np.ndarray, *, n_best_size: int = 20, max_answer_length: int = 30,
                      do_lower_case: bool = True, version_2_with_negative: bool = False,
                      null_score_diff_threshold: float = 0.0, id_to_token=None):
    """``(predictions, nbest, null_odds)``: question id -> answer text; -> the n-best list (text, probability,
    start_logit, end_logit); -> null score minus best non-null score (v2.0 only, else empty)."""
    by_example = collections.defaultdict(list)
    for f_index, ex_index in enumerate(features.example_index):
        by_example[ex_index].append(f_index)
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    F, T = start_logits.shape
    # The candidate search of every window at once: top-n starts x top-n ends, valid where both are context
    # tokens of this window, the start has its max context here, and 0 <= end - start < max_answer_length.
    is_context = np.zeros((F, T), bool)
    is_max = np.zeros((F, T), bool)
    for f in range(F):
        is_context[f, list(features.token_to_orig_map[f])] = True
        is_max[f, [pos for pos, m in features.token_is_max_context[f].items() if m]] = True
    n = min(n_best_size, T)
    starts = np.argsort(-start_logits, axis=1, kind="stable")[:, :n]  # ties keep their order, as sorted() does
    ends = np.argsort(-end_logits, axis=1, kind="stable")[:, :n]
    rows = np.arange(F)[:, None]
    start_ok = is_context[rows, starts] & is_max[rows, starts]
    end_ok = is_context[rows, ends]
    length = ends[:, None, :] - starts[:, :, None] + 1
    valid = start_ok[:, :, None] & end_ok[:, None, :] & (length >= 1) & (length <= max_answer_length)
    s_top = np.take_along_axis(start_logits, starts, 1).astype(np.float64)
    e_top = np.take_along_axis(end_logits, ends, 1).astype(np.float64)
    predictions, all_nbest, null_odds = collections.OrderedDict(), collections.OrderedDict(), collections.OrderedDict()
    for ex_index, ex in enumerate(examples):
        prelim = []
        score_null, null_feature, null_start, null_end = 1e6, 0, 0.0, 0.0
        for f_index in by_example[ex_index]:
            if version_2_with_negative:
                null = float(start_logits[f_index, 0]) + float(end_logits[f_index, 0])
                if null < score_null:
                    score_null, null_feature = null, f_index
                    null_start, null_end = float(start_logits[f_index, 0]), float(end_logits[f_index, 0])
            for i, j in zip(*np.nonzero(valid[f_index])):  # start-major, as the original's nested loops
                s_logit, e_logit = float(s_top[f_index, i]), float(e_top[f_index, j])
                prelim.append((s_logit + e_logit, f_index, int(starts[f_index, i]), int(ends[f_index, j]),
                               s_logit, e_logit))
        if version_2_with_negative:
            prelim.append((null_start + null_end, null_feature, 0, 0, null_start, null_end))
        prelim.sort(key=lambda p: p[0], reverse=True)
        seen, nbest = set(), []
        for _, f_index, s, e, s_logit, e_logit in prelim:
            if len(nbest) >= n_best_size:
                break
            if s > 0:
                pieces = [id_to_token(t) for t in features.tokens[f_index][s:e + 1]]
                tok_text = " ".join(pieces).replace(" ##", "").replace("##", "")
                tok_text = " ".join(tok_text.strip().split())
                to_orig = features.token_to_orig_map[f_index]
                orig_text = " ".join(ex.doc_tokens[to_orig[s]:to_orig[e] + 1])
                text = get_final_text(tok_text, orig_text, do_lower_case)
                if text in seen:
                    continue
            else:
                text = ""
            seen.add(text)
            nbest.append((text, s_logit, e_logit))
        if version_2_with_negative and "" not in seen:
            nbest.append(("", null_start, null_end))
        if not nbest:
            nbest.append(("empty", 0.0, 0.0))
        probs = _softmax([s + e for _, s, e in nbest])
        all_nbest[ex.qas_id] = [collections.OrderedDict(text=t, probability=p, start_logit=s, end_logit=e)
                                for (t, s, e), p in zip(nbest, probs)]
        best_non_null = next((entry for entry in nbest if entry[0]), None)
        if not version_2_with_negative:
            predictions[ex.qas_id] = nbest[0][0]
        else:
            if best_non_null is None:
                diff = float("inf")
            else:
                diff = score_null - best_non_null[1] - best_non_null[2]
            null_odds[ex.qas_id] = diff
            predictions[ex.qas_id] = "" if diff > null_score_diff_threshold else best_non_null[0]
    return predictions, all_nbest, null_odds
