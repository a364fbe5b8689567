"""Tiny model configs and run settings shared by the training tests."""

from __future__ import annotations

import os

from bertgpt_jax import configs


def tiny_config(model_type: str = "bert", dropout: float = 0.1) -> configs.ModelConfig:
    return configs.ModelConfig(
        model_type=model_type, vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2 if model_type == "bert" else 0,
        hidden_act="gelu" if model_type == "bert" else "gelu_new", hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout, layer_norm_eps=1e-12 if model_type == "bert" else 1e-5)


def tiny_config_file(tmp_dir: str, model_type: str = "bert", dropout: float = 0.1) -> str:
    path = os.path.join(tmp_dir, f"{model_type}_tiny_config.json")
    tiny_config(model_type, dropout).save_hf(path)
    return path
