"""The official SQuAD v1.1 / v2.0 evaluation on crafted predictions, against scores computed by hand."""

import json
import subprocess
import sys

import pytest

from bertgpt_jax.evaluation import squad


def _data(qas):
    return [{"title": "t", "paragraphs": [{"context": "c", "qas": qas}]}]


def test_normalisation_corner_cases():
    assert squad.normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert squad.normalize_answer("an apple, a pear and THE plum.") == "apple pear and plum"
    assert squad.normalize_answer("theatre") == "theatre"  # articles only as whole words
    assert squad.normalize_answer("  \t\n ") == ""
    assert squad.exact_match("the Beatles", "Beatles.") == 1.0
    assert squad.f1_score("", "") == 1.0 and squad.f1_score("a", "") == 1.0  # "a" normalises to empty
    assert squad.f1_score("x", "") == 0.0 and squad.f1_score("", "x") == 0.0
    # pred "new york city" vs gold "york": precision 1/3, recall 1 -> F1 = 2*(1/3)/(4/3) = 0.5
    assert squad.f1_score("New York City", "the York") == pytest.approx(0.5)
    # repeated tokens count by multiplicity: pred [x, b, b], gold [b, c] -> common 1: P 1/3, R 1/2
    assert squad.f1_score("x b b", "b c") == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))


def test_v1_scores_by_hand():
    data = _data([{"id": "q1", "answers": [{"text": "Denver Broncos"}, {"text": "the Broncos"}]},
                  {"id": "q2", "answers": [{"text": "Santa Clara, California"}]},
                  {"id": "q3", "answers": [{"text": "1990"}]},
                  {"id": "q4", "answers": [{"text": "gold"}]}])
    preds = {"q1": "Broncos", "q2": "Santa Clara", "q3": "in 1990"}  # q4 missing: scores 0
    # q1: EM 1 (matches "the Broncos"), F1 1. q2: EM 0; F1 P=1 R=2/3 -> 0.8. q3: EM 0; F1 P=1/2 R=1 -> 2/3.
    out = squad.evaluate_v1(data, preds)
    assert out["exact_match"] == pytest.approx(100 * 1 / 4)
    assert out["f1"] == pytest.approx(100 * (1 + 0.8 + 2 / 3 + 0) / 4)


def test_v2_scores_thresholds_and_cli(tmp_path):
    data = _data([{"id": "a1", "answers": [{"text": "blue sky"}], "is_impossible": False},
                  {"id": "a2", "answers": [{"text": "red"}], "is_impossible": False},
                  {"id": "n1", "answers": [], "is_impossible": True},
                  {"id": "n2", "answers": [], "is_impossible": True}])
    preds = {"a1": "sky", "a2": "red", "n1": "", "n2": "green"}
    odds = {"a1": 0.5, "a2": -2.0, "n1": 3.0, "n2": -1.0}
    out = squad.evaluate_v2(data, preds, odds)  # threshold 1.0: n1 (odds 3 > 1) predicted no-answer
    # exact: a1 0, a2 1, n1 1, n2 0 -> 50; f1: a1 P=1 R=1/2 -> 2/3, a2 1, n1 1, n2 0
    assert out["exact"] == pytest.approx(50.0) and out["total"] == 4
    assert out["f1"] == pytest.approx(100 * (2 / 3 + 1 + 1 + 0) / 4)
    assert out["HasAns_exact"] == pytest.approx(50.0) and out["HasAns_f1"] == pytest.approx(100 * (5 / 3) / 2)
    assert out["NoAns_exact"] == pytest.approx(50.0) and out["NoAns_total"] == 2
    # Sweep in order of odds: a2 (+1), n2 (-1), a1 (+0 exact / +2/3 f1), n1 (0); start at 2 (no-answer count).
    # exact: 2 -> 3 (best, thresh -2.0) -> 2 -> 2 -> 2; f1: 3 -> 2 -> 2.667 -> 2.667: best 3 at -2.0
    assert out["best_exact"] == pytest.approx(75.0) and out["best_exact_thresh"] == -2.0
    assert out["best_f1"] == pytest.approx(75.0) and out["best_f1_thresh"] == -2.0
    plain = squad.evaluate_v2(data, preds)  # no odds: every prediction as given, no threshold search
    assert plain["exact"] == pytest.approx(50.0) and "best_exact" not in plain
    for name, obj in (("d.json", {"version": "v2.0", "data": data}), ("p.json", preds), ("o.json", odds)):
        (tmp_path / name).write_text(json.dumps(obj))
    cli = subprocess.run([sys.executable, "-m", "bertgpt_jax.evaluation.squad", str(tmp_path / "d.json"),
                          str(tmp_path / "p.json"), "--null_odds", str(tmp_path / "o.json")],
                         capture_output=True, text=True, check=True)
    assert json.loads(cli.stdout)["best_exact"] == pytest.approx(75.0)
