"""SQuAD as the original run_squad.py does it: reading and alignment, windows and the max-context rule,
n-best post-processing and get_final_text, v2.0 null answers, bad input, and run_squad learning to find
a span in real text."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest

from bertgpt_jax.data import squad

from tests.test_classifier import _documents, _truncated_minilm


@pytest.fixture(scope="module")
def tok(minilm_dir):
    from bertgpt_jax import tokenization

    return tokenization.from_file(os.path.join(minilm_dir, "vocab.txt"), do_lower_case=True)


def _squad_file(path, paragraphs, version="1.1"):
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"version": version, "data": [{"title": "t", "paragraphs": paragraphs}]}, f)
    return str(path)


def test_reading_aligns_answers_to_whitespace_words(tmp_path):
    ctx = "The  Denver Broncos\tbeat the\nCarolina Panthers, 24-10."
    path = _squad_file(tmp_path / "a.json", [{"context": ctx, "qas": [
        {"id": "q1", "question": "Who won?", "answers": [{"text": "Denver Broncos", "answer_start": 5}]},
        {"id": "q2", "question": "Score?", "answers": [{"text": "24-10", "answer_start": ctx.index("24")}]}]}])
    q1, q2 = squad.read_squad_examples(path, is_training=True)
    assert q1.doc_tokens == ["The", "Denver", "Broncos", "beat", "the", "Carolina", "Panthers,", "24-10."]
    assert (q1.start_position, q1.end_position) == (1, 2)
    assert (q2.start_position, q2.end_position) == (7, 7)  # the word "24-10." holds the answer


def test_windows_step_by_doc_stride_and_max_context():
    assert squad.doc_spans(10, 4, 3) == [(0, 4), (3, 4), (6, 4)]  # starts doc_stride apart, last reaches the end
    assert squad.doc_spans(10, 4, 8) == [(0, 4), (4, 4), (8, 2)]  # never a step past the window
    spans = [(0, 4), (3, 4), (6, 4)]
    # token 4: window 0 lacks it; window 1 (3..6): min(1, 2) + 0.04; window 2 lacks it -> window 1
    assert [squad._check_is_max_context(spans, i, 4) for i in range(3)] == [False, True, False]
    # token 3: window 0 min(3, 0), window 1 min(0, 3): a tie, the first window keeps it
    assert [squad._check_is_max_context(spans, i, 3) for i in range(3)] == [True, False, False]
    # token 6: window 1 min(3, 0) + 0.04, window 2 min(0, 3) + 0.04: tie -> window 1
    assert [squad._check_is_max_context(spans, i, 6) for i in range(3)] == [False, True, False]


def test_features_point_at_the_answer_in_every_window(tmp_path, tok):
    words = [f"w{i}" for i in range(40)]
    ctx = " ".join(words[:25] + ["Steve", "Smith's", "bat."] + words[25:])
    path = _squad_file(tmp_path / "b.json", [{"context": ctx, "qas": [
        {"id": "q", "question": "Whose bat?", "answers": [{"text": "Steve Smith", "answer_start": ctx.index("Steve")}]}]}])
    examples = squad.read_squad_examples(path, is_training=True)
    feats = squad.convert_examples_to_features(examples, tok, max_seq_length=32, doc_stride=10, max_query_length=8,
                                               is_training=True)
    n = len(feats.example_index)
    assert n > 3
    hits = 0
    for i in range(n):
        s, e = feats.arrays["start_positions"][i], feats.arrays["end_positions"][i]
        if s == 0:
            continue
        hits += 1
        # the span is tightened to the answer's tokens: "steve smith", not "smith's"
        assert tok.decode(feats.arrays["input_ids"][i, s:e + 1].tolist()) == "steve smith"
        assert feats.arrays["segment_ids"][i, s] == 1
    assert hits >= 1
    # every context token is the max-context token of exactly one window
    owners = {}
    for i in range(n):
        for pos, is_max in feats.token_is_max_context[i].items():
            if is_max:
                key = (feats.token_to_orig_map[i][pos], feats.arrays["input_ids"][i, pos])
                owners[key] = owners.get(key, 0) + 1
    assert set(owners.values()) == {1}


def test_get_final_text_maps_back_to_the_original():
    assert squad.get_final_text("steve smith", "Steve Smith's", True) == "Steve Smith"
    assert squad.get_final_text("24 - 10", "24-10.", True) == "24-10"
    assert squad.get_final_text("cafe", "Café!", True) == "Café"
    assert squad.get_final_text("zzz", "Steve Smith's", True) == "Steve Smith's"  # no alignment: the words


def test_write_predictions_nbest_and_v2_null(tmp_path, tok):
    ctx = "Steve Smith's bat was made in Sydney, Australia."
    path = _squad_file(tmp_path / "c.json", [{"context": ctx, "qas": [
        {"id": "q", "question": "Where?", "answers": [{"text": "Sydney", "answer_start": ctx.index("Sydney")}]}]}])
    examples = squad.read_squad_examples(path, is_training=False)
    feats = squad.convert_examples_to_features(examples, tok, max_seq_length=32, doc_stride=16, max_query_length=8,
                                               is_training=False)
    ids = feats.arrays["input_ids"][0].tolist()
    sydney = ids.index(tok.encode("sydney")[0])
    start, end = np.zeros((1, 32), np.float32), np.zeros((1, 32), np.float32)
    start[0, sydney], end[0, sydney] = 5.0, 5.0          # best: "Sydney"
    end[0, sydney + 2] = 4.0                              # second: "Sydney, Australia"
    start[0, 0], end[0, 0] = 3.0, 3.0                     # null score 6
    kw = dict(n_best_size=3, max_answer_length=5, id_to_token=tok.id_to_token)
    preds, nbest, odds = squad.write_predictions(examples, feats, start, end, **kw)
    assert preds == {"q": "Sydney"} and odds == {}
    # Top-3 starts are Sydney, [CLS] and a question token (the last two are not context: skipped); top-3 ends
    # Sydney, Australia and [CLS]: two spans.
    assert [e["text"] for e in nbest["q"]] == ["Sydney", "Sydney, Australia"]
    assert abs(sum(e["probability"] for e in nbest["q"]) - 1) < 1e-9
    preds, nbest, odds = squad.write_predictions(examples, feats, start, end, version_2_with_negative=True, **kw)
    assert odds["q"] == pytest.approx(6.0 - 10.0) and preds["q"] == "Sydney"
    assert [e["text"] for e in nbest["q"]] == ["Sydney", "Sydney, Australia", ""]  # null scored 3 + 3
    start[0, 0] = 9.0  # null 12 > 10: no answer
    preds, _, odds = squad.write_predictions(examples, feats, start, end, version_2_with_negative=True, **kw)
    assert odds["q"] == pytest.approx(2.0) and preds["q"] == ""
    preds, _, _ = squad.write_predictions(examples, feats, start, end, version_2_with_negative=True,
                                          null_score_diff_threshold=2.5, **kw)
    assert preds["q"] == "Sydney"


def test_bad_squad_input(tmp_path, tok):
    two = _squad_file(tmp_path / "d.json", [{"context": "a b c", "qas": [
        {"id": "q7", "question": "?", "answers": [{"text": "a", "answer_start": 0}, {"text": "b", "answer_start": 2}]}]}])
    with pytest.raises(ValueError, match="training question q7 has 2 answers; each must have exactly one"):
        squad.read_squad_examples(two, is_training=True)
    assert len(squad.read_squad_examples(two, is_training=False)) == 1  # fine for prediction
    bad = _squad_file(tmp_path / "e.json", [{"context": "alpha beta gamma", "qas": [
        {"id": "q8", "question": "?", "answers": [{"text": "delta", "answer_start": 6}]}]}])
    with pytest.raises(ValueError, match="question q8: answer 'delta' does not match the context at answer_start 6"):
        squad.read_squad_examples(bad, is_training=True)
    empty = _squad_file(tmp_path / "f.json", [])
    with pytest.raises(ValueError, match="holds no questions"):
        squad.read_squad_examples(empty, is_training=False)
    examples = squad.read_squad_examples(two, is_training=False)
    with pytest.raises(ValueError, match="max_seq_length 67 must exceed max_query_length 64 \\+ 3"):
        squad.convert_examples_to_features(examples, tok, max_seq_length=67, doc_stride=128, max_query_length=64,
                                           is_training=False)


def _find_the_word(path: str, n: int, seed: int) -> None:
    """Questions over real text: the context is three consecutive sentences (at most 45 words) of the embedded corpus, the question
    a word that occurs once in it, the answer that word's occurrence."""
    rng = random.Random(seed)
    docs = [d for d in _documents() if len(d) >= 8]
    sentences = 3
    paragraphs = []
    while len(paragraphs) < n:
        doc = rng.choice(docs)
        i = rng.randrange(len(doc) - sentences)
        ctx = " ".join(doc[i:i + sentences])
        words = ctx.split()
        if len(words) > 45:
            continue
        once = [w for w in words if w.isalpha() and len(w) >= 5 and words.count(w) == 1]
        if not once:
            continue
        w = rng.choice(once)
        start = (" " + ctx + " ").index(" " + w + " ")
        paragraphs.append({"context": ctx, "qas": [{"id": f"q{len(paragraphs)}", "question": w,
                                                    "answers": [{"text": w, "answer_start": start}]}]})
    _squad_file(path, paragraphs)


