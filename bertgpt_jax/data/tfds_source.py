"""Fine-tuning examples from a TFDS dataset prepared locally (``--tfds_name=glue/mrpc``, ``xnli``, ``squad/v1.1``,
``conll2003``), read through ``tfds.data_source`` (array_record: random access, no TensorFlow at read time).

Records come back as dicts whose text features are ``bytes`` (decoded here as UTF-8) and whose ClassLabel
features are integers. Labels are mapped by their NAME (``info.features[...].names``), never by position:
TFDS orders some label sets differently from the original processors (MNLI: entailment, neutral,
contradiction against the original's contradiction, entailment, neutral) and names others in words where
the GLUE files have 0/1. A label of -1 (GLUE's test splits) means unlabelled.
"""

from __future__ import annotations

from typing import Sequence

from bertgpt_jax.data import glue
from bertgpt_jax.data.conll import Sentence

#: the run's roles, and the TFDS split names tried for each, in order (``--tfds_splits`` overrides them)
DEFAULT_SPLITS = {glue.TRAIN: ("train",), glue.DEV: ("validation", "dev"), glue.TEST: ("test",)}

#: glue/<config>: (text_a feature, text_b feature or None, {TFDS label name: the processor's label})
#: (names missing from the map are the processor's own: MNLI, QNLI and RTE use the same words)
GLUE_FEATURES = {
    "cola": ("sentence", None, {"unacceptable": "0", "acceptable": "1"}),
    "sst2": ("sentence", None, {"negative": "0", "positive": "1"}),
    "mrpc": ("sentence1", "sentence2", {"not_equivalent": "0", "equivalent": "1"}),
    "qqp": ("question1", "question2", {"not_duplicate": "0", "duplicate": "1"}),
    "stsb": ("sentence1", "sentence2", {}),
    "mnli": ("premise", "hypothesis", {}),
    "mnli_matched": ("premise", "hypothesis", {}),
    "mnli_mismatched": ("premise", "hypothesis", {}),
    "qnli": ("question", "sentence", {}),
    "rte": ("sentence1", "sentence2", {}),
    "wnli": ("sentence1", "sentence2", {"not_entailment": "0", "entailment": "1"}),
    "ax": ("premise", "hypothesis", {}),
}


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError("--tfds_name needs tensorflow-datasets: pip install 'bertgpt_jax[tfds]'") from e
    return tfds


def text(value) -> str:
    """A Text feature's value as str (array_record sources return UTF-8 bytes)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def builder(name: str, data_dir: str | None = None):
    """The prepared dataset's builder (its ``info``); errors say how to prepare it."""
    tfds = _tfds()
    try:
        b = tfds.builder(name, data_dir=data_dir)
    except ValueError as e:  # tfds' DatasetNotFoundError
        raise ValueError(f"--tfds_name {name}: TFDS has no such dataset ({str(e).splitlines()[0]}); text "
                         "datasets (glue, squad, conll2003) register only when h5py imports: "
                         "pip install 'bertgpt_jax[tfds]'") from None
    if not b.is_prepared():
        dir_flag = f" --data_dir={data_dir}" if data_dir else ""
        raise FileNotFoundError(f"--tfds_name {name} is not prepared in {b.data_dir}; prepare it first with "
                                f"`tfds build {name}{dir_flag} --file_format=array_record` (or point "
                                "--tfds_data_dir at the directory that holds it)")
    return b


def split_name(b, name: str, role: str, overrides: dict[str, str] | None = None,
               candidates: Sequence[str] | None = None) -> str:
    """The TFDS split that serves ``role`` (train/dev/test): the override, else the first candidate present."""
    available = list(b.info.splits)
    if overrides and role in overrides:
        split = overrides[role]
        if split not in available:
            raise ValueError(f"--tfds_splits: {name} has no split {split!r} (for {role}); its splits: "
                             f"{', '.join(available)}")
        return split
    wanted = tuple(candidates or DEFAULT_SPLITS[role])
    for split in wanted:
        if split in available:
            return split
    raise ValueError(f"--tfds_name {name} has no split for {role} (tried {', '.join(wanted)}); its splits: "
                     f"{', '.join(available)}; name one with --tfds_splits={role}=SPLIT")


def parse_splits(spec: str | None) -> dict[str, str]:
    """``--tfds_splits=dev=validation_mismatched,test=test_mismatched`` -> {role: split}."""
    out: dict[str, str] = {}
    for part in filter(None, (spec or "").split(",")):
        role, sep, split = part.partition("=")
        role = role.strip()
        if not sep or role not in DEFAULT_SPLITS or not split.strip():
            raise ValueError(f"--tfds_splits {spec!r}: each entry is ROLE=SPLIT with ROLE one of "
                             f"{', '.join(DEFAULT_SPLITS)} (got {part!r})")
        out[role] = split.strip()
    return out


