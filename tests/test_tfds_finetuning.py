"""TFDS as the fine-tuning data source (``--tfds_name``), against a stand-in ``tensorflow_datasets`` module with
the real API's contract (checked by hand against tensorflow-datasets 4.9.10 on array_record datasets built
locally): ``tfds.builder(name, data_dir=)`` with ``is_prepared()``, ``data_dir``, ``info.splits``,
``info.features[f].names`` (``.feature.names`` for a Sequence of ClassLabel); ``tfds.data_source(name,
split=, data_dir=, download=)`` a sequence of dicts whose Text features are bytes and ClassLabels ints. The
package itself is an optional extra (~160 MB with pyarrow), not in the test install."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from bertgpt_jax.data import glue, squad, tfds_source


class _Names:
    def __init__(self, names):
        self.names = list(names)


class _Sequence:
    def __init__(self, feature):
        self.feature = feature


class _Builder:
    def __init__(self, name, data_dir, spec):
        self.name, self.data_dir = name, f"{data_dir or '/root/tensorflow_datasets'}/{name}/1.0.0"
        self._prepared = spec is not None
        splits, features = spec or ({}, {})
        self.info = types.SimpleNamespace(splits={s: types.SimpleNamespace(name=s) for s in splits},
                                          features=features)
        self.records = splits

    def is_prepared(self):
        return self._prepared


def _stand_in(monkeypatch, datasets: dict, calls: list | None = None):
    """``datasets``: name -> (splits {split: [records]}, features) or None (registered but not prepared)."""

    def builder(name, data_dir=None):
        if name not in datasets:
            raise ValueError(f"Dataset {name} not found.\nAvailable datasets:\n\t- mnist")
        return _Builder(name, data_dir, datasets[name])

    def data_source(name, split, data_dir=None, download=True):
        assert download is False, "the reader must never download"
        if calls is not None:
            calls.append((name, split, data_dir))
        b = builder(name, data_dir)
        src = list(b.records[split])
        return src

    monkeypatch.setitem(sys.modules, "tensorflow_datasets",
                        types.SimpleNamespace(builder=builder, data_source=data_source))


MNLI_NAMES = ["entailment", "neutral", "contradiction"]  # TFDS's order; the original's is c, e, n


def _mnli():
    def rec(p, h, label, idx):
        return {"premise": p.encode(), "hypothesis": h.encode(), "label": label, "idx": idx}
    return ({"train": [rec("A dog runs.", "An animal moves.", 0, 0), rec("Zoë sings.", "Nobody sings.", 2, 1)],
             "validation_matched": [rec("It rains.", "It is wet.", 1, 0)],
             "validation_mismatched": [rec("Sun.", "Moon.", 2, 0)],
             "test_matched": [rec("Q.", "R.", -1, 7)]},
            {"premise": object(), "hypothesis": object(), "label": _Names(MNLI_NAMES), "idx": object()})


def test_glue_labels_map_by_name_and_splits_by_role(monkeypatch):
    calls = []
    _stand_in(monkeypatch, {"glue/mnli": _mnli()}, calls)
    mnli = glue.get_processor("mnli")
    train, split = tfds_source.glue_examples("glue/mnli", glue.TRAIN, mnli, "/data",
                                             candidates=tfds_source.role_candidates("mnli", glue.TRAIN))
    assert split == "train"
    # TFDS label 0 is entailment, 2 contradiction: by name, not by the original's positions (c=0, e=1, n=2)
    assert train == [glue.InputExample("train-0", "A dog runs.", "An animal moves.", "entailment"),
                     glue.InputExample("train-1", "Zoë sings.", "Nobody sings.", "contradiction")]
    feats = glue.convert_examples_to_features(train, mnli.get_labels(), 16, _CharTokenizer())
    assert feats["label_ids"].tolist() == [1, 0]  # entailment, contradiction in the original's label order

    dev, split = tfds_source.glue_examples("glue/mnli", glue.DEV, mnli, "/data",
                                           candidates=tfds_source.role_candidates("mnli", glue.DEV))
    assert split == "validation_matched" and dev[0].label == "neutral"
    mm, split = tfds_source.glue_examples("glue/mnli", glue.DEV, glue.get_processor("mnli-mm"), "/data",
                                          candidates=tfds_source.role_candidates("mnli-mm", glue.DEV))
    assert split == "validation_mismatched" and mm[0].label == "contradiction"
    test, split = tfds_source.glue_examples("glue/mnli", glue.TEST, mnli, "/data",
                                            candidates=tfds_source.role_candidates("mnli", glue.TEST))
    assert split == "test_matched" and test == [glue.InputExample("test-7", "Q.", "R.", None)]  # -1: unlabelled
    assert calls[0] == ("glue/mnli", "train", "/data")
    assert tfds_source.has_mismatched("glue/mnli", "/data")
    assert not tfds_source.has_mismatched("glue/mnli", "/data", {"dev": "validation_matched"})


def test_glue_word_labels_become_the_original_0_1_and_sts_b_a_float(monkeypatch):
    mrpc = ({"train": [{"sentence1": b"He said.", "sentence2": b"He did say.", "label": 1, "idx": 3},
                       {"sentence1": b"A cat.", "sentence2": b"A dog.", "label": 0, "idx": 4}]},
            {"sentence1": object(), "sentence2": object(), "label": _Names(["not_equivalent", "equivalent"])})
    cola = ({"validation": [{"sentence": b"Bill whistled.", "label": 0, "idx": 0}]},
            {"sentence": object(), "label": _Names(["unacceptable", "acceptable"])})
    stsb = ({"train": [{"sentence1": b"A plane.", "sentence2": b"An air plane.", "label": np.float32(4.5), "idx": 0}],
             "test": [{"sentence1": b"X.", "sentence2": b"Y.", "label": np.float32(-1.0), "idx": 0}]},
            {"sentence1": object(), "sentence2": object(), "label": object()})
    _stand_in(monkeypatch, {"glue/mrpc": mrpc, "glue/cola": cola, "glue/stsb": stsb})
    ex, _ = tfds_source.glue_examples("glue/mrpc", glue.TRAIN, glue.get_processor("mrpc"))
    assert [(e.guid, e.text_a, e.text_b, e.label) for e in ex] == [("train-3", "He said.", "He did say.", "1"),
                                                                  ("train-4", "A cat.", "A dog.", "0")]
    ex, split = tfds_source.glue_examples("glue/cola", glue.DEV, glue.get_processor("cola"))
    assert split == "validation" and (ex[0].text_a, ex[0].text_b, ex[0].label) == ("Bill whistled.", None, "0")
    ex, _ = tfds_source.glue_examples("glue/stsb", glue.TRAIN, glue.get_processor("sts-b"))
    assert ex[0].label == 4.5 and isinstance(ex[0].label, float)
    ex, _ = tfds_source.glue_examples("glue/stsb", glue.TEST, glue.get_processor("sts-b"))
    assert ex[0].label is None


def test_generic_task_names_its_features_and_takes_the_class_names(monkeypatch):
    reviews = ({"train": [{"text": b"Great film.", "label": 1}, {"text": b"Dull.", "label": 0}]},
               {"text": object(), "label": _Names(["neg", "pos"])})
    _stand_in(monkeypatch, {"imdb_reviews": reviews})
    b = tfds_source.builder("imdb_reviews")
    labels = tfds_source.class_names(b, "label")
    assert labels == ["neg", "pos"]
    proc = glue.GenericProcessor(labels=labels)
    ex, _ = tfds_source.glue_examples("imdb_reviews", glue.TRAIN, proc, text_a="text")
    assert [(e.text_a, e.label) for e in ex] == [("Great film.", "pos"), ("Dull.", "neg")]
    with pytest.raises(ValueError, match=r"label 'pos' is not one of .*\['neg', 'meh'\]"):
        tfds_source.glue_examples("imdb_reviews", glue.TRAIN, glue.GenericProcessor(labels=["neg", "meh"]),
                                  text_a="text")
    with pytest.raises(ValueError, match=r"not a GLUE config.*--text_column"):
        tfds_source.glue_examples("imdb_reviews", glue.TRAIN, proc)
    with pytest.raises(ValueError, match=r"no feature 'review' \(its features: text, label\)"):
        tfds_source.glue_examples("imdb_reviews", glue.TRAIN, proc, text_a="review")


def test_bad_input_names_what_is_wrong(monkeypatch):
    _stand_in(monkeypatch, {"glue/mnli": _mnli(), "glue/rte": None})
    mnli = glue.get_processor("mnli")
    with pytest.raises(FileNotFoundError, match=r"glue/rte is not prepared in /d/glue/rte/1.0.0.*"
                                                r"`tfds build glue/rte --data_dir=/d --file_format=array_record`"):
        tfds_source.glue_examples("glue/rte", glue.TRAIN, glue.get_processor("rte"), "/d")
    with pytest.raises(ValueError, match=r"no such dataset.*h5py.*bertgpt_jax\[tfds\]"):
        tfds_source.glue_examples("glue/mrcp", glue.TRAIN, glue.get_processor("mrpc"))
    with pytest.raises(ValueError, match=r"has no split for dev \(tried validation, dev\); its splits: train, "
                                         r"validation_matched"):
        tfds_source.glue_examples("glue/mnli", glue.DEV, mnli)  # without MNLI's candidates
    with pytest.raises(ValueError, match=r"no split 'valid' \(for dev\)"):
        tfds_source.glue_examples("glue/mnli", glue.DEV, mnli, overrides=tfds_source.parse_splits("dev=valid"))
    with pytest.raises(ValueError, match=r"ROLE=SPLIT with ROLE one of train, dev, test \(got 'eval=x'\)"):
        tfds_source.parse_splits("eval=x")
    # a label set that does not know TFDS's name: the task and the dataset disagree
    with pytest.raises(ValueError, match=r"record 0: label 'entailment' is not one of mrpc's labels \['0', '1'\]"):
        tfds_source.glue_examples("glue/mnli", glue.TRAIN, glue.get_processor("mrpc"))
    with pytest.raises(ValueError, match=r"record 0: no label .* the dev split needs labels"):
        tfds_source.glue_examples("glue/mnli", glue.DEV, mnli, overrides={"dev": "test_matched"})
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # not installed
    with pytest.raises(ImportError, match=r"pip install 'bertgpt_jax\[tfds\]'"):
        tfds_source.builder("glue/mnli")


def test_squad_records_regroup_into_the_squad_json_the_reader_takes(monkeypatch):
    ctx = b"Paris is the capital of France."
    records = [{"id": b"q1", "title": b"France", "context": ctx, "question": b"Capital?", "is_impossible": False,
                "answers": {"text": [b"Paris"], "answer_start": [np.int32(0)]}},
               {"id": b"q2", "title": b"France", "context": ctx, "question": b"Moon?", "is_impossible": True,
                "answers": {"text": [], "answer_start": []}},
               {"id": b"q3", "title": b"Other", "context": b"Rome is old.", "question": b"Old?",
                "is_impossible": False, "answers": {"text": [b"Rome"], "answer_start": [np.int32(0)]}}]
    _stand_in(monkeypatch, {"squad/v2.0": ({"train": records, "validation": records}, {})})
    data = tfds_source.squad_data("squad/v2.0", "train")
    assert [a["title"] for a in data] == ["France", "Other"]
    assert data[0]["paragraphs"] == [{"context": ctx.decode(), "qas": [
        {"id": "q1", "question": "Capital?", "answers": [{"text": "Paris", "answer_start": 0}], "is_impossible": False},
        {"id": "q2", "question": "Moon?", "answers": [], "is_impossible": True}]}]
    examples = squad.squad_examples(data, "tfds squad/v2.0 [train]", True, version_2_with_negative=True)
    assert [(e.qas_id, e.orig_answer_text, e.start_position, e.is_impossible) for e in examples] == [
        ("q1", "Paris", 0, False), ("q2", "", -1, True), ("q3", "Rome", 0, False)]
    with pytest.raises(ValueError, match=r"tfds squad/v2.0 \[train\]: training question q2 has 0 answers"):
        squad.squad_examples(data, "tfds squad/v2.0 [train]", True, version_2_with_negative=False)


def test_conll2003_tags_by_name_in_the_datasets_order(monkeypatch):
    names = ["O", "B-PER", "I-PER", "B-LOC"]
    recs = [{"tokens": [b"John", b"Smith", b"ran"], "ner": [np.int64(1), np.int64(2), np.int64(0)]},
            {"tokens": [], "ner": []},
            {"tokens": [b"Paris"], "ner": [np.int64(3)]}]
    _stand_in(monkeypatch, {"conll2003": ({"train": recs, "dev": recs[:1]},
                                          {"tokens": object(), "ner": _Sequence(_Names(names))})})
    sentences, labels = tfds_source.conll_sentences("conll2003", "train")
    assert labels == names
    assert [(s.words, s.tags, s.line) for s in sentences] == [(["John", "Smith", "ran"], ["B-PER", "I-PER", "O"], 0),
                                                             (["Paris"], ["B-LOC"], 2)]  # the empty record skipped
    dev, _ = tfds_source.conll_sentences("conll2003", "dev")  # conll2003 names its dev split "dev"
    assert dev[0].tags == ["B-PER", "I-PER", "O"]
    with pytest.raises(ValueError, match=r"has no split for test \(tried test\); its splits: train, dev"):
        tfds_source.conll_sentences("conll2003", "test")


class _CharTokenizer:
    """Enough of a tokenizer for convert_examples_to_features: one id per character."""

    cls_token_id, sep_token_id, pad_token_id = 1, 2, 0

    def encode_batch(self, texts):
        return [[3 + (ord(c) % 50) for c in t] for t in texts]


def test_the_clis_take_their_label_sets_from_the_tfds_dataset(monkeypatch, tmp_path):
    """--tfds_name through run_classifier and run_ner at --compile_only (aot stubbed: nothing compiled): the
    generic task's labels are the ClassLabel's names, run_ner's tags the dataset's; two sources are an error."""
    from bertgpt_jax import run_classifier, run_ner, run_squad
    from bertgpt_jax.training import TrainConfig, aot

    reviews = ({"train": [{"text": b"Great.", "label": 1}]}, {"text": object(), "label": _Names(["neg", "meh", "pos"])})
    conll = ({"train": [{"tokens": [b"Paris"], "ner": [np.int64(3)]}]},
             {"tokens": object(), "ner": _Sequence(_Names(["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]))})
    _stand_in(monkeypatch, {"imdb_reviews": reviews, "conll2003": conll})
    seen = []
    monkeypatch.setattr(aot, "compile_only", lambda cfg, task: seen.append(task) or {"stopped_by": "x"})
    train = TrainConfig(output_dir=str(tmp_path / "out"), model="bert-tiny", compile_only=True, topology="v4-8",
                        num_train_steps=10)
    run_classifier.run(train, run_classifier.ClassifierConfig(task_name="generic", tfds_name="imdb_reviews",
                                                              max_seq_length=32))
    run_ner.run(train, run_ner.TaggingConfig(tfds_name="conll2003", max_seq_length=32))
    assert [t.num_labels for t in seen] == [3, 5]
    with pytest.raises(ValueError, match="give one source of data"):
        run_classifier.run(train, run_classifier.ClassifierConfig(task_name="mrpc", tfds_name="glue/mrpc",
                                                                  data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="give one source of data"):
        run_ner.run(train, run_ner.TaggingConfig(max_seq_length=32))
    with pytest.raises(ValueError, match="give one source of data"):
        run_squad.run(train, run_squad.SquadConfig(tfds_name="squad/v1.1", train_file="/x.json"))


def test_xnli_reads_the_processors_language_from_the_multilingual_features(monkeypatch):
    """TFDS's xnli: the premise a Translation (a text per language), the hypothesis a TranslationVariableLanguages
    (parallel language / translation lists), labels entailment, neutral, contradiction by name."""
    def rec(premise, hypothesis, label):
        langs = sorted(hypothesis)
        return {"premise": {k.encode(): v.encode() for k, v in premise.items()},
                "hypothesis": {"language": np.array([x.encode() for x in langs], object),
                               "translation": np.array([hypothesis[x].encode() for x in langs], object)},
                "label": label}
    xnli = ({"validation": [rec({"en": "He left.", "zh": "他走了。", "de": "Er ging."},
                                {"de": "Er blieb.", "en": "He stayed.", "zh": "他留下了。"}, 2),
                            rec({"en": "It rains.", "zh": "下雨了。"}, {"en": "It is wet.", "zh": "地湿了。"}, 0)],
             "test": [rec({"en": "A.", "fr": "Un."}, {"en": "B.", "fr": "Deux."}, 1)]},
            {"premise": object(), "hypothesis": object(), "label": _Names(MNLI_NAMES)})
    _stand_in(monkeypatch, {"xnli": xnli})
    dev, split = tfds_source.glue_examples("xnli", glue.DEV, glue.XnliProcessor("zh"))
    assert split == "validation"
    assert [(e.text_a, e.text_b, e.label) for e in dev] == [("他走了。", "他留下了。", "contradiction"),
                                                             ("下雨了。", "地湿了。", "entailment")]
    de, _ = tfds_source.glue_examples("xnli", glue.DEV, glue.XnliProcessor("en"))
    assert (de[0].text_a, de[0].text_b) == ("He left.", "He stayed.")
    with pytest.raises(ValueError, match=r"record 0: no 'zh' premise and hypothesis \(it has en, fr\)"):
        tfds_source.glue_examples("xnli", glue.TEST, glue.XnliProcessor("zh"))
    with pytest.raises(ValueError, match=r"xnli has no split for train \(tried train\)"):  # TFDS has none
        tfds_source.glue_examples("xnli", glue.TRAIN, glue.XnliProcessor("zh"))
