"""Token classification (NER and other tagging): per-token logits, mean cross-entropy over the first piece of
each word in the batch's real examples; the other pieces, specials and padding count for nothing."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

from bertgpt_jax import configs, models
from bertgpt_jax.models.finetune import TokenClassifier
from bertgpt_jax.tasks.base import Batch, real_examples
from bertgpt_jax.tasks.finetuning import Features, FinetuneTask


class TokenClassification(FinetuneTask):
    headline_metrics = ("accuracy", "loss")

    def __init__(self, model_cfg: configs.ModelConfig, num_labels: int, max_seq_length: int,
                 train_features: Features | None = None, eval_features: Features | None = None):
        super().__init__(model_cfg, TokenClassifier(models.resolve_kernels(model_cfg), num_labels), max_seq_length,
                         train_features, eval_features)
        self.num_labels = num_labels

    def example_batch(self, batch_size: int) -> Batch:
        ids = np.zeros((batch_size, self.seq_len), np.int32)
        return {"input_ids": ids, "input_mask": np.ones_like(ids), "segment_ids": ids, "label_ids": ids,
                "label_weights": np.zeros((batch_size, self.seq_len), np.float32)}

    def _weights(self, batch: Batch):
        real_B = real_examples(batch, batch["input_ids"].shape[0])
        return jnp.asarray(batch["label_weights"], jnp.float32) * real_B[:, None]

    def loss_sums(self, params: Any, batch: Batch, *, deterministic: bool, dropout_rng=None) -> dict:
        out = self.model.apply({"params": params}, batch["input_ids"], **self.model_inputs(batch),
                               deterministic=deterministic, labels=batch["label_ids"],
                               label_weights=self._weights(batch),
                               rngs=None if deterministic else {"dropout": dropout_rng})
        out.pop("logits")
        return {**out, **self.counts(batch)}

    def counts(self, batch: Batch) -> dict:
        return {"tok_count": jnp.sum(self._weights(batch))}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums["tok_count"], 1.0)
        return {"loss": sums["tok_loss_sum"] / n, "accuracy": sums["tok_correct_sum"] / n}
