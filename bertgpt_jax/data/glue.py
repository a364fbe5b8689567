"""Sentence and sentence-pair classification data: the original ``run_classifier.py`` processors (CoLA, MNLI,
MRPC, XNLI), the rest of GLUE (SST-2, QQP, QNLI, RTE, WNLI, STS-B), a generic TSV/CSV/JSONL task, and the
conversion of examples to fixed-length features as the original does it.

Files are read as the original reads them (``csv.reader`` with tab delimiter and no quoting), columns by
position, headers skipped where the task has one. A line with too few columns, a label outside the task's
set and an empty split are errors that name the file and line.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from typing import Sequence

import numpy as np
from absl import logging

TRAIN, DEV, TEST = "train", "dev", "test"


@dataclasses.dataclass(frozen=True)
class InputExample:
    """One example: ``text_b`` None for single sentences; ``label`` a class name, or a float for regression."""

    guid: str
    text_a: str
    text_b: str | None = None
    label: str | float | None = None


def read_tsv(path: str) -> list[list[str]]:
    """Rows of a tab-separated file, read as the original (``csv.reader(delimiter="\\t", quotechar=None)``)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist")
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quotechar=None))
    if not rows:
        raise ValueError(f"{path} is empty")
    return rows


def _col(row: list[str], index: int, path: str, line_no: int, task: str) -> str:
    try:
        return row[index]
    except IndexError:
        need = index + 1 if index >= 0 else -index
        raise ValueError(f"{path}:{line_no}: {len(row)} tab-separated columns, but {task} reads column "
                         f"{index} (needs at least {need}); is this the {task} file?") from None


class DataProcessor:
    """A task's files in ``data_dir``: ``get_examples(data_dir, split)`` and ``get_labels()``."""

    name = ""
    files = {TRAIN: "train.tsv", DEV: "dev.tsv", TEST: "test.tsv"}
    has_header = True
    #: column of (text_a, text_b or None, label) in train/dev and of (text_a, text_b) in test
    columns: tuple = (0, None, 1)
    test_columns: tuple = (1, None)
    labels: tuple = ("0", "1")
    min_columns = 0  # a row is skipped (not an error) when it has fewer than this many columns

    @property
    def is_regression(self) -> bool:
        return not self.labels

    def get_labels(self) -> list[str]:
        return list(self.labels)

    def path(self, data_dir: str, split: str) -> str:
        return os.path.join(data_dir, self.files[split])

    def get_examples(self, data_dir: str, split: str) -> list[InputExample]:
        path = self.path(data_dir, split)
        rows = read_tsv(path)
        out = []
        for i, row in enumerate(rows):
            if i == 0 and self.has_header_for(split):
                continue
            if self.min_columns and len(row) < self.min_columns:
                continue
            ex = self.example(row, split, f"{split}-{i}", path, i + 1)
            if ex is not None:
                out.append(ex)
        if not out:
            raise ValueError(f"{path} holds no {self.name} examples")
        return out

    def has_header_for(self, split: str) -> bool:
        return self.has_header

    def example(self, row: list[str], split: str, guid: str, path: str, line_no: int) -> InputExample | None:
        if split == TEST:
            a_col, b_col = self.test_columns
            label = None
        else:
            a_col, b_col, label_col = self.columns
            label = _col(row, label_col, path, line_no, self.name)
        text_a = _col(row, a_col, path, line_no, self.name)
        text_b = None if b_col is None else _col(row, b_col, path, line_no, self.name)
        if label is not None:
            label = self.check_label(label, path, line_no)
        return InputExample(guid, text_a, text_b, label)

    def check_label(self, label: str, path: str, line_no: int):
        if self.is_regression:
            try:
                return float(label)
            except ValueError:
                raise ValueError(f"{path}:{line_no}: label {label!r} is not a number ({self.name} is a "
                                 "regression task)") from None
        if label not in self.labels:
            raise ValueError(f"{path}:{line_no}: label {label!r} is not one of {self.name}'s labels "
                             f"{list(self.labels)}")
        return label


class ColaProcessor(DataProcessor):
    """CoLA: no header in train/dev (label column 1, sentence column 3); test has one (sentence column 1)."""

    name = "cola"

    columns = (3, None, 1)
    test_columns = (1, None)

    def has_header_for(self, split: str) -> bool:
        return split == TEST


class MrpcProcessor(DataProcessor):
    name = "mrpc"
    columns = (3, 4, 0)
    test_columns = (3, 4)


class MnliProcessor(DataProcessor):
    """MNLI matched: dev_matched.tsv / test_matched.tsv; sentences in columns 8 and 9, label last."""

    name = "mnli"
    files = {TRAIN: "train.tsv", DEV: "dev_matched.tsv", TEST: "test_matched.tsv"}
    columns = (8, 9, -1)
    test_columns = (8, 9)
    labels = ("contradiction", "entailment", "neutral")


class MnliMismatchedProcessor(MnliProcessor):
    name = "mnli-mm"
    files = {TRAIN: "train.tsv", DEV: "dev_mismatched.tsv", TEST: "test_mismatched.tsv"}


