"""Fine-tune BERT for token classification (NER) on CoNLL-format files: ``python -m bertgpt_jax.run_ner``.

``--data_dir`` holds ``train.txt``, ``dev.txt`` and ``test.txt`` (one ``word ... tag`` per line, a blank line
between sentences; BIO, IOB1 or IOBES tags). Each word's tag is predicted at its first WordPiece. Writes to
``--output_dir``: ``eval_results.txt`` (sorted ``key = value``: ``eval_precision``, ``eval_recall``, ``eval_f1``
(entity level, as seqeval computes them), ``eval_accuracy`` (per word), ``eval_loss``, ``global_step``,
``loss``), ``eval_results.json``, ``eval_predictions.txt`` and ``test_predictions.txt`` (CoNLL format with the
predicted tag as the last column) and, with ``--export_hf``, an HF ``BertForTokenClassification`` directory.
``--compile_only --topology=v4-8`` compiles this run's train step for that TPU slice on this host and prints
its memory/FLOPs report (``bertgpt_jax/training/aot.py``) instead of running: it reads train.txt for the tag
set only (no tokenization) and no checkpoint weights, and ``--num_train_steps`` stands for the run's length.

    python -m bertgpt_jax.run_ner --data_dir=conll2003 --init_checkpoint=HF_BERT_DIR --do_train --do_eval \\
        --do_predict --output_dir=/tmp/ner
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
FILES = {"train": "train.txt", "dev": "dev.txt", "test": "test.txt"}


@dataclasses.dataclass(frozen=True)
class TaggingConfig:
    """The data and phases of a token-classification run."""

    data_dir: str | None = setting(None, "Directory with train.txt, dev.txt, test.txt in the CoNLL format "
                                   "(or --tfds_name).")
    tfds_name: str | None = setting(None, "Read the splits from this TFDS dataset (conll2003: tokens and ner "
                                    "tags), prepared locally as array_record, instead of --data_dir; the tag "
                                    "set is the dataset's ClassLabel names. Needs pip install "
                                    "'bertgpt_jax[tfds]'.")
    tfds_data_dir: str | None = setting(None, "Where the TFDS dataset was prepared (default: TFDS's own).")
    tfds_splits: str | None = setting(None, "TFDS split per role, e.g. dev=validation (default: train; "
                                      "validation or dev; test).")
    vocab_file: str | None = setting(None, "The vocabulary the model was trained with (default: the one in an HF "
                                     "--init_checkpoint directory).")
    do_lower_case: bool = setting(True, "Lower-case the input (uncased models).")
    max_seq_length: int = setting(128, "WordPiece tokens per sentence; longer sentences are cut (logged).")
    do_train: bool = setting(False, "Fine-tune on train.txt.")
    do_eval: bool = setting(False, "Evaluate on dev.txt (every sentence).")
    do_predict: bool = setting(False, "Tag test.txt; writes test_predictions.txt.")
    predict_batch_size: int = setting(8, "Global batch size of prediction.")
    num_train_epochs: float = setting(3.0, "Epochs: num_train_steps = int(sentences / train_batch_size * epochs).")
    warmup_proportion: float = setting(0.1, "Share of the steps spent warming the learning rate up linearly.")
    export_hf: str | None = setting(None, "Also write the model here as an HF BertForTokenClassification directory.")


cli.define_flags(TaggingConfig, TrainConfig)


def run(train: TrainConfig, tc: TaggingConfig) -> dict:
    import jax

    from bertgpt_jax import convert, sharding
    from bertgpt_jax.data import conll, tfds_source
    from bertgpt_jax.evaluation import tagging
    from bertgpt_jax.tasks import finetuning
    from bertgpt_jax.tasks.tagging import TokenClassification
    from bertgpt_jax.training import loop

    if not (tc.do_train or tc.do_eval or tc.do_predict or train.compile_only):
        raise ValueError("at least one of --do_train, --do_eval or --do_predict must be given")
    if (tc.data_dir is None) == (tc.tfds_name is None):
        raise ValueError("give one source of data: --data_dir (train.txt, dev.txt, test.txt) or --tfds_name")
    splits = tfds_source.parse_splits(tc.tfds_splits) if tc.tfds_name else {}
    if tc.tfds_name:
        path = {k: f"tfds {tc.tfds_name} [{k}] record" for k in FILES}
    else:
        path = {k: os.path.join(tc.data_dir, v) for k, v in FILES.items()}

    def read(split, with_tags=True):
        if tc.tfds_name:
            return tfds_source.conll_sentences(tc.tfds_name, split, tc.tfds_data_dir, splits)[0]
        return conll.read_conll(path[split], with_tags=with_tags)

    tokenizer, model_cfg = finetuning.tokenizer_and_model(train, tc.vocab_file, tc.do_lower_case, tc.max_seq_length)
    if tc.tfds_name:  # the dataset's own tag set, in its order
        train_sentences, labels = tfds_source.conll_sentences(tc.tfds_name, "train", tc.tfds_data_dir, splits)
    else:
        train_sentences = conll.read_conll(path["train"])  # the tag set is the training file's, in every phase
        labels = conll.label_list(train_sentences)
    if train.compile_only:  # the TPU's train step, compiled here: nothing tokenized, nothing trained
        return finetuning.compile_only(train, TokenClassification(model_cfg, len(labels), tc.max_seq_length),
                                       tc.warmup_proportion, evaluate=tc.do_eval)
    finetuning.check_eval_every_steps(train, tc.do_train, tc.do_eval, "--do_eval (dev.txt)")
    feats = {}

    def load(split):
        sentences = train_sentences if split == "train" else read(split)
        return sentences, conll.convert_sentences_to_features(sentences, labels, tc.max_seq_length, tokenizer,
                                                              path[split])

    if tc.do_train:
        feats["train"] = load("train")
    if tc.do_eval:
        feats["dev"] = load("dev")
    task = TokenClassification(model_cfg, len(labels), tc.max_seq_length,
                               feats["train"][1] if tc.do_train else None,
                               feats["dev"][1] if tc.do_eval else None)
    mesh = sharding.make_mesh(train.mesh_shape)

    def evaluate(params):
        """Entity-level precision/recall/F1 (seqeval's), per-word accuracy and the loss on dev.txt; and the
        predicted tags, for eval_predictions.txt."""
        import numpy as np

        sentences, f = feats["dev"]
        logits = task.predict(params, f, train.eval_batch_size, mesh)
        pred = conll.predicted_tags(sentences, f, logits, labels)
        out = tagging.entity_scores([s.tags for s in sentences], pred)
        w = f["label_weights"]
        z = logits - logits.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        nll = -np.take_along_axis(logp, f["label_ids"][..., None], -1)[..., 0]
        out["loss"] = float((nll * w).sum() / max(w.sum(), 1.0))
        return out, pred

    evaluation = finetuning.Evaluation(evaluate)
    task.evaluator = evaluation
    result: dict = {}
    if tc.do_train:
        steps = finetuning.num_train_steps(len(train_sentences), train.train_batch_size, tc.num_train_epochs)
        if steps <= 0:
            raise ValueError(f"{len(train_sentences)} sentences / train_batch_size {train.train_batch_size} x "
                             f"num_train_epochs {tc.num_train_epochs} gives no training step")
        engine = finetuning.engine_config(train, steps, tc.warmup_proportion, evaluate=tc.do_eval)
        finetuning.say(f"[run_ner] {len(train_sentences)} training sentences, tags {labels}; {steps} steps, "
                       f"{engine.num_warmup_steps} warmup")
        result = loop.run(engine, task)
    if not (tc.do_eval or tc.do_predict or tc.export_hf):
        return {}
    params, step = finetuning.run_params(task, train.output_dir, train.init_checkpoint, mesh)
    metrics: dict = {}
    main = jax.process_index() == 0
    if main:
        os.makedirs(train.output_dir, exist_ok=True)
    if tc.do_eval:
        scores, pred = evaluation.final(params, result)
        metrics = {f"eval_{k}": v for k, v in scores.items()}
        metrics["loss"] = metrics["eval_loss"]
        metrics["global_step"] = int(step)
        if main:
            finetuning.write_results(os.path.join(train.output_dir, "eval_results.txt"), metrics)
            with open(os.path.join(train.output_dir, "eval_results.json"), "w", encoding="utf-8") as fh:
                json.dump(metrics, fh, indent=2, sort_keys=True)
            conll.write_conll(os.path.join(train.output_dir, "eval_predictions.txt"), feats["dev"][0], pred)
        finetuning.say("[run_ner] eval: " + ", ".join(f"{k} = {v:.4f}" for k, v in sorted(metrics.items())))
    if tc.do_predict:
        sentences = read("test", with_tags=False)
        f = conll.convert_sentences_to_features(sentences, labels, tc.max_seq_length, tokenizer, path["test"])
        logits = task.predict(params, f, tc.predict_batch_size, mesh)
        if main:
            conll.write_conll(os.path.join(train.output_dir, "test_predictions.txt"), sentences,
                              conll.predicted_tags(sentences, f, logits, labels))
    if tc.export_hf and main:
        convert.to_hf_finetuned(task.model_cfg, jax.device_get(params), tc.export_hf, "BertForTokenClassification",
                                labels)
    return metrics


def main(argv) -> None:
    from bertgpt_jax.tasks import finetuning

    finetuning.cli_main(argv, TaggingConfig, run)


if __name__ == "__main__":
    from bertgpt_jax.training.loop import NonFiniteError

    cli.run(main, user_errors=(ValueError, FileNotFoundError, NonFiniteError))
