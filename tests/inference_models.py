"""Small real models for the inference tests: transformers' PyTorch models with random weights, their
parameters in our layout, a trained byte-level BPE tokenizer, and run directories as ``pretrain`` leaves
them (Orbax checkpoint, model_config.json, tokenizer/)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

from bertgpt_jax import configs, convert, tokenization
from bertgpt_jax.inference import loading

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.", "Python is a programming language that lets you work quickly.",
    "A list is a sequence of items; a tuple cannot be changed.", "Generators yield values one at a time.",
    "The interpreter reads the source file and runs it line by line.", "Every module has its own namespace.",
] * 20


def bpe_tokenizer(vocab_size: int = 400):
    return tokenization.train_tokenizer(SENTENCES, kind="bpe", vocab_size=vocab_size, do_lower_case=False,
                                        min_frequency=1)


def gpt2_config(vocab_size: int, **changes) -> configs.ModelConfig:
    vocab_size = -(-vocab_size // 8) * 8  # divisible by the tensor axis of a test mesh
    return configs.get("gpt2").replace(**{
        **dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
               intermediate_size=128, max_position_embeddings=128, hidden_dropout_prob=0.0,
               attention_probs_dropout_prob=0.0, bos_token_id=vocab_size - 1, eos_token_id=vocab_size - 1),
        **changes})


def hf_model(cfg: configs.ModelConfig, seed: int = 0, std: float = 0.1, position_std: float = 1.0):
    """transformers' model for ``cfg`` with random weights. Large position embeddings make a random GPT-2's
    greedy output vary from step to step instead of repeating one token."""
    hf_cfg = {**cfg.to_hf_dict(), "attn_implementation": "eager"}  # eager returns attention weights
    if cfg.is_gpt:
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_cfg))
    else:
        model = transformers.BertForMaskedLM(transformers.BertConfig(**hf_cfg))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, position_std if ("wpe" in name or "position_embeddings" in name) else std)
    return model.eval()


def params_of(cfg: configs.ModelConfig, model) -> dict:
    tensors = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return convert.params_from_hf_tensors(cfg, tensors, init_missing_heads=cfg.is_bert)


def write_run(output_dir: str, cfg: configs.ModelConfig, params: dict, tokenizer) -> str:
    """A pretraining run's output_dir: the params in an Orbax checkpoint at step 1, plus what ``pretrain``
    writes for the inference tools."""
    from bertgpt_jax.training.checkpointing import Checkpointer, checkpoint_dir
    from bertgpt_jax.training.state import TrainState

    tok_dir = os.path.join(output_dir, "store_tokenizer")
    tokenizer.save(tok_dir)
    loading.save_run_description(output_dir, cfg, tok_dir)
    ckpt = Checkpointer(checkpoint_dir(output_dir), async_save=False)
    ckpt.save(TrainState(step=jnp.int32(1), params=jax.tree.map(jnp.asarray, params),
                         opt_state={"count": jnp.int32(0)}, rng=jax.random.key_data(jax.random.key(0))))
    ckpt.close()
    return output_dir


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