def records(name: str, split: str, data_dir: str | None = None):
    """``tfds.data_source`` of one split (a sequence of dicts), never downloading."""
    tfds = _tfds()
    try:
        return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except NotImplementedError:  # prepared as TFRecord: no random access
        raise FileNotFoundError(f"--tfds_name {name} is prepared in {data_dir or 'TFDS default data dir'} as "
                                "TFRecord, which has no random access; rebuild it with `tfds build "
                                f"{name} --file_format=array_record` into another --tfds_data_dir") from None


def role_candidates(task_name: str, role: str) -> tuple[str, ...]:
    """The split names tried for ``role``: MNLI's dev and test come matched (``mnli``) or mismatched (``mnli-mm``)
    in glue/mnli, and as plain validation/test in glue/mnli_matched and glue/mnli_mismatched."""
    kind = {"mnli": "matched", "mnli-mm": "mismatched"}.get(task_name.lower())
    if kind and role == glue.DEV:
        return (f"validation_{kind}",) + DEFAULT_SPLITS[role]
    if kind and role == glue.TEST:
        return (f"test_{kind}",) + DEFAULT_SPLITS[role]
    return DEFAULT_SPLITS[role]


def has_mismatched(name: str, data_dir: str | None = None, overrides: dict[str, str] | None = None) -> bool:
    """Whether an MNLI run evaluates the mismatched dev split too (glue/mnli has it; an explicit dev split
    chosen with --tfds_splits is the one evaluated)."""
    return not (overrides and glue.DEV in overrides) and "validation_mismatched" in builder(name, data_dir).info.splits


def class_names(b, feature: str) -> list[str] | None:
    """The names of a ClassLabel feature (or of a Sequence of them); None for a number (regression)."""
    feat = b.info.features[feature]
    feat = getattr(feat, "feature", feat)  # Sequence(ClassLabel) -> its ClassLabel
    names = getattr(feat, "names", None)
    return list(names) if names else None


def _config(name: str) -> str:
    return name.split("/")[1].split(":")[0] if "/" in name else ""


def is_xnli(name: str, processor: glue.DataProcessor) -> bool:
    """TFDS's ``xnli`` (its validation and test splits; it has no train split) read by the XNLI processor."""
    return isinstance(processor, glue.XnliProcessor) and name.split("/")[0].split(":")[0] == "xnli"


def xnli_pair(rec: dict, language: str, where: str, i: int) -> tuple[str, str]:
    """An ``xnli`` record's premise and hypothesis in ``language``: the premise is a Translation (one text per
    language), the hypothesis a TranslationVariableLanguages (parallel ``language``/``translation`` lists)."""
    premises = {text(k): v for k, v in rec["premise"].items()}
    languages = [text(x) for x in rec["hypothesis"]["language"]]
    if language not in premises or language not in languages:
        have = sorted(set(premises) & set(languages))
        raise ValueError(f"{where} record {i}: no {language!r} premise and hypothesis (it has {', '.join(have)}); "
                         "the XNLI processor reads one language")
    return text(premises[language]), text(rec["hypothesis"]["translation"][languages.index(language)])