class XnliProcessor(DataProcessor):
    """XNLI as the original reads it: training from ``multinli/multinli.train.<lang>.tsv`` (the translated
    MultiNLI), evaluation from ``xnli.dev.tsv`` / ``xnli.test.tsv`` rows of ``language``."""

    name = "xnli"
    labels = ("contradiction", "entailment", "neutral")

    def __init__(self, language: str = "zh"):
        self.language = language

    def path(self, data_dir: str, split: str) -> str:
        if split == TRAIN:
            return os.path.join(data_dir, "multinli", f"multinli.train.{self.language}.tsv")
        return os.path.join(data_dir, f"xnli.{split}.tsv")

    def example(self, row, split, guid, path, line_no):
        if split == TRAIN:
            label = _col(row, 2, path, line_no, self.name)
            label = "contradiction" if label == "contradictory" else label
            return InputExample(guid, _col(row, 0, path, line_no, self.name), _col(row, 1, path, line_no, self.name),
                                self.check_label(label, path, line_no))
        if _col(row, 0, path, line_no, self.name) != self.language:
            return None
        return InputExample(guid, _col(row, 6, path, line_no, self.name), _col(row, 7, path, line_no, self.name),
                            self.check_label(_col(row, 1, path, line_no, self.name), path, line_no))


class Sst2Processor(DataProcessor):
    name = "sst-2"
    columns = (0, None, 1)
    test_columns = (1, None)


class QqpProcessor(DataProcessor):
    """QQP; rows with fewer than six columns (a few in the released train.tsv) are skipped, as is usual."""

    name = "qqp"
    columns = (3, 4, 5)
    test_columns = (1, 2)

    def example(self, row, split, guid, path, line_no):
        if split != TEST and len(row) < 6:
            logging.warning("%s:%d: %d columns, QQP rows have 6; skipped", path, line_no, len(row))
            return None
        return super().example(row, split, guid, path, line_no)


class QnliProcessor(DataProcessor):
    name = "qnli"
    columns = (1, 2, -1)
    test_columns = (1, 2)
    labels = ("entailment", "not_entailment")


class RteProcessor(QnliProcessor):
    name = "rte"


class WnliProcessor(DataProcessor):
    name = "wnli"
    columns = (1, 2, -1)
    test_columns = (1, 2)


class StsbProcessor(DataProcessor):
    """STS-B: a similarity score in [0, 5], a regression task (one output, squared error)."""

    name = "sts-b"
    columns = (7, 8, -1)
    test_columns = (7, 8)
    labels = ()


class GenericProcessor(DataProcessor):
    """The user's own data: ``train``/``dev``/``test`` files (.tsv with a header row, .csv with a header row,
    or .jsonl) in ``data_dir``, with named text, optional text-pair and label columns. Labels are
    ``labels`` when given, else the sorted set of the training file's labels; ``regression`` reads numbers."""

    name = "generic"

    def __init__(self, text_column: str = "text", text_pair_column: str | None = None,
                 label_column: str = "label", labels: Sequence[str] | None = None, regression: bool = False,
                 data_dir: str | None = None):
        self.text_column, self.text_pair_column, self.label_column = text_column, text_pair_column, label_column
        self.regression = regression
        self._labels = tuple(labels) if labels else None
        self._data_dir = data_dir

    @property
    def is_regression(self) -> bool:
        return self.regression

    def path(self, data_dir: str, split: str) -> str:
        for ext in (".tsv", ".csv", ".jsonl"):
            p = os.path.join(data_dir, split + ext)
            if os.path.exists(p):
                return p
        raise FileNotFoundError(f"{data_dir} has no {split}.tsv, {split}.csv or {split}.jsonl")

    def get_labels(self) -> list[str]:
        if self.regression:
            return []
        if self._labels is None:
            if self._data_dir is None:
                raise ValueError("the generic task needs --labels or a data_dir with a training file")
            seen = {str(r[self.label_column]) for r in self._records(self.path(self._data_dir, TRAIN), TRAIN)}
            self._labels = tuple(sorted(seen))
        return list(self._labels)

    @property
    def labels(self):  # noqa: D401 -- the label set, resolved lazily
        return tuple(self.get_labels())

    def _records(self, path: str, split: str) -> list[dict]:
        need = [self.text_column] + ([self.text_pair_column] if self.text_pair_column else [])
        if split != TEST:
            need.append(self.label_column)
        records = []
        with open(path, encoding="utf-8", newline="") as f:
            if path.endswith(".jsonl"):
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}:{i}: not a JSON object: {e}") from None
                    records.append((i, rec))
            else:
                reader = csv.reader(f, delimiter="\t" if path.endswith(".tsv") else ",")
                header = next(reader, None)
                if header is None:
                    raise ValueError(f"{path} is empty")
                for i, row in enumerate(reader, 2):
                    if not row:
                        continue
                    if len(row) != len(header):
                        raise ValueError(f"{path}:{i}: {len(row)} columns, the header has {len(header)} "
                                         f"({', '.join(header)})")
                    records.append((i, dict(zip(header, row))))
        if not records:
            raise ValueError(f"{path} is empty")
        out = []
        for i, rec in records:
            missing = [c for c in need if c not in rec]
            if missing:
                raise ValueError(f"{path}:{i}: no column {missing[0]!r} (columns: {', '.join(map(str, rec))}); "
                                 "set --text_column / --text_pair_column / --label_column")
            rec["__line__"] = i
            out.append(rec)
        return out

    def get_examples(self, data_dir: str, split: str) -> list[InputExample]:
        path = self.path(data_dir, split)
        out = []
        labels = None if split == TEST else self.get_labels()
        for n, rec in enumerate(self._records(path, split)):
            label = None
            if split != TEST and self.label_column in rec:
                raw = rec[self.label_column]
                if self.regression:
                    try:
                        label = float(raw)
                    except (TypeError, ValueError):
                        raise ValueError(f"{path}:{rec['__line__']}: label {raw!r} is not a number") from None
                else:
                    label = str(raw)
                    if label not in labels:
                        raise ValueError(f"{path}:{rec['__line__']}: label {label!r} is not one of {labels}")
            pair = str(rec[self.text_pair_column]) if self.text_pair_column else None
            out.append(InputExample(f"{split}-{n}", str(rec[self.text_column]), pair, label))
        return out


