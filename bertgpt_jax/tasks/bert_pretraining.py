"""BERT pretraining: masked LM + next-sentence prediction, the loss the original ``run_pretraining.py`` trains.

The objective is mean MLM NLL over the weighted masked positions plus mean NSP NLL over the examples. The
model runs its last layer only at [CLS] and the masked positions (``heads_only``), which is all the heads
read, and computes the MLM cross-entropy fused with its tied decoder.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from bertgpt_jax import configs, models
from bertgpt_jax.tasks import synthetic
from bertgpt_jax.tasks.base import Batch, real_examples
from bertgpt_jax.tasks.pretraining import PretrainingData, PretrainingTask


class BertPretraining(PretrainingTask):
    headline_metrics = ("masked_lm_accuracy", "next_sentence_accuracy")

    def __init__(self, model_cfg: configs.ModelConfig, data: PretrainingData):
        if not model_cfg.is_bert:
            raise ValueError(f"BERT pretraining needs a BERT model config, got model_type {model_cfg.model_type!r}")
        super().__init__(model_cfg, data)
        self.max_predictions = data.max_predictions_per_seq

    def check(self) -> None:
        super().check()
        if not 0 < self.max_predictions <= self.seq_len:
            raise ValueError(f"max_predictions_per_seq {self.max_predictions} must lie in "
                             f"[1, max_seq_length={self.seq_len}]")
        if self.data.synthetic:
            if self.seq_len < 8:
                raise ValueError(f"synthetic BERT data needs max_seq_length >= 8, got {self.seq_len}")

    def example_batch(self, batch_size: int) -> Batch:
        T, P = self.seq_len, self.max_predictions
        ids = np.zeros((batch_size, T), np.int32)
        return {"input_ids": ids, "input_mask": np.ones_like(ids), "segment_ids": ids,
                "masked_lm_positions": np.zeros((batch_size, P), np.int32),
                "masked_lm_ids": np.zeros((batch_size, P), np.int32),
                "masked_lm_weights": np.zeros((batch_size, P), np.float32),
                "next_sentence_labels": np.zeros((batch_size,), np.int32)}

    def init_params(self, rng: jax.Array, batch: Batch) -> Any:
        return self.model.init({"params": rng}, batch["input_ids"], attention_mask=batch["input_mask"],
                               token_type_ids=batch["segment_ids"], masked_lm_positions=batch["masked_lm_positions"],
                               deterministic=True)["params"]

    def loss_sums(self, params, batch, *, deterministic, dropout_rng=None):
        real_B = real_examples(batch, batch["next_sentence_labels"].shape[0])
        out = self.model.apply(
            {"params": params}, batch["input_ids"], attention_mask=batch["input_mask"],
            token_type_ids=batch["segment_ids"], masked_lm_positions=batch["masked_lm_positions"],
            masked_lm_ids=batch["masked_lm_ids"], masked_lm_weights=batch["masked_lm_weights"],
            next_sentence_labels=batch["next_sentence_labels"], example_weights=real_B,
            deterministic=deterministic, rngs=None if deterministic else {"dropout": dropout_rng},
            heads_only=True)
        return {**out.loss_sums, **self.counts(batch)}

    def counts(self, batch):
        return {"mlm_count": jnp.sum(jnp.asarray(batch["masked_lm_weights"], jnp.float32)),
                "nsp_count": jnp.sum(real_examples(batch, batch["next_sentence_labels"].shape[0]))}

    def summarize(self, sums: dict[str, float]) -> dict[str, float]:
        mlm = sums["mlm_loss_sum"] / max(sums["mlm_count"], 1.0)
        nsp = sums["nsp_loss_sum"] / max(sums["nsp_count"], 1.0)
        return {"loss": mlm + nsp, "masked_lm_loss": mlm, "next_sentence_loss": nsp,
                "masked_lm_accuracy": sums["mlm_correct_sum"] / max(sums["mlm_count"], 1.0),
                "next_sentence_accuracy": sums["nsp_correct_sum"] / max(sums["nsp_count"], 1.0)}

    def flops_per_token(self) -> float:
        return models.flops_per_token(self.model_cfg, self.seq_len, self.max_predictions,
                                      heads_only=not self.model_cfg.scan_layers)

    def dataset(self, split: str, seed: int):
        from bertgpt_jax import data

        d = self.data
        return data.bert_dataset(d.dataset, split=split, max_seq_length=self.seq_len,
                                 max_predictions_per_seq=self.max_predictions, masked_lm_prob=d.masked_lm_prob,
                                 short_seq_prob=d.short_seq_prob, whole_word_mask=d.do_whole_word_mask,
                                 dupe_factor=d.dupe_factor, dynamic_masking=d.dynamic_masking, seed=d.random_seed,
                                 vocab_file=d.vocab_file)

    def synthetic_batch(self, rng: np.random.Generator, batch: int) -> Batch:
        """[CLS] A [SEP] B [SEP] of counting tokens; B is the continuation or (label 1) another count."""
        T, P, V = self.seq_len, self.max_predictions, self.model_cfg.vocab_size
        content = T - 3
        len_a = rng.integers(content // 4, 3 * content // 4 + 1, size=batch)
        first = synthetic.counting(rng, (batch, content), V)
        other = synthetic.counting(rng, (batch, content), V)
        is_random_next = rng.integers(0, 2, size=batch).astype(np.int32)
        input_ids = np.zeros((batch, T), np.int32)
        segment_ids = np.zeros((batch, T), np.int32)
        positions = np.zeros((batch, P), np.int32)
        ids = np.zeros((batch, P), np.int32)
        weights = np.zeros((batch, P), np.float32)
        for b in range(batch):
            a = int(len_a[b])
            second = other[b] if is_random_next[b] else first[b]
            input_ids[b] = np.concatenate([[synthetic.CLS], first[b, :a], [synthetic.SEP], second[a:content],
                                           [synthetic.SEP]])
            segment_ids[b, a + 2:] = 1
            candidates = np.concatenate([np.arange(1, a + 1), np.arange(a + 2, T - 1)])
            n_pred = min(P, max(1, int(round(0.15 * len(candidates)))))
            chosen = np.sort(rng.choice(candidates, size=n_pred, replace=False))
            positions[b, :n_pred] = chosen
            ids[b, :n_pred] = input_ids[b, chosen]
            weights[b, :n_pred] = 1.0
            input_ids[b, chosen] = synthetic.MASK
        return {"input_ids": input_ids, "input_mask": np.ones((batch, T), np.int32), "segment_ids": segment_ids,
                "masked_lm_positions": positions, "masked_lm_ids": ids, "masked_lm_weights": weights,
                "next_sentence_labels": is_random_next}
