"""Fill-mask with BERT's masked-LM head: the k most likely tokens for each [MASK], and whole words.

The text is tokenized around each ``[MASK]`` (the tokenizer's own mask token), so the mask stays one token.
Consecutive ``[MASK]``s stand for one word's pieces: besides each mask's own top-k, the word's top-k are
found by a beam over the pieces (a word start first, then continuation pieces such as ``##ing``), each
piece's probability read independently from the same forward pass and multiplied.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np

from bertgpt_jax import sharding
from bertgpt_jax.cli import setting
from bertgpt_jax.inference import text_inputs
from bertgpt_jax.inference.loading import LoadedModel, ModelSource


@dataclasses.dataclass(frozen=True)
class Candidate:
    text: str
    probability: float
    token_ids: list[int]


@dataclasses.dataclass(frozen=True)
class MaskedWord:
    """One run of consecutive [MASK]s: its token positions, each position's top-k, and the top-k words."""

    positions: list[int]
    per_mask: list[list[Candidate]]
    words: list[Candidate]


def encode_masked(tokenizer, text: str, max_seq_length: int) -> tuple[list[int], list[int]]:
    """``([CLS] ... [SEP]`` ids, the positions of the masks)``; a text without [MASK] is an error."""
    mask_id = tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError(f"{tokenizer!r} has no [MASK] token; fill-mask needs a BERT vocabulary")
    mask = tokenizer.id_to_token(mask_id)
    pieces = text.split(mask)
    if len(pieces) == 1:
        raise ValueError(f"the text {text!r} has no {mask}; write {mask} where a word should be filled in, e.g. "
                         f"'The {mask} statement ends a loop.'")
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i:
            ids.append(mask_id)
        ids += tokenizer.encode(piece) if piece.strip() else []
    encoded = text_inputs.encode_bert(tokenizer, ids, None, max_seq_length=len(ids) + 2)
    if len(encoded.input_ids) > max_seq_length:
        raise ValueError(f"the text has {len(encoded.input_ids)} tokens with [CLS] and [SEP], more than "
                         f"max_seq_length {max_seq_length}")
    return encoded.input_ids, [p for p, t in enumerate(encoded.input_ids) if t == mask_id]


