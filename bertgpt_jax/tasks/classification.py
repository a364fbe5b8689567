"""Sentence and sentence-pair classification and regression (GLUE, XNLI, the user's own labelled text): the
objective ``run_classifier.py`` fine-tunes, mean cross-entropy over the batch's real examples (squared error
for a regression task with one output)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from bertgpt_jax import configs, models
from bertgpt_jax.models.finetune import SequenceClassifier
from bertgpt_jax.tasks.base import Batch, real_examples
from bertgpt_jax.tasks.finetuning import Features, FinetuneTask


class SequenceClassification(FinetuneTask):
    """``num_labels`` classes from the pooled [CLS] output; ``num_labels == 1`` is regression (MSE)."""

    def __init__(self, model_cfg: configs.ModelConfig, num_labels: int, max_seq_length: int,
                 train_features: Features | None = None, eval_features: Features | None = None,
                 layer_mix: bool = False, freeze_encoder: bool = False):
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1 (1 = regression), got {num_labels}")
        model = SequenceClassifier(models.resolve_kernels(model_cfg), num_labels, layer_mix=layer_mix,
                                   freeze_encoder=freeze_encoder)
        super().__init__(model_cfg, model, max_seq_length, train_features, eval_features)
        self.num_labels = num_labels
        self.headline_metrics = ("loss",) if num_labels == 1 else ("accuracy", "loss")

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    def example_batch(self, batch_size: int) -> Batch:
        ids = np.zeros((batch_size, self.seq_len), np.int32)
        return {"input_ids": ids, "input_mask": np.ones_like(ids), "segment_ids": ids,
                "label_ids": np.zeros((batch_size,), np.float32 if self.is_regression else np.int32)}

    def loss_sums(self, params: Any, batch: Batch, *, deterministic: bool, dropout_rng=None) -> dict:
        real_B = real_examples(batch, batch["input_ids"].shape[0])
        out = self.model.apply({"params": params}, batch["input_ids"], **self.model_inputs(batch),
                               deterministic=deterministic, labels=batch["label_ids"], example_weights=real_B,
                               rngs=None if deterministic else {"dropout": dropout_rng})
        out.pop("logits")
        return {**out, **self.counts(batch)}

    def flops_per_token(self) -> float:
        # The pooled head's encoder runs its last layer past keys and values at [CLS] only (SequenceClassifier).
        cls_only = not self.model.layer_mix and not self.model_cfg.scan_layers
        return models.flops_per_token(self.model_cfg, self.seq_len, 0, heads_only=cls_only)

    def counts(self, batch: Batch) -> dict:
        return {"cls_count": jnp.sum(real_examples(batch, batch["input_ids"].shape[0]))}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums["cls_count"], 1.0)
        out = {"loss": sums["cls_loss_sum"] / n}
        if "cls_correct_sum" in sums:
            out["accuracy"] = sums["cls_correct_sum"] / n
        return out


def probabilities(logits_BxC: np.ndarray) -> np.ndarray:
    """Softmax over classes in float64 (what test_results.tsv lists)."""
    z = np.asarray(logits_BxC, np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)
