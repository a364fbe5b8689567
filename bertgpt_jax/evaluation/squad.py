"""The official SQuAD evaluation, v1.1 (exact match and F1) and v2.0 (exact/f1 over all questions, HasAns and
NoAns subsets, and the best no-answer threshold from ``null_odds.json``), written from the definitions.

Answers are normalised before comparison: lower case, punctuation removed, the articles a/an/the removed,
whitespace collapsed. A question scores the maximum over its gold answers. v1.1 averages over the
questions in the dataset (a missing prediction scores 0) and reports percentages; v2.0 treats a question
with no gold answer as answered correctly by the empty string only.

    python -m bertgpt_jax.evaluation.squad dev-v2.0.json predictions.json [--null_odds null_odds.json]
"""

from __future__ import annotations

import collections
import json
import re
import string
import sys

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def normalize_answer(s: str) -> str:
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", s).split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalised strings; two empty strings score 1, one empty string 0."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = collections.Counter(pred) & collections.Counter(ref)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def _questions(dataset: list) -> list[tuple[str, list[str]]]:
    return [(qa["id"], [a["text"] for a in qa["answers"]]) for article in dataset for p in article["paragraphs"]
            for qa in p["qas"]]


def evaluate_v1(dataset: list, predictions: dict) -> dict:
    """``{"exact_match", "f1"}`` in percent over every question of ``dataset`` (the JSON's ``data``)."""
    em = f1 = 0.0
    qs = _questions(dataset)
    for qid, golds in qs:
        if qid not in predictions:
            print(f"Unanswered question {qid} will receive score 0.", file=sys.stderr)
            continue
        em += max(exact_match(predictions[qid], g) for g in golds)
        f1 += max(f1_score(predictions[qid], g) for g in golds)
    return {"exact_match": 100.0 * em / len(qs), "f1": 100.0 * f1 / len(qs)}


def _raw_scores_v2(dataset: list, predictions: dict) -> tuple[dict, dict, dict]:
    exact, f1, has_ans = {}, {}, {}
    for qid, golds in _questions(dataset):
        golds = [g for g in golds if normalize_answer(g)] or [""]
        has_ans[qid] = golds != [""]
        if qid not in predictions:
            print(f"Missing prediction for {qid}", file=sys.stderr)
            continue
        exact[qid] = max(float(normalize_answer(predictions[qid]) == normalize_answer(g)) for g in golds)
        f1[qid] = max(f1_score(predictions[qid], g) for g in golds)
    return exact, f1, has_ans


def _apply_threshold(scores: dict, null_odds: dict, has_ans: dict, threshold: float) -> dict:
    return {qid: (float(not has_ans[qid]) if null_odds[qid] > threshold else s) for qid, s in scores.items()}


def _mean(scores: dict, ids: list) -> float:
    return 100.0 * sum(scores.get(q, 0.0) for q in ids) / len(ids)


def _best_threshold(preds: dict, scores: dict, null_odds: dict, has_ans: dict) -> tuple[float, float]:
    """Sweeps the threshold over the null odds in increasing order, as the official script does."""
    num_no_ans = sum(1 for q in has_ans if not has_ans[q])
    cur = best = float(num_no_ans)
    best_thresh = 0.0
    for qid in sorted(null_odds, key=lambda q: null_odds[q]):
        if qid not in scores:
            continue
        if has_ans[qid]:
            diff = scores[qid]
        elif preds[qid]:
            diff = -1.0
        else:
            diff = 0.0
        cur += diff
        if cur > best:
            best, best_thresh = cur, null_odds[qid]
    return 100.0 * best / len(scores), best_thresh


def evaluate_v2(dataset: list, predictions: dict, null_odds: dict | None = None,
                threshold: float = 1.0) -> dict:
    """The v2.0 figures: ``exact``, ``f1``, ``total``, ``HasAns_*``, ``NoAns_*``; with ``null_odds``
    (question id -> null score minus best non-null score) also ``best_exact``/``best_f1`` and thresholds."""
    exact, f1, has_ans = _raw_scores_v2(dataset, predictions)
    given = null_odds is not None
    if null_odds is None:
        null_odds = {q: 0.0 for q in has_ans}
    exact_t = _apply_threshold(exact, null_odds, has_ans, threshold)
    f1_t = _apply_threshold(f1, null_odds, has_ans, threshold)
    ids = list(has_ans)
    out = {"exact": _mean(exact_t, ids), "f1": _mean(f1_t, ids), "total": len(ids)}
    for name, subset in (("HasAns", [q for q in ids if has_ans[q]]), ("NoAns", [q for q in ids if not has_ans[q]])):
        if subset:
            out[f"{name}_exact"] = _mean(exact_t, subset)
            out[f"{name}_f1"] = _mean(f1_t, subset)
            out[f"{name}_total"] = len(subset)
    if given:
        out["best_exact"], out["best_exact_thresh"] = _best_threshold(predictions, exact, null_odds, has_ans)
        out["best_f1"], out["best_f1_thresh"] = _best_threshold(predictions, f1, null_odds, has_ans)
    return out


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_file")
    parser.add_argument("pred_file")
    parser.add_argument("--null_odds", default=None, help="null_odds.json (v2.0)")
    parser.add_argument("--threshold", type=float, default=1.0, help="no-answer threshold on the null odds")
    args = parser.parse_args(argv)
    with open(args.data_file, encoding="utf-8") as f:
        data = json.load(f)
    with open(args.pred_file, encoding="utf-8") as f:
        preds = json.load(f)
    is_v2 = str(data.get("version", "")).startswith("v2") or any(
        "is_impossible" in qa for a in data["data"] for p in a["paragraphs"] for qa in p["qas"])
    if is_v2:
        odds = None
        if args.null_odds:
            with open(args.null_odds, encoding="utf-8") as f:
                odds = json.load(f)
        print(json.dumps(evaluate_v2(data["data"], preds, odds, args.threshold), indent=2))
    else:
        print(json.dumps(evaluate_v1(data["data"], preds)))


if __name__ == "__main__":
    main(sys.argv[1:])
