"""Token classification: entity-level scores against seqeval, the CoNLL reader and first-piece labels, predictions
written back in CoNLL format, and run_ner learning to tag real text."""

from __future__ import annotations

import json
import keyword
import os
import random
import string

import numpy as np
import pytest

from bertgpt_jax.data import conll
from bertgpt_jax.evaluation import tagging

from tests.test_classifier import _documents, _truncated_minilm


@pytest.mark.parametrize("scheme", ["BIO", "IOB1", "IOBES"])
def test_entity_scores_match_seqeval(scheme):
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    prefixes = {"BIO": "BI", "IOB1": "BI", "IOBES": "BIES"}[scheme]
    tags = ["O"] + [f"{p}-{t}" for p in prefixes for t in ("PER", "LOC", "ORG")]
    rng = random.Random(scheme)
    for trial in range(20):
        true = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(6)]
        pred = [[t if rng.random() < 0.7 else rng.choice(tags) for t in s] for s in true]
        ours = tagging.entity_scores(true, pred)
        assert ours["precision"] == pytest.approx(precision_score(true, pred), abs=1e-12), (true, pred)
        assert ours["recall"] == pytest.approx(recall_score(true, pred), abs=1e-12)
        assert ours["f1"] == pytest.approx(f1_score(true, pred), abs=1e-12)
        assert ours["accuracy"] == pytest.approx(accuracy_score(true, pred), abs=1e-12)


def test_entities_by_hand():
    assert tagging.get_entities(["B-PER", "I-PER", "O", "B-LOC", "I-PER"]) == [("PER", 0, 1), ("LOC", 3, 3),
                                                                             ("PER", 4, 4)]
    assert tagging.get_entities(["I-ORG", "I-ORG", "B-ORG"]) == [("ORG", 0, 1), ("ORG", 2, 2)]  # IOB1
    assert tagging.get_entities(["S-PER", "B-LOC", "E-LOC"]) == [("PER", 0, 0), ("LOC", 1, 2)]  # IOBES


def test_conll_reader_first_piece_labels_and_round_trip(tmp_path, minilm_dir):
    from bertgpt_jax import tokenization

    tok = tokenization.from_file(os.path.join(minilm_dir, "vocab.txt"), do_lower_case=True)
    path = tmp_path / "train.txt"
    path.write_text("-DOCSTART- -X- -X- O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\nStrasbourgian JJ B-NP B-MISC\n"
                    "\nPeter NNP B-NP B-PER\nBlackburn NNP I-NP I-PER\n")
    sentences = conll.read_conll(str(path))
    assert [s.words for s in sentences] == [["EU", "rejects", "Strasbourgian"], ["Peter", "Blackburn"]]
    labels = conll.label_list(sentences)
    assert labels == ["B-MISC", "B-ORG", "B-PER", "I-PER", "O"]
    f = conll.convert_sentences_to_features(sentences, labels, 16, tok, str(path))
    pieces = [tok.encode(w) for w in sentences[0].words]
    assert len(pieces[2]) > 1  # a word of several pieces: only its first carries the tag
    firsts = [1, 1 + len(pieces[0]), 1 + len(pieces[0]) + len(pieces[1])]
    assert np.nonzero(f["label_weights"][0])[0].tolist() == firsts
    assert [labels[i] for i in f["label_ids"][0, firsts]] == ["B-ORG", "O", "B-MISC"]
    assert f["word_index"][0, firsts].tolist() == [0, 1, 2] and f["label_weights"][0].sum() == 3
    # Logits that pick each word's gold tag at its first piece give the gold tags back.
    logits = np.zeros(f["label_ids"].shape + (len(labels),), np.float32)
    np.put_along_axis(logits, f["label_ids"][..., None], 1.0, axis=-1)
    pred = conll.predicted_tags(sentences, f, logits, labels)
    assert pred == [s.tags for s in sentences]
    conll.write_conll(str(tmp_path / "out.txt"), sentences, pred)
    assert (tmp_path / "out.txt").read_text().splitlines()[:2] == ["EU B-ORG B-ORG", "rejects O O"]
    cut = conll.convert_sentences_to_features(sentences, labels, 4, tok, str(path))  # room for 2 pieces
    assert conll.predicted_tags(sentences, cut, logits[:, :4], labels)[0][2] == "O"  # cut words: O
    bad = tmp_path / "dev.txt"
    bad.write_text("Paris NNP B-NP B-CITY\n")
    with pytest.raises(ValueError, match=r"dev.txt:1: tag 'B-CITY' is not one of the training tags"):
        conll.convert_sentences_to_features(conll.read_conll(str(bad)), labels, 16, tok, str(bad))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(ValueError, match="empty"):
        conll.read_conll(str(tmp_path / "empty.txt"))


