"""Causal language modelling (GPT-2): mean next-token NLL over the target positions of packed windows.

The model's tied LM head computes the cross-entropy chunk by chunk, so no [B, T, V] logits exist.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bertgpt_jax import configs, models
from bertgpt_jax.tasks import synthetic
from bertgpt_jax.tasks.base import Batch, real_examples
from bertgpt_jax.tasks.pretraining import PretrainingData, PretrainingTask


class CausalLM(PretrainingTask):
    headline_metrics = ("loss", "perplexity")

    def __init__(self, model_cfg: configs.ModelConfig, data: PretrainingData):
        if not model_cfg.is_gpt:
            raise ValueError(f"causal LM training needs a GPT-2 model config, got model_type {model_cfg.model_type!r}")
        super().__init__(model_cfg, data)

    def example_batch(self, batch_size: int) -> Batch:
        ids = np.zeros((batch_size, self.seq_len), np.int32)
        return {"input_ids": ids, "targets": ids}

    def init_params(self, rng: jax.Array, batch: Batch) -> Any:
        return self.model.init({"params": rng}, batch["input_ids"], deterministic=True)["params"]

    @staticmethod
    def _weights(batch: Batch) -> jax.Array:
        # A negative target (padding) counts for nothing, nor does a padding row of an eval batch.
        targets = jnp.asarray(batch["targets"])
        return (targets >= 0).astype(jnp.float32) * real_examples(batch, targets.shape[0])[:, None]

    def loss_sums(self, params, batch, *, deterministic, dropout_rng=None):
        out = self.model.apply({"params": params}, batch["input_ids"], segment_ids=batch.get("segment_ids"),
                               position_ids=batch.get("position_ids"),
                               targets=jnp.maximum(jnp.asarray(batch["targets"]), 0),
                               target_weights=self._weights(batch), deterministic=deterministic,
                               rngs=None if deterministic else {"dropout": dropout_rng})
        return {**out.loss_sums, **self.counts(batch)}

    def counts(self, batch):
        return {"lm_count": jnp.sum(self._weights(batch))}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        lm = sums["lm_loss_sum"] / max(sums["lm_count"], 1.0)
        return {"loss": lm, "perplexity": math.exp(min(lm, 50.0)),
                "accuracy": sums["lm_correct_sum"] / max(sums["lm_count"], 1.0)}

    def flops_per_token(self) -> float:
        return models.flops_per_token(self.model_cfg, self.seq_len)

    def dataset(self, split: str, seed: int):
        from bertgpt_jax import data

        return data.gpt_dataset(self.data.dataset, split=split, seq_len=self.seq_len, vocab_file=self.data.vocab_file)

    def synthetic_batch(self, rng: np.random.Generator, batch: int) -> Batch:
        tokens = synthetic.counting(rng, (batch, self.seq_len + 1), self.model_cfg.vocab_size)
        return {"input_ids": tokens[:, :-1], "targets": tokens[:, 1:]}