PROCESSORS = {"cola": ColaProcessor, "mnli": MnliProcessor, "mnli-mm": MnliMismatchedProcessor,
              "mrpc": MrpcProcessor, "xnli": XnliProcessor, "sst-2": Sst2Processor, "sst2": Sst2Processor,
              "qqp": QqpProcessor, "qnli": QnliProcessor, "rte": RteProcessor, "wnli": WnliProcessor,
              "sts-b": StsbProcessor, "stsb": StsbProcessor, "generic": GenericProcessor}


def get_processor(task_name: str, **generic_kwargs) -> DataProcessor:
    name = task_name.lower()
    if name not in PROCESSORS:
        raise ValueError(f"task_name {task_name!r} is not one of {sorted(PROCESSORS)}")
    if name == "generic":
        return GenericProcessor(**generic_kwargs)
    return PROCESSORS[name]()


# ---- features ------------------------------------------------------------------------------------


def truncate_seq_pair(tokens_a: list, tokens_b: list, max_length: int) -> bool:
    """Pops tokens off the longer of the two, one at a time, until the pair fits (the original's
    ``_truncate_seq_pair``); in place. Returns whether anything was removed."""
    truncated = False
    while len(tokens_a) + len(tokens_b) > max_length:
        truncated = True
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()
    return truncated


def convert_examples_to_features(examples: Sequence[InputExample], label_list: Sequence[str], max_seq_length: int,
                                 tokenizer, *, regression: bool = False) -> dict[str, np.ndarray]:
    """``[CLS] A [SEP] (B [SEP])`` ids, padded to ``max_seq_length``; the original feature names
    (``input_ids``, ``input_mask``, ``segment_ids``, ``label_ids``, ``is_real_example``). The number of
    truncated examples is logged."""
    if max_seq_length < 3:
        raise ValueError(f"max_seq_length {max_seq_length} leaves no room for [CLS] and [SEP]")
    cls_id, sep_id, pad_id = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id or 0
    if cls_id is None or sep_id is None:
        raise ValueError("the tokenizer has no [CLS]/[SEP] tokens; sentence classification needs a BERT vocabulary")
    label_map = {label: i for i, label in enumerate(label_list)}
    n = len(examples)
    ids_a = tokenizer.encode_batch([ex.text_a for ex in examples])
    pairs = [ex.text_b for ex in examples if ex.text_b is not None]
    ids_b_iter = iter(tokenizer.encode_batch(pairs)) if pairs else iter(())
    input_ids = np.full((n, max_seq_length), pad_id, np.int32)
    input_mask = np.zeros((n, max_seq_length), np.int32)
    segment_ids = np.zeros((n, max_seq_length), np.int32)
    label_ids = np.zeros((n,), np.float32 if regression else np.int32)
    truncated = 0
    for i, ex in enumerate(examples):
        a = list(ids_a[i])
        b = list(next(ids_b_iter)) if ex.text_b is not None else None
        if b is not None:
            truncated += truncate_seq_pair(a, b, max_seq_length - 3)
        elif len(a) > max_seq_length - 2:
            a = a[:max_seq_length - 2]
            truncated += 1
        tokens = [cls_id] + a + [sep_id]
        segments = [0] * len(tokens)
        if b is not None:
            tokens += b + [sep_id]
            segments += [1] * (len(b) + 1)
        input_ids[i, :len(tokens)] = tokens
        input_mask[i, :len(tokens)] = 1
        segment_ids[i, :len(tokens)] = segments
        if ex.label is not None:
            label_ids[i] = float(ex.label) if regression else label_map[ex.label]
    if truncated:
        logging.info("%d of %d examples truncated to max_seq_length %d", truncated, n, max_seq_length)
        print(f"[features] {truncated} of {n} examples truncated to max_seq_length={max_seq_length}", flush=True)
    return {"input_ids": input_ids, "input_mask": input_mask, "segment_ids": segment_ids, "label_ids": label_ids,
            "is_real_example": np.ones((n,), np.int32)}
