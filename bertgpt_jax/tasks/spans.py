"""Extractive question answering (SQuAD): start and end logits over each window's tokens, the objective
``run_squad.py`` trains, (start cross-entropy + end cross-entropy) / 2 averaged over the real windows."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from bertgpt_jax import configs, models
from bertgpt_jax.models.finetune import SpanClassifier
from bertgpt_jax.tasks.base import Batch, real_examples
from bertgpt_jax.tasks.finetuning import Features, FinetuneTask


class SpanExtraction(FinetuneTask):
    headline_metrics = ("loss", "start_accuracy", "end_accuracy")
    head_names = ("qa_outputs",)

    def __init__(self, model_cfg: configs.ModelConfig, max_seq_length: int, train_features: Features | None = None,
                 eval_features: Features | None = None):
        super().__init__(model_cfg, SpanClassifier(models.resolve_kernels(model_cfg)), max_seq_length,
                         train_features, eval_features)

    def example_batch(self, batch_size: int) -> Batch:
        ids = np.zeros((batch_size, self.seq_len), np.int32)
        return {"input_ids": ids, "input_mask": np.ones_like(ids), "segment_ids": ids,
                "start_positions": np.zeros((batch_size,), np.int32),
                "end_positions": np.zeros((batch_size,), np.int32)}

    def loss_sums(self, params: Any, batch: Batch, *, deterministic: bool, dropout_rng=None) -> dict:
        real_B = real_examples(batch, batch["input_ids"].shape[0])
        out = self.model.apply({"params": params}, batch["input_ids"], **self.model_inputs(batch),
                               deterministic=deterministic, start_positions=batch["start_positions"],
                               end_positions=batch["end_positions"], example_weights=real_B,
                               rngs=None if deterministic else {"dropout": dropout_rng})
        return {"span_loss_sum": (out["start_loss_sum"] + out["end_loss_sum"]) / 2,
                "start_correct_sum": out["start_correct_sum"], "end_correct_sum": out["end_correct_sum"],
                **self.counts(batch)}

    def counts(self, batch: Batch) -> dict:
        return {"span_count": jnp.sum(real_examples(batch, batch["input_ids"].shape[0]))}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums["span_count"], 1.0)
        return {"loss": sums["span_loss_sum"] / n, "start_accuracy": sums["start_correct_sum"] / n,
                "end_accuracy": sums["end_correct_sum"] / n}
