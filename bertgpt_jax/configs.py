"""Model configurations: one frozen dataclass, named presets, and HF / original-BERT JSON round trips.

Variants are made with ``cfg.replace(...)`` (e.g. ``cfg.replace(dtype="bfloat16", remat="full")``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

from bertgpt_jax import atomic_files

MODEL_TYPES = ("bert", "gpt2")
HIDDEN_ACTS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "tanh", "silu")
REMAT_POLICIES = ("none", "full", "dots")
DTYPES = ("float32", "bfloat16", "float16")
# Which implementation of the backend-specific pieces runs (bertgpt_jax.models.kernels): "auto" picks the
# one for the platform the model is compiled for when the model is built.
KERNELS = ("auto", "xla", "cpu", "cudnn")
# Kernels for inference only, which a model built for generation chooses itself (never a training flag).
INFERENCE_KERNELS = ("cpu_decoding",)


def check_positions(length: int, max_position_embeddings: int | None, name: str = "sequence length") -> None:
    """The one check of a length against a model's position table (models, pipelines and runs call it)."""
    if max_position_embeddings is not None and length > max_position_embeddings:
        raise ValueError(f"{name} {length} exceeds the model's position table (max_position_embeddings "
                         f"{max_position_embeddings}); use {name} <= {max_position_embeddings} or a model "
                         "with a longer position table")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes and behaviour of a BERT or GPT-2 model.

    Field names follow HF's BERT config (GPT-2's ``n_embd``/``n_layer``/... map onto them on import).
    ``dtype`` is the compute dtype; ``param_dtype`` the dtype parameters are stored in.
    """

    model_type: str = "bert"
    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # BERT only; GPT-2 has no segment embeddings.
    hidden_act: str = "gelu"  # "gelu" is exact erf GELU; "gelu_new" the tanh approximation (GPT-2).
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    # Execution settings (not part of the published architecture); the training config takes its
    # defaults for the same settings from here.
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    scan_layers: bool = False
    kernels: str = "auto"

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"model_type {self.model_type!r} is not one of {MODEL_TYPES}")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}")
        if self.hidden_act not in HIDDEN_ACTS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not one of {HIDDEN_ACTS}")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat {self.remat!r} is not one of {REMAT_POLICIES}")
        if self.kernels not in KERNELS + INFERENCE_KERNELS:
            raise ValueError(f"kernels {self.kernels!r} is not one of {KERNELS + INFERENCE_KERNELS}")
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ValueError(f"{name} {getattr(self, name)!r} is not one of {DTYPES}")
        if self.model_type == "bert" and self.type_vocab_size <= 0:
            raise ValueError(f"type_vocab_size must be positive for BERT, got {self.type_vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def is_bert(self) -> bool:
        return self.model_type == "bert"

    @property
    def is_gpt(self) -> bool:
        return self.model_type == "gpt2"

    def replace(self, **changes: Any) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    # ---- JSON round trips -------------------------------------------------------------------

    def to_hf_dict(self) -> dict:
        """The ``config.json`` transformers writes for this architecture."""
        if self.is_bert:
            return {
                "architectures": ["BertForPreTraining"],
                "model_type": "bert",
                "vocab_size": self.vocab_size,
                "hidden_size": self.hidden_size,
                "num_hidden_layers": self.num_hidden_layers,
                "num_attention_heads": self.num_attention_heads,
                "intermediate_size": self.intermediate_size,
                "hidden_act": self.hidden_act,
                "hidden_dropout_prob": self.hidden_dropout_prob,
                "attention_probs_dropout_prob": self.attention_probs_dropout_prob,
                "max_position_embeddings": self.max_position_embeddings,
                "type_vocab_size": self.type_vocab_size,
                "initializer_range": self.initializer_range,
                "layer_norm_eps": self.layer_norm_eps,
                "pad_token_id": self.pad_token_id,
                "position_embedding_type": "absolute",
            }
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": self.vocab_size,
            "n_embd": self.hidden_size,
            "n_layer": self.num_hidden_layers,
            "n_head": self.num_attention_heads,
            "n_inner": self.intermediate_size,
            "n_positions": self.max_position_embeddings,
            "activation_function": self.hidden_act,
            "resid_pdrop": self.hidden_dropout_prob,
            "embd_pdrop": self.hidden_dropout_prob,
            "attn_pdrop": self.attention_probs_dropout_prob,
            "layer_norm_epsilon": self.layer_norm_eps,
            "initializer_range": self.initializer_range,
            "bos_token_id": self.bos_token_id if self.bos_token_id is not None else self.vocab_size - 1,
            "eos_token_id": self.eos_token_id if self.eos_token_id is not None else self.vocab_size - 1,
            "tie_word_embeddings": True,
        }

    def to_bert_config_dict(self) -> dict:
        """The original release's ``bert_config.json``."""
        if not self.is_bert:
            raise ValueError("bert_config.json describes BERT models; this config is model_type='gpt2'")
        return {
            "attention_probs_dropout_prob": self.attention_probs_dropout_prob,
            "hidden_act": self.hidden_act,
            "hidden_dropout_prob": self.hidden_dropout_prob,
            "hidden_size": self.hidden_size,
            "initializer_range": self.initializer_range,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_position_embeddings,
            "num_attention_heads": self.num_attention_heads,
            "num_hidden_layers": self.num_hidden_layers,
            "type_vocab_size": self.type_vocab_size,
            "vocab_size": self.vocab_size,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Reads an HF ``config.json`` (BERT or GPT-2) or an original ``bert_config.json``."""
        model_type = d.get("model_type")
        if model_type is None:
            # The original bert_config.json carries no model_type.
            model_type = "gpt2" if "n_embd" in d else "bert"
        if model_type == "bert":
            kw = dict(
                model_type="bert",
                vocab_size=d["vocab_size"],
                hidden_size=d["hidden_size"],
                num_hidden_layers=d["num_hidden_layers"],
                num_attention_heads=d["num_attention_heads"],
                intermediate_size=d["intermediate_size"],
                max_position_embeddings=d.get("max_position_embeddings", 512),
                type_vocab_size=d.get("type_vocab_size", 2),
                hidden_act=d.get("hidden_act", "gelu"),
                hidden_dropout_prob=d.get("hidden_dropout_prob", 0.1),
                attention_probs_dropout_prob=d.get("attention_probs_dropout_prob", 0.1),
                layer_norm_eps=d.get("layer_norm_eps", 1e-12),
                initializer_range=d.get("initializer_range", 0.02),
                pad_token_id=d.get("pad_token_id", 0) or 0,
            )
            pet = d.get("position_embedding_type", "absolute")
            if pet != "absolute":
                raise ValueError(f"position_embedding_type {pet!r} is not supported; only 'absolute'")
            return cls(**kw)
        if model_type == "gpt2":
            n_embd = d["n_embd"]
            return cls(
                model_type="gpt2",
                vocab_size=d["vocab_size"],
                hidden_size=n_embd,
                num_hidden_layers=d["n_layer"],
                num_attention_heads=d["n_head"],
                intermediate_size=d.get("n_inner") or 4 * n_embd,
                max_position_embeddings=d.get("n_positions", 1024),
                type_vocab_size=0,
                hidden_act=d.get("activation_function", "gelu_new"),
                hidden_dropout_prob=d.get("resid_pdrop", 0.1),
                attention_probs_dropout_prob=d.get("attn_pdrop", 0.1),
                layer_norm_eps=d.get("layer_norm_epsilon", 1e-5),
                initializer_range=d.get("initializer_range", 0.02),
                pad_token_id=0,
                bos_token_id=d.get("bos_token_id"),
                eos_token_id=d.get("eos_token_id"),
            )
        raise ValueError(f"model_type {model_type!r} is not supported; expected 'bert' or 'gpt2'")

    @classmethod
    def from_json_file(cls, path: str) -> "ModelConfig":
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        if not os.path.exists(path):
            raise FileNotFoundError(f"model config {path} does not exist")
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    def save_hf(self, path: str) -> None:
        """Writes ``config.json`` (``path`` is a directory or a file name), atomically."""
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        atomic_files.write_json(path, self.to_hf_dict(), indent=2, sort_keys=True)

    def save_bert_config(self, path: str) -> None:
        atomic_files.write_json(path, self.to_bert_config_dict(), indent=2, sort_keys=True)


def _bert(layers: int, hidden: int, heads: int) -> ModelConfig:
    return ModelConfig(model_type="bert", hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, intermediate_size=4 * hidden)


def _gpt2(layers: int, hidden: int, heads: int) -> ModelConfig:
    return ModelConfig(model_type="gpt2", vocab_size=50257, hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, intermediate_size=4 * hidden, max_position_embeddings=1024,
                       type_vocab_size=0, hidden_act="gelu_new", layer_norm_eps=1e-5,
                       bos_token_id=50256, eos_token_id=50256)


# Sizes of the published models (BERT README's small-model table; GPT-2 paper / HF hub).
PRESETS: dict[str, ModelConfig] = {
    "bert-tiny": _bert(2, 128, 2),
    "bert-mini": _bert(4, 256, 4),
    "bert-small": _bert(4, 512, 8),
    "bert-medium": _bert(8, 512, 8),
    "bert-base": _bert(12, 768, 12),
    "bert-large": _bert(24, 1024, 16),
    "gpt2": _gpt2(12, 768, 12),
    "gpt2-medium": _gpt2(24, 1024, 16),
    "gpt2-large": _gpt2(36, 1280, 20),
    "gpt2-xl": _gpt2(48, 1600, 25),
}
ALIASES = {"gpt2-124m": "gpt2", "gpt2-355m": "gpt2-medium", "gpt2-774m": "gpt2-large", "gpt2-1558m": "gpt2-xl"}


def get(name: str, **overrides: Any) -> ModelConfig:
    """A preset by name (``bert-base``, ``gpt2``, ...) or a path to ``config.json``/``bert_config.json``."""
    key = ALIASES.get(name.lower(), name.lower())
    if key in PRESETS:
        cfg = PRESETS[key]
    elif name.endswith(".json") or os.path.isdir(name):
        cfg = ModelConfig.from_json_file(name)
    else:
        known = ", ".join(list(PRESETS) + list(ALIASES))
        raise ValueError(f"unknown model {name!r}: expected one of {known}, or a path to a config.json")
    return cfg.replace(**overrides) if overrides else cfg