def test_run_squad_learns_to_find_the_span(minilm_dir, tmp_path):
    from bertgpt_jax import run_squad
    from bertgpt_jax.training import TrainConfig

    init = _truncated_minilm(minilm_dir, str(tmp_path / "minilm3"), layers=3)
    _find_the_word(tmp_path / "train.json", 160, 0)
    _find_the_word(tmp_path / "dev.json", 40, 1)
    out = str(tmp_path / "out")
    train = TrainConfig(output_dir=out, model=os.path.join(init, "config.json"), init_checkpoint=init,
                        train_batch_size=16, learning_rate=5e-4, progress_bar=False, tensorboard=False, plot=False,
                        kernels="xla", log_every_steps=10, eval_every_steps=10, best_metric="eval/f1",
                        best_mode="max")
    sq = run_squad.SquadConfig(train_file=str(tmp_path / "train.json"), predict_file=str(tmp_path / "dev.json"),
                               do_train=True, do_predict=True, max_seq_length=64, doc_stride=32,
                               max_query_length=8, num_train_epochs=2.0)
    results = run_squad.run(train, sq)
    print("find-the-word:", results)
    assert results["global_step"] == 20
    # Chance is about one word in sixty (F1 ~2); measured EM 80.0, F1 81.3 on the 40 held-out questions.
    assert results["exact_match"] >= 50.0 and results["f1"] >= 50.0, results
    preds = json.load(open(os.path.join(out, "predictions.json")))
    nbest = json.load(open(os.path.join(out, "nbest_predictions.json")))
    assert len(preds) == 40 and set(nbest) == set(preds) and len(nbest["q0"]) <= 20
    # --eval_every_steps=10: the official EM/F1 on the predict file during training; the closing figures are
    # the engine's evaluation of step 20, and the best step's weights are kept.
    evals = {r["step"]: r for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if "eval/f1" in r}
    assert sorted(evals) == [10, 20]
    assert (evals[20]["eval/exact_match"], evals[20]["eval/f1"]) == (results["exact_match"], results["f1"])
    (kept,) = os.listdir(os.path.join(out, "best_checkpoint"))
    assert evals[int(kept)]["eval/f1"] == max(evals[10]["eval/f1"], evals[20]["eval/f1"])


def test_basic_tokenize_matches_the_bert_normalizer_and_pre_tokenizer():
    from tokenizers import normalizers, pre_tokenizers

    norm = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    for text in ["Steve Smith's bat, (1990)!", "Héllo\u00a0Wörld—naïve café", "中文字符 and ASCII", "a\x0bb\x07c\td",
                 "tabs\tand\nnewlines\r\n", "$5.00 & 50% off: e.g. U.S.A.", "\u202fnarrow nbsp\u3000ideographic"]:
        expected = [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))]
        assert squad.basic_tokenize(text, True) == expected, text
