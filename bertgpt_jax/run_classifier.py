"""Fine-tune BERT on sentence / sentence-pair classification or regression: ``python -m bertgpt_jax.run_classifier``.

The original ``run_classifier.py`` workflow and flag names (``--task_name``, ``--data_dir``, ``--vocab_file``,
``--bert_config_file``, ``--init_checkpoint``, ``--do_train/--do_eval/--do_predict``, ``--num_train_epochs``,
``--warmup_proportion``, ...) on the sharded training engine. ``--init_checkpoint`` is a pretraining run's
``output_dir`` (``python -m bertgpt_jax.pretrain``) or an HF directory; the output layer starts fresh.
``--compile_only --topology=v4-8`` compiles this run's train step for that TPU slice on this host and prints
its memory/FLOPs report (``bertgpt_jax/training/aot.py``) instead of running: no checkpoint weights or data
are read (only the vocabulary, and a generic task's training file for its labels when ``--labels`` is not
given), and ``--num_train_steps`` stands for the run's length.

Writes to ``--output_dir``: checkpoints and metrics.jsonl (the engine's), ``eval_results.txt`` (sorted
``key = value``: ``eval_accuracy``, ``eval_loss``, ``global_step``, ``loss`` and the task's metrics),
``eval_results.json``, ``test_results.tsv`` (one line per test example: class probabilities, or the score
for regression) and, with ``--export_hf``, an HF ``BertForSequenceClassification`` directory.

    python -m bertgpt_jax.run_classifier --task_name=MRPC --data_dir=glue/MRPC --init_checkpoint=hf_bert_dir \\
        --do_train --do_eval --output_dir=/tmp/mrpc
"""

from __future__ import annotations

if __name__ == "__main__":  # before anything heavy is imported: the process may restart itself
    from bertgpt_jax import host_memory

    host_memory.reexec_with_huge_pages()  # XLA's per-step buffers on 2 MB pages, CPU runs only (see host_memory)

import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402

from absl import flags  # noqa: E402

from bertgpt_jax import cli  # noqa: E402
from bertgpt_jax.cli import setting  # noqa: E402
from bertgpt_jax.training.config import TrainConfig  # noqa: E402

F = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """The data and phases of a classification run (the original run_classifier.py's flags)."""

    task_name: str | None = setting(None, "cola, mnli (matched; mnli-mm: mismatched), mrpc, xnli, sst-2, qqp, "
                                    "qnli, rte, wnli, sts-b (regression), or generic (your own TSV/CSV/JSONL "
                                    "with named columns).", required=True)
    data_dir: str | None = setting(None, "Directory of the task's files (GLUE: train.tsv, dev.tsv, test.tsv; "
                                   "generic: train/dev/test .tsv, .csv or .jsonl). Required, except with "
                                   "--compile_only for a task whose labels are known (GLUE, or generic with "
                                   "--labels): that compiles the step without reading any data, and "
                                   "with --tfds_name.")
    tfds_name: str | None = setting(None, "Read the splits from this TFDS dataset, prepared locally as "
                                    "array_record (glue/mrpc, glue/mnli, ...; generic: any dataset, features "
                                    "named by --text_column/--text_pair_column/--label_column) instead of "
                                    "--data_dir. Labels are mapped by name. Needs pip install "
                                    "'bertgpt_jax[tfds]'.")
    tfds_data_dir: str | None = setting(None, "Where the TFDS dataset was prepared (default: TFDS's own, "
                                        "$TFDS_DATA_DIR or ~/tensorflow_datasets).")
    tfds_splits: str | None = setting(None, "TFDS split per role, e.g. dev=validation_mismatched,test=test "
                                      "(default: train; validation or dev (MNLI: validation_matched, mnli-mm: "
                                      "validation_mismatched); test (MNLI: test_matched / test_mismatched)).")
    vocab_file: str | None = setting(None, "The vocabulary the model was trained with (default: the one in an HF "
                                     "--init_checkpoint directory).")
    do_lower_case: bool = setting(True, "Lower-case the input (uncased models); for a bare vocab.txt.")
    max_seq_length: int = setting(128, "Tokens per example after WordPiece; longer inputs are truncated, "
                                  "shorter padded.")
    do_train: bool = setting(False, "Fine-tune on train.")
    do_eval: bool = setting(False, "Evaluate on dev (every example; the last batch padded, never dropped).")
    do_predict: bool = setting(False, "Predict test; writes test_results.tsv.")
    predict_batch_size: int = setting(8, "Global batch size of prediction.")
    num_train_epochs: float = setting(3.0, "Epochs: num_train_steps = int(examples / train_batch_size * epochs).")
    warmup_proportion: float = setting(0.1, "Share of the steps spent warming the learning rate up linearly.")
    xnli_language: str = setting("zh", "XNLI: the language trained (multinli.train.<lang>.tsv) and evaluated.")
    text_column: str = setting("text", "generic: the column of the first text.")
    text_pair_column: str | None = setting(None, "generic: the column of the second text (pair tasks).")
    label_column: str = setting("label", "generic: the label column.")
    labels: str | None = setting(None, "generic: comma-separated label set, in order (default: the sorted "
                                 "labels of the training file).")
    regression: bool = setting(False, "generic: the label is a number; one output trained with squared error.")
    layer_mix: bool = setting(False, "Classify a learned softmax-weighted sum of every layer's [CLS] state "
                              "(ELMo's scalar mix) instead of the last layer's pooled output.")
    freeze_encoder: bool = setting(False, "Train only the output layer (and the layer mix): the feature-based "
                                   "approach.")
    export_hf: str | None = setting(None, "Also write the fine-tuned model here as an HF "
                                    "BertForSequenceClassification directory.")


