"""Perplexity: GPT-2's over sliding windows, BERT's masked-LM pseudo-perplexity.

GPT-2 (the standard strided evaluation): the text is one token stream; windows of ``max_length`` tokens
start every ``stride`` tokens, and each window scores only the tokens the previous window did not, so
every token after the first is scored exactly once with at least ``max_length - stride`` tokens of
context (when there are that many before it). ``stride = max_length`` gives disjoint windows, whose first
tokens are then not scored (nothing in their window predicts them), as in transformers' recipe.
Perplexity = exp(sum of NLL / tokens scored).

BERT (Salazar et al. 2020, "Masked Language Model Scoring"): for each line, every token but [CLS]/[SEP]
is masked in turn and scored from the rest; pseudo-perplexity = exp(-mean log p) over all such tokens.
"""

from __future__ import annotations

import dataclasses
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bertgpt_jax import sharding
from bertgpt_jax.cli import setting
from bertgpt_jax.inference import text_inputs
from bertgpt_jax.inference.loading import LoadedModel, ModelSource


@dataclasses.dataclass(frozen=True)
class Perplexity:
    perplexity: float
    nll_sum: float
    tokens: int
    method: str  # how the tokens were scored, in words

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def windows(num_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """``(begin, end, first scored position)`` of each window over ``num_tokens`` tokens."""
    if not 0 < stride <= max_length:
        raise ValueError(f"stride must be in [1, max_length={max_length}], got {stride}")
    out, prev_end = [], 0
    for begin in range(0, num_tokens, stride):
        end = min(begin + max_length, num_tokens)
        first = max(prev_end, begin + 1)  # the window's first token has no context inside it
        if first < end:
            out.append((begin, end, first))
        prev_end = end
        if end == num_tokens:
            break
    return out


def gpt2_perplexity(loaded: LoadedModel, token_ids: list[int], max_length: int | None = None,
                    stride: int | None = None, batch_size: int = 8) -> Perplexity:
    """Strided sliding-window perplexity of one token stream."""
    cfg = loaded.cfg
    max_length = max_length or cfg.max_position_embeddings
    stride = stride or max(max_length // 2, 1)
    if max_length > cfg.max_position_embeddings:
        raise ValueError(f"max_length {max_length} exceeds the model's context of {cfg.max_position_embeddings} "
                         "(n_positions)")
    if len(token_ids) < 2:
        raise ValueError(f"the text has {len(token_ids)} token(s); perplexity needs at least 2")
    wins = windows(len(token_ids), max_length, stride)
    ids = np.asarray(token_ids, np.int32)
    model = loaded.model

    def nll(params, ids_BxT, targets_BxT, weights_BxT):
        out = model.apply({"params": params}, ids_BxT, targets=targets_BxT, target_weights=weights_BxT)
        return out.loss_sums["lm_loss_sum"]

    rows = sharding.batch_sharding(loaded.mesh, 2)
    fn = jax.jit(nll, in_shardings=(jax.tree.map(lambda p: p.sharding, loaded.params), rows, rows, rows))
    dp = sharding.data_parallel_size(loaded.mesh)
    batch_size = text_inputs.round_up(batch_size, dp)
    total, scored = 0.0, 0
    T = max_length - 1  # a window of n tokens predicts n - 1 of them
    for start in range(0, len(wins), batch_size):
        chunk = wins[start:start + batch_size]
        B = text_inputs.round_up(len(chunk), dp)
        x, y, w = (np.zeros((B, T), np.int32) for _ in range(3))
        w = w.astype(np.float32)
        for r, (begin, end, first) in enumerate(chunk):
            n = end - begin - 1
            x[r, :n], y[r, :n] = ids[begin:end - 1], ids[begin + 1:end]
            w[r, first - begin - 1:n] = 1.0  # target j of the window is token begin + j + 1
            scored += n - (first - begin - 1)
        with jax.set_mesh(loaded.mesh), nn.logical_axis_rules(sharding.RULES):
            total += float(jax.device_get(fn(loaded.params, x, y, w)))
    method = (f"sliding windows of {max_length} tokens, stride {stride}: each token scored once with up to "
              f"{max_length - 1} tokens of context")
    return Perplexity(math.exp(total / scored), total, scored, method)


def bert_pseudo_perplexity(loaded: LoadedModel, texts: list[str], max_seq_length: int = 128,
                           batch_size: int = 32) -> Perplexity:
    """Masked-LM pseudo-perplexity over ``texts`` (one sentence or passage each)."""
    if "mlm" not in loaded.params:
        raise ValueError(f"{loaded.source} has no masked-LM head; pseudo-perplexity needs one")
    tok = loaded.require_tokenizer()
    model = loaded.model
    copies: list[tuple[list[int], int]] = []  # (ids with one position masked, that position)
    originals: list[int] = []
    for text in texts:
        enc = text_inputs.encode_bert(tok, text, None, max_seq_length)
        for p in range(1, len(enc.input_ids) - 1):
            masked = list(enc.input_ids)
            originals.append(masked[p])
            masked[p] = tok.mask_token_id
            copies.append((masked, p))
    if not copies:
        raise ValueError("no token to score: the texts are empty")

    def log_p(params, ids_BxT, mask_BxT, positions_Bx1, labels_B):
        out = model.apply({"params": params}, ids_BxT, attention_mask=mask_BxT, masked_lm_positions=positions_Bx1)
        logp_BxV = jax.nn.log_softmax(out.mlm_logits[:, 0], axis=-1)
        return jnp.take_along_axis(logp_BxV, labels_B[:, None], axis=1)[:, 0]

    rows = sharding.batch_sharding(loaded.mesh, 2)
    vec = sharding.batch_sharding(loaded.mesh, 1)
    fn = jax.jit(log_p, in_shardings=(jax.tree.map(lambda p: p.sharding, loaded.params), rows, rows, rows, vec))
    dp = sharding.data_parallel_size(loaded.mesh)
    batch_size = text_inputs.round_up(batch_size, dp)
    total = 0.0
    for start in range(0, len(copies), batch_size):
        chunk = copies[start:start + batch_size]
        B = text_inputs.round_up(len(chunk), dp)
        T = text_inputs.length_bucket(max(len(c[0]) for c in chunk), max_seq_length)
        ids, mask = np.zeros((B, T), np.int32), np.zeros((B, T), np.int32)
        pos, labels = np.zeros((B, 1), np.int32), np.zeros((B,), np.int32)
        for r, (x, p) in enumerate(chunk):
            ids[r, :len(x)], mask[r, :len(x)], pos[r, 0], labels[r] = x, 1, p, originals[start + r]
        with jax.set_mesh(loaded.mesh), nn.logical_axis_rules(sharding.RULES):
            lp = np.asarray(jax.device_get(fn(loaded.params, ids, mask, pos, labels)))
        total -= float(lp[:len(chunk)].sum())
    method = "masked-LM pseudo-perplexity: each token but [CLS]/[SEP] masked in turn and scored from the rest"
    return Perplexity(math.exp(total / len(copies)), total, len(copies), method)


@dataclasses.dataclass(frozen=True)
class PerplexityConfig:
    """The settings of ``python -m bertgpt_jax.perplexity``."""

    input_file: str | None = setting(None, "The text: GPT-2 reads the whole file as one token stream; BERT scores "
                                     "each non-blank line.", required=True)
    max_seq_length: int | None = setting(None, "GPT-2: window length (default: the model's n_positions); BERT: "
                                         "tokens per line (default 128).")
    stride: int | None = setting(None, "GPT-2: tokens between window starts (default: half the window).")
    batch_size: int = setting(8, "Windows (GPT-2) or masked copies (BERT) per forward pass.")
    output_file: str | None = setting(None, "Write the result as JSON (perplexity, nll_sum, tokens, method).")


def run(source: ModelSource, cfg: PerplexityConfig) -> Perplexity:
    if not os.path.exists(cfg.input_file):
        raise FileNotFoundError(f"--input_file {cfg.input_file} does not exist")
    with open(cfg.input_file, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        raise ValueError(f"--input_file {cfg.input_file} is empty; perplexity needs text to score")
    loaded = source.load(purpose="perplexity", need_mlm_head=True)
    tok = loaded.require_tokenizer()
    if loaded.cfg.is_gpt:
        result = gpt2_perplexity(loaded, tok.encode(text), cfg.max_seq_length, cfg.stride, cfg.batch_size)
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        result = bert_pseudo_perplexity(loaded, lines, cfg.max_seq_length or 128, cfg.batch_size)
    if cfg.output_file:
        from bertgpt_jax import atomic_files

        os.makedirs(os.path.dirname(os.path.abspath(cfg.output_file)), exist_ok=True)
        atomic_files.write_json(cfg.output_file, result.to_dict(), indent=2)
    return result