def _keyword_conll(path: str, sentences: list[str]) -> None:
    """Real sentences, each word tagged B-KW when it is a Python keyword (punctuation stripped), else O."""
    kw = set(keyword.kwlist)
    with open(path, "w", encoding="utf-8") as f:
        for s in sentences:
            for w in s.split()[:30]:
                f.write(f"{w} {'B-KW' if w.strip(string.punctuation) in kw else 'O'}\n")
            f.write("\n")


def test_run_ner_learns_to_tag_real_text(minilm_dir, tmp_path, monkeypatch):
    from bertgpt_jax import run_ner
    from bertgpt_jax.tasks.tagging import TokenClassification
    from bertgpt_jax.training import TrainConfig

    predicted = []
    predict = TokenClassification.predict
    monkeypatch.setattr(TokenClassification, "predict",
                        lambda self, params, features, *a: predicted.append(len(features["input_ids"]))
                        or predict(self, params, features, *a))

    kw = set(keyword.kwlist)
    sents = [s for d in _documents() for s in d
             if 6 <= len(s.split()) <= 30 and any(w.strip(string.punctuation) in kw for w in s.split())]
    rng = random.Random(0)
    rng.shuffle(sents)
    data = tmp_path / "data"
    data.mkdir()
    _keyword_conll(str(data / "train.txt"), sents[:160])
    _keyword_conll(str(data / "dev.txt"), sents[160:200])
    (data / "test.txt").write_text("\n".join(sents[200].split()[:30]) + "\n")
    init = _truncated_minilm(minilm_dir, str(tmp_path / "minilm3"), layers=3)
    out = str(tmp_path / "out")
    train = TrainConfig(output_dir=out, model=os.path.join(init, "config.json"), init_checkpoint=init,
                        train_batch_size=16, eval_batch_size=8, learning_rate=5e-4, progress_bar=False,
                        tensorboard=False, plot=False, kernels="xla", log_every_steps=10, eval_every_steps=10,
                        best_metric="eval/f1", best_mode="max")
    metrics = run_ner.run(train, run_ner.TaggingConfig(data_dir=str(data), max_seq_length=48, do_train=True,
                                                       do_eval=True, do_predict=True, num_train_epochs=2.0))
    print("keyword tagging:", metrics)
    assert metrics["global_step"] == 20
    # Predicting O everywhere scores entity F1 0; measured: F1 0.91 (P 0.92, R 0.89), word accuracy 0.97.
    assert metrics["eval_f1"] >= 0.6, metrics
    # --eval_every_steps=10: entity F1 on all of dev.txt at steps 10 and 20; the closing figures are step 20's
    # evaluation (dev predicted twice, test once: no third pass over dev), the best step's weights kept.
    evals = {r["step"]: r for r in map(json.loads, open(os.path.join(out, "metrics.jsonl"))) if "eval/f1" in r}
    assert sorted(evals) == [10, 20]
    for k in ("f1", "precision", "recall", "accuracy", "loss"):
        assert evals[20][f"eval/{k}"] == pytest.approx(metrics[f"eval_{k}"], abs=1e-12)
    assert predicted == [40, 40, 1]
    (kept,) = os.listdir(os.path.join(out, "best_checkpoint"))
    assert evals[int(kept)]["eval/f1"] == max(evals[10]["eval/f1"], evals[20]["eval/f1"])
    lines = open(os.path.join(out, "eval_predictions.txt")).read().split("\n\n")
    assert len([s for s in lines if s.strip()]) == 40
    assert all(len(line.split()) == 3 for line in lines[0].splitlines())
    test_lines = open(os.path.join(out, "test_predictions.txt")).read().split()
    assert len(test_lines) == 2 * len(sents[200].split()[:30])
