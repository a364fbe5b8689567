"""Fine-tune BERT for extractive question answering on SQuAD v1.1 / v2.0: ``python -m bertgpt_jax.run_squad``.

The original ``run_squad.py`` flags and algorithm (``bertgpt_jax/data/squad.py``: whitespace words and
character offsets, WordPiece alignment, sliding windows ``--doc_stride`` apart, the max-context rule, n-best
spans mapped back onto the original text, v2.0 null answers) on the sharded training engine. Writes
``predictions.json``, ``nbest_predictions.json``, ``null_odds.json`` (v2.0) and, when ``--predict_file`` has
answers, ``eval_results.json`` from the official evaluation (``bertgpt_jax/evaluation/squad.py``).
``--compile_only --topology=v4-8`` compiles this run's train step for that TPU slice on this host and prints
its memory/FLOPs report (``bertgpt_jax/training/aot.py``) instead of running; it reads no data and no
checkpoint weights (only the vocabulary, when given), and ``--num_train_steps`` stands for the run's length.

    python -m bertgpt_jax.run_squad --init_checkpoint=HF_BERT_DIR --do_train --train_file=train-v1.1.json \\
        --do_predict --predict_file=dev-v1.1.json --train_batch_size=12 --learning_rate=3e-5 \\
        --num_train_epochs=2 --max_seq_length=384 --doc_stride=128 --output_dir=/tmp/squad
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
class SquadConfig:
    """The data, windows and post-processing of a SQuAD run (the original run_squad.py's flags)."""

    train_file: str | None = setting(None, "SQuAD JSON for training, e.g. train-v1.1.json.")
    predict_file: str | None = setting(None, "SQuAD JSON for predictions, e.g. dev-v1.1.json.")
    tfds_name: str | None = setting(None, "Read train and predictions from this TFDS dataset (squad/v1.1, "
                                    "squad/v2.0), prepared locally as array_record, instead of --train_file / "
                                    "--predict_file: its train and validation splits. Needs pip install "
                                    "'bertgpt_jax[tfds]'.")
    tfds_data_dir: str | None = setting(None, "Where the TFDS dataset was prepared (default: TFDS's own).")
    tfds_splits: str | None = setting(None, "TFDS split per role: train=SPLIT,dev=SPLIT (dev is what "
                                      "--do_predict predicts; default train, validation).")
    vocab_file: str | None = setting(None, "The vocabulary the model was trained with (default: the one in an HF "
                                     "--init_checkpoint directory).")
    do_lower_case: bool = setting(True, "Lower-case the input (uncased models).")
    max_seq_length: int = setting(384, "Tokens per window (question + context + 3 special tokens).")
    doc_stride: int = setting(128, "The step between the starts of consecutive context windows.")
    max_query_length: int = setting(64, "Question tokens kept (the rest are cut).")
    do_train: bool = setting(False, "Fine-tune on --train_file.")
    do_predict: bool = setting(False, "Predict --predict_file.")
    predict_batch_size: int = setting(8, "Global batch size of prediction.")
    num_train_epochs: float = setting(3.0, "Epochs: num_train_steps = int(questions / train_batch_size * epochs).")
    warmup_proportion: float = setting(0.1, "Share of the steps spent warming the learning rate up linearly.")
    n_best_size: int = setting(20, "Start and end candidates per window, and answers kept in nbest_predictions.")
    max_answer_length: int = setting(30, "Longest answer, in WordPiece tokens.")
    version_2_with_negative: bool = setting(False, "SQuAD v2.0: questions may have no answer.")
    null_score_diff_threshold: float = setting(0.0, "v2.0: answer '' when null score - best score exceeds this.")
    export_hf: str | None = setting(None, "Also write the fine-tuned model here as an HF BertForQuestionAnswering "
                                    "directory.")


cli.define_flags(SquadConfig, TrainConfig)


def run(train: TrainConfig, sq: SquadConfig) -> dict:
    """The run the CLI starts; returns the official evaluation's figures when the predict file has answers."""
    import jax
    import numpy as np

    from bertgpt_jax import convert, sharding
    from bertgpt_jax.data import squad, tfds_source
    from bertgpt_jax.evaluation import squad as squad_eval
    from bertgpt_jax.tasks import finetuning
    from bertgpt_jax.tasks.spans import SpanExtraction
    from bertgpt_jax.training import loop

    if not (sq.do_train or sq.do_predict or train.compile_only):
        raise ValueError("at least one of --do_train or --do_predict must be given")
    if sq.tfds_name and (sq.train_file or sq.predict_file):
        raise ValueError(f"--tfds_name {sq.tfds_name} and --train_file/--predict_file: give one source of data")
    if sq.do_train and not (sq.train_file or sq.tfds_name):
        raise ValueError("--do_train needs --train_file (or --tfds_name)")
    if sq.do_predict and not (sq.predict_file or sq.tfds_name):
        raise ValueError("--do_predict needs --predict_file (or --tfds_name)")
    if sq.max_seq_length <= sq.max_query_length + 3:
        raise ValueError(f"max_seq_length {sq.max_seq_length} must exceed max_query_length {sq.max_query_length} "
                         "+ 3 ([CLS] and two [SEP]), or no context token fits in a window")
    tokenizer, model_cfg = finetuning.tokenizer_and_model(train, sq.vocab_file, sq.do_lower_case,
                                                          sq.max_seq_length)
    if train.compile_only:  # the TPU's train step, compiled here: no data read, nothing trained
        return finetuning.compile_only(train, SpanExtraction(model_cfg, sq.max_seq_length), sq.warmup_proportion)
    window = dict(max_seq_length=sq.max_seq_length, doc_stride=sq.doc_stride, max_query_length=sq.max_query_length)
    splits = tfds_source.parse_splits(sq.tfds_splits) if sq.tfds_name else {}

    def read(path, role, is_training):
        """The examples and the SQuAD ``data`` list of a file, or of a TFDS split (train; dev: predicted)."""
        if sq.tfds_name is None:
            examples = squad.read_squad_examples(path, is_training, sq.version_2_with_negative)
            if is_training:  # the data list is the evaluation's: only the predicted file's is kept
                return examples, None
            with open(path, encoding="utf-8") as f:
                return examples, json.load(f)["data"]
        data = tfds_source.squad_data(sq.tfds_name, role, sq.tfds_data_dir, splits)
        return squad.squad_examples(data, f"tfds {sq.tfds_name} [{role}]", is_training,
                                    sq.version_2_with_negative), data

    train_features = None
    if sq.do_train:
        train_examples, _ = read(sq.train_file, "train", True)
        train_features = squad.convert_examples_to_features(train_examples, tokenizer, is_training=True, **window)
    has_answers = False
    if sq.do_predict:
        examples, data = read(sq.predict_file, "dev", False)
        features = squad.convert_examples_to_features(examples, tokenizer, is_training=False, **window)
        has_answers = any(qa.get("answers") for a in data for p in a["paragraphs"] for qa in p["qas"])
    finetuning.check_eval_every_steps(train, sq.do_train, has_answers,
                                      "--do_predict with a --predict_file that has answers")
    task = SpanExtraction(model_cfg, sq.max_seq_length, None if train_features is None else train_features.arrays,
                          features.arrays if has_answers else None)
    mesh = sharding.make_mesh(train.mesh_shape)

    def evaluate(params):
        """The official evaluation's figures (exact match, F1; v2.0's with and without answers) on
        --predict_file, after the original's span decoding; and the predictions, for the files."""
        start_logits, end_logits = task.predict(params, features.arrays, sq.predict_batch_size, mesh)
        preds, nbest, odds = squad.write_predictions(
            examples, features, np.asarray(start_logits), np.asarray(end_logits), n_best_size=sq.n_best_size,
            max_answer_length=sq.max_answer_length, do_lower_case=sq.do_lower_case,
            version_2_with_negative=sq.version_2_with_negative,
            null_score_diff_threshold=sq.null_score_diff_threshold, id_to_token=tokenizer.id_to_token)
        scores = {}
        if has_answers:
            scores = (squad_eval.evaluate_v2(data, preds, odds) if sq.version_2_with_negative
                      else squad_eval.evaluate_v1(data, preds))
        return scores, (preds, nbest, odds)

    evaluation = finetuning.Evaluation(evaluate)
    task.evaluator = evaluation
    result: dict = {}
    if sq.do_train:
        steps = finetuning.num_train_steps(len(train_examples), train.train_batch_size, sq.num_train_epochs)
        if F.is_parsed() and "num_train_steps" in F and F["num_train_steps"].present:
            steps = train.num_train_steps
        if steps <= 0:
            raise ValueError(f"{len(train_examples)} training questions / train_batch_size {train.train_batch_size} "
                             f"x num_train_epochs {sq.num_train_epochs} gives no training step")
        engine = finetuning.engine_config(train, steps, sq.warmup_proportion, evaluate=has_answers)
        finetuning.say(f"[run_squad] {len(train_examples)} training questions, {len(train_features.example_index)} windows; "
               f"{steps} steps of {train.train_batch_size}, {engine.num_warmup_steps} warmup")
        result = loop.run(engine, task)
    if not (sq.do_predict or sq.export_hf):
        return {}
    params, step = finetuning.run_params(task, train.output_dir, train.init_checkpoint, mesh)
    results: dict = {}
    if sq.do_predict:
        scores, (preds, nbest, odds) = evaluation.final(params, result)
        if jax.process_index() == 0:
            os.makedirs(train.output_dir, exist_ok=True)
            files = {"predictions.json": preds, "nbest_predictions.json": nbest}
            if sq.version_2_with_negative:
                files["null_odds.json"] = odds
            for name, obj in files.items():
                with open(os.path.join(train.output_dir, name), "w", encoding="utf-8") as f:
                    json.dump(obj, f, indent=2)
            if has_answers:
                results = {**scores, "global_step": int(step)}
                with open(os.path.join(train.output_dir, "eval_results.json"), "w", encoding="utf-8") as f:
                    json.dump(results, f, indent=2, sort_keys=True)
        finetuning.say(f"[run_squad] {len(preds)} predictions in {train.output_dir}/predictions.json"
               + (": " + ", ".join(f"{k} {v:.2f}" for k, v in results.items() if isinstance(v, float)) if results
                  else ""))
    if sq.export_hf and jax.process_index() == 0:
        convert.to_hf_finetuned(task.model_cfg, jax.device_get(params), sq.export_hf, "BertForQuestionAnswering")
        finetuning.say(f"[run_squad] exported BertForQuestionAnswering to {sq.export_hf}")
    return results


def main(argv) -> None:
    from bertgpt_jax.tasks import finetuning

    finetuning.cli_main(argv, SquadConfig, run)


if __name__ == "__main__":
    from bertgpt_jax.training.loop import NonFiniteError

    cli.run(main, user_errors=(ValueError, FileNotFoundError, NonFiniteError))