def glue_examples(name: str, role: str, processor: glue.DataProcessor, data_dir: str | None = None,
                  overrides: dict[str, str] | None = None, *, text_a: str | None = None,
                  text_b: str | None = None, label_feature: str = "label",
                  candidates: Sequence[str] | None = None) -> tuple[list[glue.InputExample], str]:
    """The ``role`` split of a TFDS classification dataset as InputExamples labelled in ``processor``'s
    label set; returns them and the TFDS split read. GLUE configs and ``xnli`` (the processor's language)
    know their features; other datasets (the generic task) name them with ``text_a``/``text_b``/
    ``label_feature``."""
    b = builder(name, data_dir)
    known = GLUE_FEATURES.get(_config(name)) if name.startswith("glue/") else None
    alias: dict = {}
    if known is not None and text_a is None:
        text_a, text_b, alias = known
    xnli = is_xnli(name, processor) and text_a is None
    if xnli:  # the pair in the processor's language, from the multilingual features
        text_a, text_b = "premise", "hypothesis"
    if text_a is None:
        configs = ", ".join(f"glue/{c}" for c in GLUE_FEATURES)
        raise ValueError(f"--tfds_name {name} is not a GLUE config ({configs}) nor xnli; name its text features "
                         "with --text_column (and --text_pair_column)")
    feats = b.info.features
    for feat in (text_a, text_b):
        if feat is not None and feat not in feats:
            raise ValueError(f"--tfds_name {name} has no feature {feat!r} (its features: {', '.join(feats)})")
    split = split_name(b, name, role, overrides, candidates)
    names = class_names(b, label_feature) if label_feature in feats else None
    labels = None if processor.is_regression else processor.get_labels()
    src = records(name, split, data_dir)
    where = f"tfds {name} [{split}]"
    out = []
    for i in range(len(src)):
        rec = src[i]
        label = rec.get(label_feature)
        if label is not None and float(label) == -1:  # GLUE's test splits: no label
            label = None
        if label is None:
            if role != glue.TEST:
                raise ValueError(f"{where} record {i}: no label ({label_feature!r} is -1 or missing), but the "
                                 f"{role} split needs labels")
        elif processor.is_regression:
            label = float(label)
        else:
            if names is None:
                raise ValueError(f"{where}: {label_feature!r} is not a ClassLabel (a number?); a classification "
                                 "task needs class names, or use --regression")
            tfds_label = names[int(label)]
            label = alias.get(tfds_label, tfds_label)
            if label not in labels:
                task = processor.name or "the task"
                raise ValueError(f"{where} record {i}: label {tfds_label!r} is not one of {task}'s labels "
                                 f"{labels} (is --task_name right for this dataset?)")
        if xnli:
            a_text, b_text = xnli_pair(rec, processor.language, where, i)
        else:
            a_text, b_text = text(rec[text_a]), None if text_b is None else text(rec[text_b])
        idx = rec.get("idx", i)
        out.append(glue.InputExample(f"{role}-{int(idx)}", a_text, b_text, label))
    if not out:
        raise ValueError(f"{where} holds no examples")
    return out, split


def squad_data(name: str, role: str, data_dir: str | None = None,
               overrides: dict[str, str] | None = None) -> list[dict]:
    """A TFDS SQuAD split regrouped into the SQuAD JSON's ``data`` list (articles -> paragraphs -> qas), which
    the original reader and the official evaluation take as they take the file."""
    b = builder(name, data_dir)
    split = split_name(b, name, role, overrides)
    src = records(name, split, data_dir)
    articles: dict[str, dict] = {}
    paragraphs: dict[tuple[str, str], dict] = {}
    for i in range(len(src)):
        rec = src[i]
        title, context = text(rec.get("title", b"")), text(rec["context"])
        answers = rec.get("answers") or {"text": [], "answer_start": []}
        qa = {"id": text(rec["id"]), "question": text(rec["question"]),
              "answers": [{"text": text(t), "answer_start": int(s)}
                          for t, s in zip(answers["text"], answers["answer_start"])]}
        if "is_impossible" in rec:
            qa["is_impossible"] = bool(rec["is_impossible"])
        article = articles.setdefault(title, {"title": title, "paragraphs": []})
        key = (title, context)
        if key not in paragraphs:
            paragraphs[key] = {"context": context, "qas": []}
            article["paragraphs"].append(paragraphs[key])
        paragraphs[key]["qas"].append(qa)
    if not articles:
        raise ValueError(f"tfds {name} [{split}] holds no questions")
    return list(articles.values())


def conll_sentences(name: str, role: str, data_dir: str | None = None, overrides: dict[str, str] | None = None,
                    *, tokens_feature: str = "tokens", tags_feature: str = "ner") -> tuple[list[Sentence], list[str]]:
    """A TFDS token-tagging split (conll2003: ``tokens`` and ``ner``) as Sentences, and the tag names in the
    dataset's order (the label set of every phase). ``Sentence.line`` is the record's index."""
    b = builder(name, data_dir)
    feats = b.info.features
    for feat in (tokens_feature, tags_feature):
        if feat not in feats:
            raise ValueError(f"--tfds_name {name} has no feature {feat!r} (its features: {', '.join(feats)})")
    names = class_names(b, tags_feature)
    if names is None:
        raise ValueError(f"--tfds_name {name}: {tags_feature!r} is not a sequence of ClassLabel tags")
    split = split_name(b, name, role, overrides)
    src = records(name, split, data_dir)
    out = []
    for i in range(len(src)):
        rec = src[i]
        words = [text(w) for w in rec[tokens_feature]]
        tags = [names[int(t)] for t in rec[tags_feature]]
        if len(words) != len(tags):
            raise ValueError(f"tfds {name} [{split}] record {i}: {len(words)} tokens but {len(tags)} tags")
        if words:
            out.append(Sentence(words, tags, i))
    if not out:
        raise ValueError(f"tfds {name} [{split}] holds no sentences")
    return out, names
