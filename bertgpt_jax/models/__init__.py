"""BERT and GPT-2 as Flax linen modules; ``from_config`` picks one from a ``ModelConfig``."""

from __future__ import annotations

import flax.linen as nn

from bertgpt_jax.configs import ModelConfig
from bertgpt_jax.models.accounting import count_params, flops_per_token
from bertgpt_jax.models.bert import Bert
from bertgpt_jax.models.gpt2 import GPT2
from bertgpt_jax.models.outputs import BertOutput, GPT2Output


def from_config(cfg: ModelConfig) -> nn.Module:
    """BERT with pretraining heads for ``model_type="bert"``; the GPT-2 LM for ``"gpt2"``."""
    if cfg.is_bert:
        return Bert(cfg)
    if cfg.is_gpt:
        return GPT2(cfg)
    raise ValueError(f"model_type {cfg.model_type!r} is not one of 'bert', 'gpt2'")


__all__ = ["Bert", "BertOutput", "GPT2", "GPT2Output", "count_params", "flops_per_token", "from_config"]
