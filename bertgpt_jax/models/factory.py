"""Building a model from its config, with the backend kernels chosen once, there."""

from __future__ import annotations

import flax.linen as nn
import jax

from bertgpt_jax.configs import ModelConfig
from bertgpt_jax.models import kernels
from bertgpt_jax.models.bert import Bert
from bertgpt_jax.models.gpt2 import GPT2


def resolve_kernels(cfg: ModelConfig, platform: str | None = None) -> ModelConfig:
    """``cfg`` with ``kernels="auto"`` replaced by the implementation for ``platform`` (default: the platform
    of ``jax.devices()``, i.e. where this process computes). Ahead-of-time compilation for other hardware
    names its platform (``"tpu"``)."""
    if cfg.kernels != "auto":
        return cfg
    platform = platform or jax.devices()[0].platform
    return cfg.replace(kernels=kernels.resolve(cfg.kernels, platform, cfg.dtype))


def from_config(cfg: ModelConfig, platform: str | None = None) -> nn.Module:
    """BERT with pretraining heads for ``model_type="bert"``; the GPT-2 LM for ``"gpt2"``. The backend
    kernels are chosen here, once (see :func:`resolve_kernels`)."""
    cfg = resolve_kernels(cfg, platform)
    if cfg.is_bert:
        return Bert(cfg)
    if cfg.is_gpt:
        return GPT2(cfg)
    raise ValueError(f"model_type {cfg.model_type!r} is not one of 'bert', 'gpt2'")
