"""Tiny model configs and run settings shared by the training tests."""

from __future__ import annotations

import dataclasses
import os

from bertgpt_jax import configs, pretrain, tasks
from bertgpt_jax.tasks.pretraining import PretrainingData
from bertgpt_jax.training.config import TrainConfig

_DATA_FIELDS = {f.name for f in dataclasses.fields(PretrainingData)}


def tiny_config(model_type: str = "bert", dropout: float = 0.1, **changes) -> configs.ModelConfig:
    return configs.ModelConfig(
        model_type=model_type, vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2 if model_type == "bert" else 0,
        hidden_act="gelu" if model_type == "bert" else "gelu_new", hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout, layer_norm_eps=1e-12 if model_type == "bert" else 1e-5, **changes)


def tiny_config_file(tmp_dir: str, model_type: str = "bert", dropout: float = 0.1) -> str:
    path = os.path.join(tmp_dir, f"{model_type}_tiny_config.json")
    tiny_config(model_type, dropout).save_hf(path)
    return path


def split_settings(**settings) -> tuple[TrainConfig, PretrainingData]:
    """One set of keyword settings -> the engine's and the pretraining data's configs."""
    data = {k: v for k, v in settings.items() if k in _DATA_FIELDS}
    train = {k: v for k, v in settings.items() if k not in _DATA_FIELDS}
    return TrainConfig(**train), PretrainingData(**data)


def run_pretraining(**settings) -> dict:
    """``python -m bertgpt_jax.pretrain`` with these settings, in this process."""
    return pretrain.run(*split_settings(**settings))


def synthetic_task(cfg: configs.ModelConfig, seq_len: int, max_predictions: int = 5) -> tasks.Task:
    return tasks.task_for(cfg, PretrainingData(dataset="synthetic", max_seq_length=seq_len,
                                               max_predictions_per_seq=max_predictions))