cli.define_flags(ClassifierConfig, TrainConfig)


def _eval_metrics(task, processor, task_name, logits, labels, prefix="eval_") -> dict:
    import numpy as np

    from bertgpt_jax.evaluation import glue as glue_metrics
    from bertgpt_jax.tasks.classification import probabilities

    if task.is_regression:
        scores = logits[:, 0]
        loss = float(np.mean((scores - labels) ** 2))
        out = glue_metrics.regression_metrics(scores, labels)
    else:
        probs = probabilities(logits)
        labels = labels.astype(np.int64)
        loss = float(np.mean(-np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-300))))
        out = glue_metrics.classification_metrics(task_name, np.argmax(logits, -1), labels, task.num_labels)
    out = {f"{prefix}{k}": v for k, v in out.items()}
    out[f"{prefix}loss"] = loss
    return out


def run(train: TrainConfig, clf: ClassifierConfig) -> dict:
    """The run the CLI starts; returns the evaluation metrics (as written to eval_results.txt)."""
    import jax

    from bertgpt_jax import convert, sharding
    from bertgpt_jax.data import glue, tfds_source
    from bertgpt_jax.tasks import finetuning
    from bertgpt_jax.tasks.classification import SequenceClassification, probabilities
    from bertgpt_jax.tasks.finetuning import num_train_steps
    from bertgpt_jax.training import loop

    if not (clf.do_train or clf.do_eval or clf.do_predict or train.compile_only):
        raise ValueError("at least one of --do_train, --do_eval or --do_predict must be given")
    if clf.data_dir is None and clf.tfds_name is None and not (
            train.compile_only and (clf.task_name.lower() != "generic" or clf.labels)):
        raise ValueError("--data_dir (the directory of the task's files) or --tfds_name is required")
    if clf.data_dir is not None and clf.tfds_name is not None:
        raise ValueError(f"--data_dir {clf.data_dir} and --tfds_name {clf.tfds_name}: give one source of data")
    tfds_splits = tfds_source.parse_splits(clf.tfds_splits) if clf.tfds_name else {}
    if clf.data_dir is not None and not os.path.isdir(clf.data_dir):
        raise FileNotFoundError(f"--data_dir {clf.data_dir} is not a directory")
    generic_task = clf.task_name.lower() == "generic"
    labels = clf.labels.split(",") if clf.labels else None
    if clf.tfds_name and generic_task and labels is None and not clf.regression:  # the ClassLabel's names
        labels = tfds_source.class_names(tfds_source.builder(clf.tfds_name, clf.tfds_data_dir), clf.label_column)
        if labels is None:
            raise ValueError(f"--tfds_name {clf.tfds_name}: {clf.label_column!r} has no class names; give "
                             "--labels or --regression")
    generic = dict(text_column=clf.text_column, text_pair_column=clf.text_pair_column,
                   label_column=clf.label_column, labels=labels, regression=clf.regression, data_dir=clf.data_dir)
    if clf.task_name.lower() == "xnli":
        processor = glue.XnliProcessor(clf.xnli_language)
    else:
        processor = glue.get_processor(clf.task_name, **generic)
    label_list = processor.get_labels()
    regression = processor.is_regression
    num_labels = 1 if regression else len(label_list)
    if not regression and num_labels < 2:
        raise ValueError(f"task {clf.task_name} has {num_labels} label(s) {label_list}; classification needs two "
                         "or more (or --regression)")

    tokenizer, model_cfg = finetuning.tokenizer_and_model(train, clf.vocab_file, clf.do_lower_case,
                                                          clf.max_seq_length)
    if train.compile_only:  # the TPU's train step, compiled here: no features built, nothing trained
        task = SequenceClassification(model_cfg, num_labels, clf.max_seq_length, layer_mix=clf.layer_mix,
                                      freeze_encoder=clf.freeze_encoder)
        return finetuning.compile_only(train, task, clf.warmup_proportion, evaluate=clf.do_eval)

    def examples_of(split, proc=processor, task_name=clf.task_name):
        if clf.tfds_name is None:
            return proc.get_examples(clf.data_dir, split)
        columns = (dict(text_a=clf.text_column, text_b=clf.text_pair_column, label_feature=clf.label_column)
                   if generic_task else {})
        examples, tfds_split = tfds_source.glue_examples(
            clf.tfds_name, split, proc, clf.tfds_data_dir, tfds_splits,
            candidates=tfds_source.role_candidates(task_name, split), **columns)
        finetuning.say(f"[run_classifier] {split}: {len(examples)} examples from tfds {clf.tfds_name} [{tfds_split}]")
        return examples

    def features(split):
        examples = examples_of(split)
        return examples, glue.convert_examples_to_features(examples, label_list, clf.max_seq_length, tokenizer,
                                                           regression=regression)

    finetuning.check_eval_every_steps(train, clf.do_train, clf.do_eval, "--do_eval (the dev split)")
    train_examples, train_features = features(glue.TRAIN) if clf.do_train else (None, None)
    eval_examples, eval_features = features(glue.DEV) if clf.do_eval else (None, None)
    mm_features = None
    if clf.do_eval and clf.task_name.lower() == "mnli" and (
            tfds_source.has_mismatched(clf.tfds_name, clf.tfds_data_dir, tfds_splits) if clf.tfds_name
            else os.path.exists(os.path.join(clf.data_dir, "dev_mismatched.tsv"))):
        mm_examples = examples_of(glue.DEV, glue.MnliMismatchedProcessor(), "mnli-mm")
        mm_features = glue.convert_examples_to_features(mm_examples, label_list, clf.max_seq_length, tokenizer)
    task = SequenceClassification(model_cfg, num_labels, clf.max_seq_length, train_features, eval_features,
                                  layer_mix=clf.layer_mix, freeze_encoder=clf.freeze_encoder)
    mesh = sharding.make_mesh(train.mesh_shape)

    def evaluate(params):
        """The task's metric set on dev (and MNLI's mismatched dev as ``mm_...``), names without a prefix."""
        logits = task.predict(params, eval_features, train.eval_batch_size, mesh)
        out = _eval_metrics(task, processor, clf.task_name, logits, eval_features["label_ids"], prefix="")
        if mm_features is not None:
            mm_logits = task.predict(params, mm_features, train.eval_batch_size, mesh)
            out.update(_eval_metrics(task, glue.MnliMismatchedProcessor(), "mnli-mm", mm_logits,
                                     mm_features["label_ids"], prefix="mm_"))
        return out, None

    evaluation = finetuning.Evaluation(evaluate)
    task.evaluator = evaluation
    result: dict = {}
    if clf.do_train:
        steps = num_train_steps(len(train_examples), train.train_batch_size, clf.num_train_epochs)
        if F.is_parsed() and "num_train_steps" in F and F["num_train_steps"].present:
            steps = train.num_train_steps
        if steps <= 0:
            raise ValueError(f"{len(train_examples)} training examples / train_batch_size {train.train_batch_size} "
                             f"x num_train_epochs {clf.num_train_epochs} gives no training step")
        engine = finetuning.engine_config(train, steps, clf.warmup_proportion, evaluate=clf.do_eval)
        finetuning.say(f"[run_classifier] {clf.task_name}: {len(train_examples)} training examples, {num_labels} "
               f"{'output (regression)' if regression else 'labels'}; {steps} steps of {train.train_batch_size} "
               f"({clf.num_train_epochs} epochs), {engine.num_warmup_steps} warmup")
        result = loop.run(engine, task)

    if not (clf.do_eval or clf.do_predict or clf.export_hf):
        return {}
    params, step = finetuning.run_params(task, train.output_dir, train.init_checkpoint, mesh)

    metrics: dict = {}
    if clf.do_eval:
        metrics = {f"eval_{k}": v for k, v in evaluation.final(params, result)[0].items()}
        metrics["global_step"] = int(step)
        metrics["loss"] = metrics["eval_loss"]
        metrics["eval_num_examples"] = len(eval_examples)
        if jax.process_index() == 0:
            os.makedirs(train.output_dir, exist_ok=True)
            finetuning.write_results(os.path.join(train.output_dir, "eval_results.txt"), metrics)
            with open(os.path.join(train.output_dir, "eval_results.json"), "w", encoding="utf-8") as f:
                json.dump(metrics, f, indent=2, sort_keys=True)
        finetuning.say("[run_classifier] eval: " + ", ".join(f"{k} = {v:.4f}" if isinstance(v, float) else f"{k} = {v}"
                                                   for k, v in sorted(metrics.items())))
    if clf.do_predict:
        test_examples, test_features = features(glue.TEST)
        logits = task.predict(params, test_features, clf.predict_batch_size, mesh)
        if jax.process_index() == 0:
            rows = logits[:, :1] if regression else probabilities(logits)
            with open(os.path.join(train.output_dir, "test_results.tsv"), "w", encoding="utf-8") as f:
                for row in rows:
                    f.write("\t".join(str(float(x)) for x in row) + "\n")
        finetuning.say(f"[run_classifier] wrote {len(test_examples)} predictions to "
               f"{os.path.join(train.output_dir, 'test_results.tsv')}")
    if clf.export_hf and jax.process_index() == 0:
        if clf.layer_mix:
            raise ValueError("--export_hf: a layer-mix classifier has no BertForSequenceClassification layout")
        convert.to_hf_finetuned(task.model_cfg, jax.device_get(params), clf.export_hf,
                                "BertForSequenceClassification", None if regression else label_list)
        if os.path.isdir(getattr(tokenizer, "path", "") or ""):
            convert.copy_tokenizer_files(tokenizer.path, clf.export_hf)
        finetuning.say(f"[run_classifier] exported BertForSequenceClassification to {clf.export_hf}")
    metrics["train_result"] = {k: v for k, v in result.items() if isinstance(v, (int, float, str))}
    return metrics


def main(argv) -> None:
    from bertgpt_jax.tasks import finetuning

    finetuning.cli_main(argv, ClassifierConfig, run)


if __name__ == "__main__":
    from bertgpt_jax.training.loop import NonFiniteError

    cli.run(main, user_errors=(ValueError, FileNotFoundError, NonFiniteError))