def _runs(positions: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for p in positions:
        if runs and runs[-1][-1] == p - 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


class FillMask:
    """Compiled masked-LM forward passes; logits at the masked positions only."""

    def __init__(self, loaded: LoadedModel):
        if not loaded.cfg.is_bert:
            raise ValueError(f"{loaded.source} is a {loaded.cfg.model_type} model; fill-mask needs BERT")
        if "mlm" not in loaded.params:
            raise ValueError(f"{loaded.source} has no masked-LM head; fill-mask needs one")
        self.loaded = loaded
        model = loaded.model

        def forward(params, ids_BxT, mask_BxT, positions_BxP):
            out = model.apply({"params": params}, ids_BxT, attention_mask=mask_BxT, masked_lm_positions=positions_BxP)
            return jax.nn.log_softmax(out.mlm_logits, axis=-1)

        rows = sharding.batch_sharding(loaded.mesh, 2)
        self._forward = jax.jit(forward, in_shardings=(jax.tree.map(lambda p: p.sharding, loaded.params),
                                                       rows, rows, rows))

    def log_probs(self, ids: list[list[int]], positions: list[list[int]],
                  max_seq_length: int = 512) -> list[np.ndarray]:
        """Per example, log-probabilities [num masks, V] at its masked positions."""
        dp = sharding.data_parallel_size(self.loaded.mesh)
        B = text_inputs.round_up(len(ids), dp)
        T = text_inputs.length_bucket(max(len(x) for x in ids), max(max_seq_length, max(len(x) for x in ids)))
        P = text_inputs.length_bucket(max(len(p) for p in positions), 1 << 30, minimum=4)
        ids_BxT, mask_BxT = np.zeros((B, T), np.int32), np.zeros((B, T), np.int32)
        pos_BxP = np.zeros((B, P), np.int32)
        for r, (x, p) in enumerate(zip(ids, positions)):
            ids_BxT[r, :len(x)], mask_BxT[r, :len(x)], pos_BxP[r, :len(p)] = x, 1, p
        with jax.set_mesh(self.loaded.mesh), nn.logical_axis_rules(sharding.RULES):
            out = np.asarray(jax.device_get(self._forward(self.loaded.params, ids_BxT, mask_BxT, pos_BxP)))
        return [out[r, :len(p)] for r, p in enumerate(positions)]

    def predict(self, texts: Sequence[str], top_k: int = 5, max_seq_length: int = 128) -> list[list[MaskedWord]]:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        tok = self.loaded.require_tokenizer()
        encoded = [encode_masked(tok, t, max_seq_length) for t in texts]
        logp = self.log_probs([e[0] for e in encoded], [e[1] for e in encoded], max_seq_length)
        starts = tok.word_start_table()
        out = []
        for (_, positions), lp in zip(encoded, logp):
            words = []
            by_position = dict(zip(positions, lp))
            for run in _runs(positions):
                per_mask = [self._top(tok, by_position[p], top_k) for p in run]
                words.append(MaskedWord(run, per_mask, self._words(tok, [by_position[p] for p in run], starts, top_k)))
            out.append(words)
        return out

    @staticmethod
    def _top(tok, logp_V: np.ndarray, k: int) -> list[Candidate]:
        best = np.argsort(-logp_V)[:k]
        return [Candidate(tok.id_to_token(int(i)), float(np.exp(logp_V[i])), [int(i)]) for i in best]

    @staticmethod
    def _words(tok, logps: list[np.ndarray], starts: np.ndarray, k: int) -> list[Candidate]:
        """Top-k whole words over the run's pieces: a beam of width k, word start then continuations."""
        V = len(logps[0])
        is_start = np.zeros(V, bool)
        is_start[:min(V, len(starts))] = starts[:V]
        beam: list[tuple[float, list[int]]] = [(0.0, [])]
        for j, lp in enumerate(logps):
            allowed = is_start if j == 0 else ~is_start
            scored = np.where(allowed, lp, -np.inf)
            best = np.argsort(-scored)[:k]
            beam = sorted(((s + float(scored[i]), ids + [int(i)]) for s, ids in beam for i in best
                           if np.isfinite(scored[i])), key=lambda x: -x[0])[:k]
        return [Candidate(tok.decode(ids), float(np.exp(s)), ids) for s, ids in beam]


def fill_mask(loaded: LoadedModel, texts: Sequence[str] | str, top_k: int = 5,
              max_seq_length: int = 128) -> list[list[MaskedWord]]:
    """The Python API: for each text, one :class:`MaskedWord` per run of [MASK]s."""
    return FillMask(loaded).predict([texts] if isinstance(texts, str) else list(texts), top_k, max_seq_length)


@dataclasses.dataclass(frozen=True)
class FillMaskConfig:
    """The settings of ``python -m bertgpt_jax.fill_mask`` (texts are its positional arguments)."""

    input_file: str | None = setting(None, "A file with one text per line (besides or instead of the arguments).")
    top_k: int = setting(5, "Candidates per [MASK] and per masked word.")
    max_seq_length: int = setting(128, "Tokens per text, [CLS] and [SEP] included.")
    output_file: str | None = setting(None, "JSONL: per text, each masked word's positions, per-mask candidates "
                                      "and whole-word candidates (text, probability, token_ids).")


def run(source: ModelSource, cfg: FillMaskConfig, texts: Sequence[str]) -> list[dict]:
    texts = list(texts)
    if cfg.input_file:
        texts += [a for a, _ in text_inputs.read_examples(cfg.input_file)]
    if not texts:
        raise ValueError("no text: pass it as an argument ('The [MASK] statement ...') or with --input_file")
    if cfg.top_k < 1:
        raise ValueError(f"--top_k must be >= 1, got {cfg.top_k}")
    loaded = source.load(model_type="bert", purpose="fill-mask", need_mlm_head=True)
    results = FillMask(loaded).predict(texts, cfg.top_k, cfg.max_seq_length)
    records = [{"text": t, "masks": [dataclasses.asdict(w) for w in words]} for t, words in zip(texts, results)]
    if cfg.output_file:
        from bertgpt_jax import atomic_files

        os.makedirs(os.path.dirname(os.path.abspath(cfg.output_file)), exist_ok=True)
        with atomic_files.atomic_open(cfg.output_file, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return records
