"""GLUE metrics: accuracy; F1 of the positive class (MRPC, QQP); Matthews correlation (CoLA); Pearson and
Spearman correlation (STS-B). Each is a NumPy function of predictions and labels."""

from __future__ import annotations

import numpy as np


def accuracy(preds: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.asarray(preds) == np.asarray(labels)))


def _confusion(preds, labels) -> tuple[float, float, float, float]:
    p, y = np.asarray(preds) == 1, np.asarray(labels) == 1
    return float(np.sum(p & y)), float(np.sum(p & ~y)), float(np.sum(~p & y)), float(np.sum(~p & ~y))


def f1(preds: np.ndarray, labels: np.ndarray) -> float:
    """F1 of class 1 (0 when it is never predicted nor present)."""
    tp, fp, fn, _ = _confusion(preds, labels)
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def matthews(preds: np.ndarray, labels: np.ndarray) -> float:
    """Matthews correlation of binary predictions (0 when a marginal is constant)."""
    tp, fp, fn, tn = _confusion(preds, labels)
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return 0.0 if denom == 0 else float((tp * tn - fp * fn) / denom)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(xc * xc) * np.sum(yc * yc))
    return 0.0 if denom == 0 else float(np.sum(xc * yc) / denom)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties given their average rank."""
    x = np.asarray(x, np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), np.float64)
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(_ranks(x), _ranks(y))


#: task -> the metrics GLUE reports for it, beside accuracy (regression tasks report correlations only)
TASK_METRICS = {"cola": ("matthews_corrcoef",), "mrpc": ("f1",), "qqp": ("f1",), "sts-b": ("pearson", "spearman"),
                "stsb": ("pearson", "spearman")}


def classification_metrics(task_name: str, preds: np.ndarray, labels: np.ndarray, num_labels: int) -> dict:
    """The task's metrics (names without the ``eval_`` prefix) from predicted and true class ids."""
    out = {"accuracy": accuracy(preds, labels)}
    names = TASK_METRICS.get(task_name.lower(), ())
    if num_labels == 2 or names:
        if "f1" in names or (num_labels == 2 and not names):
            out["f1"] = f1(preds, labels)
        if "matthews_corrcoef" in names:
            out["matthews_corrcoef"] = matthews(preds, labels)
    return out


def regression_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    return {"pearson": pearson(scores, labels), "spearman": spearman(scores, labels),
            "corr": (pearson(scores, labels) + spearman(scores, labels)) / 2}
