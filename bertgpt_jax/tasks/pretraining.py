"""The data settings of the pretraining tasks, and the task a pretraining run trains."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
from absl import logging

from bertgpt_jax import configs, models
from bertgpt_jax.cli import setting
from bertgpt_jax.tasks import synthetic
from bertgpt_jax.tasks.base import Batch, Task

SYNTHETIC = "synthetic"
_EVAL_SEED = 1_000_003  # synthetic evaluation batches come from another stream than training's


@dataclasses.dataclass(frozen=True)
class PretrainingData:
    """Where a pretraining run's examples come from and how they are cut (flags of ``pretrain``)."""

    dataset: str | None = setting(
        None, "A token store directory (python -m bertgpt_jax.create_pretraining_data), or 'synthetic' for "
        "random learnable tokens.", aliases=("input_file",), required=True)
    max_seq_length: int = setting(128, "Tokens per example.")
    max_predictions_per_seq: int = setting(20, "Masked LM predictions per example (BERT).")
    # The original create_pretraining_data.py recipe (BERT), its names and defaults.
    dupe_factor: int = setting(10, "Differently cut copies of the documents (BERT; the original's 10): each copy "
                               "has its own A/B pairs and next-sentence labels.")
    dynamic_masking: bool = setting(False, "Mask every epoch afresh (RoBERTa). Default: static masking, as the "
                                    "original (each instance keeps one mask; dupe_factor copies differ).")
    do_whole_word_mask: bool = setting(False, "Mask whole words (all pieces of a word together), as the original's "
                                       "flag of that name (BERT).")
    masked_lm_prob: float = setting(0.15, "Fraction of tokens masked (BERT; the original's 0.15).")
    short_seq_prob: float = setting(0.1, "Probability of a shorter target length for a document (BERT; the "
                                    "original's 0.1).")
    random_seed: int = setting(12345, "Seed of the instance cutting and masking (BERT; the original's 12345). "
                               "--seed sets initialisation, dropout and the data order.")
    fill_mask_examples: int = setting(0, "After training, print the top-5 fill-in-the-blank predictions for this "
                                      "many held-out validation sentences (BERT).")
    build_store_from: str | None = setting(
        None, "If --dataset does not exist yet, build it first from this corpus ('default' = the embedded "
        "default corpus; a vocabulary is trained when no --vocab_file is given).")
    vocab_file: str | None = setting(None, "Tokenizer of the run (vocab.txt, tokenizer.json, ...): builds the store "
                                     "with --build_store_from; a store written with another tokenizer is refused.")
    store_vocab_size: int = setting(4096, "Vocabulary size to train for --build_store_from without --vocab_file.")
    store_tokenizer: str = setting("wordpiece", "Tokenizer to train for --build_store_from without --vocab_file "
                                   "(GPT needs one with an end-of-text token: bpe).",
                                   choices=("wordpiece", "bpe", "sentencepiece"))

    @property
    def synthetic(self) -> bool:
        return self.dataset == SYNTHETIC

    def recipe(self, bert: bool) -> dict:
        """The settings that decide which examples a run sees: recorded with the run, the same on resume."""
        names = ["dataset", "max_seq_length"]
        if bert:
            names += ["max_predictions_per_seq", "dupe_factor", "dynamic_masking", "do_whole_word_mask",
                      "masked_lm_prob", "short_seq_prob", "random_seed"]
        return {name: getattr(self, name) for name in names}

    def store_vocab_size_or_none(self) -> int | None:
        """The vocabulary size a token store's manifest records, or None for ``synthetic``."""
        if self.synthetic:
            return None
        from bertgpt_jax.data.token_store import TokenStore

        return int(TokenStore(self.dataset).tokenizer_info["vocab_size"])


def fit_vocab(model_cfg: configs.ModelConfig, model_name: str, data: PretrainingData) -> configs.ModelConfig:
    """The model config with the token store's vocabulary size: a preset takes the store's; a config file
    must already agree with it."""
    vocab = data.store_vocab_size_or_none()
    if vocab is None or vocab == model_cfg.vocab_size:
        return model_cfg
    if model_name.lower() in configs.PRESETS or model_name.lower() in configs.ALIASES:
        logging.info("vocab_size %d of preset %s replaced by the token store's %d", model_cfg.vocab_size,
                     model_name, vocab)
        return model_cfg.replace(vocab_size=vocab)
    raise ValueError(f"model config {model_name} has vocab_size {model_cfg.vocab_size} but the token store "
                     f"{data.dataset} was tokenized with {vocab} ids; they must match")


def task_for(model_cfg: configs.ModelConfig, data: PretrainingData):
    """BERT pretraining (MLM + NSP) for a BERT config, causal LM for GPT-2."""
    if model_cfg.is_bert:
        from bertgpt_jax.tasks.bert_pretraining import BertPretraining

        return BertPretraining(model_cfg, data)
    from bertgpt_jax.tasks.causal_lm import CausalLM

    return CausalLM(model_cfg, data)


class PretrainingTask(Task):
    """What BERT pretraining and causal LM share: the model from its config, and examples from a token store's
    train and validation splits (or the synthetic dataset). Subclasses build a split's Grain dataset
    (``dataset``) and a synthetic batch (``synthetic_batch``)."""

    def __init__(self, model_cfg: configs.ModelConfig, data: PretrainingData):
        super().__init__(model_cfg, models.from_config(model_cfg), data.max_seq_length)
        self.data = data

    def check(self) -> None:
        configs.check_positions(self.seq_len, self.model_cfg.max_position_embeddings, "max_seq_length")
        if self.data.synthetic:
            synthetic.check_vocab(self.model_cfg.vocab_size)

    def dataset(self, split: str, seed: int):
        raise NotImplementedError

    def synthetic_batch(self, rng: np.random.Generator, batch: int) -> Batch:
        raise NotImplementedError

    def train_batches(self, global_batch_size: int, seed: int) -> Iterator[Batch]:
        if self.data.synthetic:
            return synthetic.SyntheticBatches(self.synthetic_batch, global_batch_size, seed=seed)
        from bertgpt_jax import data

        return data.make_iterator(self.dataset("train", seed), global_batch_size=global_batch_size, shuffle=True,
                                  seed=seed)

    def eval_batches(self, global_batch_size: int, seed: int, max_examples: int | None = None) -> Iterator[Batch]:
        if self.data.synthetic:
            return synthetic.SyntheticBatches(self.synthetic_batch, global_batch_size, seed=seed + _EVAL_SEED)
        from bertgpt_jax import data

        return data.make_eval_iterator(self.dataset("validation", seed), global_batch_size=global_batch_size,
                                       max_examples=max_examples, sample_seed=_EVAL_SEED)
