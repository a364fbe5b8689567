"""Attention maps: every layer's and head's softmax(QK^T / sqrt d) for one text, drawn as heat maps.

The weights come from the model's own attention layers (they sow their probabilities into the
``attention_weights`` collection), so they are what the forward pass used: rows are queries, columns keys,
each row sums to one; GPT-2's are zero above the diagonal. BERT reads ``[CLS] A [SEP] (B [SEP])``.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

import flax.linen as nn
import jax
import numpy as np

from bertgpt_jax import sharding
from bertgpt_jax.cli import setting
from bertgpt_jax.inference import text_inputs
from bertgpt_jax.inference.loading import LoadedModel, ModelSource
from bertgpt_jax.models.layers import ATTENTION_WEIGHTS


@dataclasses.dataclass
class AttentionMaps:
    weights: np.ndarray  # [L, H, T, T] fp32, rows = queries
    tokens: list[str]
    token_ids: list[int]

    def select(self, layers: Sequence[int] | None, heads: Sequence[int] | None) -> tuple[list[int], list[int]]:
        """Layer and head indices (all when empty; negative from the end), checked."""
        L, H = self.weights.shape[:2]
        return _indices("layer", layers, L), _indices("head", heads, H)


def _indices(what: str, given: Sequence[int] | None, n: int) -> list[int]:
    if not given:
        return list(range(n))
    for index in given:
        if not -n <= index < n:
            raise ValueError(f"{what} {index} does not exist: the model has {n} {what}s (0 .. {n - 1}, or negative "
                             "from the end)")
    return [index % n for index in given]


def _layer_number(path) -> int:
    for key in path:
        m = re.fullmatch(r"layer_(\d+)", str(getattr(key, "key", key)))
        if m:
            return int(m.group(1))
    raise ValueError(f"attention weights at {jax.tree_util.keystr(path)} belong to no numbered layer")


def attention_maps(loaded: LoadedModel, text: str, text_b: str | None = None,
                   max_seq_length: int | None = None) -> AttentionMaps:
    """Every layer's attention weights for ``text`` (and ``text_b``, BERT)."""
    cfg = loaded.cfg
    tok = loaded.require_tokenizer()
    limit = max_seq_length or cfg.max_position_embeddings
    if cfg.is_bert:
        enc = text_inputs.encode_bert(tok, text, text_b, limit)
        ids, types = enc.input_ids, enc.token_type_ids
    else:
        if text_b is not None:
            raise ValueError("text_b is for BERT's sentence pairs; GPT-2 reads one text")
        ids = tok.encode(text)
        if len(ids) > limit:
            raise ValueError(f"the text has {len(ids)} tokens, more than the model's context of {limit}")
        types = None
    if not ids:
        raise ValueError("the text is empty")
    tokens = [_label(tok, i, cfg.is_gpt) for i in ids]
    ids_1xT = np.asarray([ids], np.int32)
    kwargs = {"token_type_ids": np.asarray([types], np.int32)} if types is not None else {}
    with jax.set_mesh(loaded.mesh), nn.logical_axis_rules(sharding.RULES):
        _, state = jax.jit(lambda p, x: loaded.model.apply({"params": p}, x, mutable=[ATTENTION_WEIGHTS], **kwargs))(
            loaded.params, ids_1xT)
    sown = jax.tree_util.tree_leaves_with_path(jax.device_get(state[ATTENTION_WEIGHTS]))
    by_layer = sorted((_layer_number(path), np.asarray(w)) for path, w in sown)
    weights = np.stack([w[0] for _, w in by_layer])  # [L, H, T, T]
    return AttentionMaps(weights=weights.astype(np.float32), tokens=tokens, token_ids=list(ids))


def _label(tok, token_id: int, byte_level: bool) -> str:
    """A readable label: byte-level BPE pieces decoded (a leading space shown as '␣'), WordPiece as is."""
    if not byte_level:
        return tok.id_to_token(token_id)
    text = tok.decode([token_id])
    return text.replace(" ", "␣").replace("\n", "\\n") or tok.id_to_token(token_id)


def draw_attention(maps: AttentionMaps, path: str, layers: Sequence[int] | None = None,
                   heads: Sequence[int] | None = None, title: str | None = None) -> None:
    """One heat-map panel per (layer, head): queries down, keys across, token labels on both axes; each panel's
    colours span 0 to its largest weight."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, heads = maps.select(layers, heads)
    T = len(maps.tokens)
    panel = max(2.5, min(0.22 * T + 1.2, 9.0))
    font = max(4.0, min(9.0, 220.0 / max(T, 1)))
    fig, axes = plt.subplots(len(layers), len(heads), figsize=(panel * len(heads), panel * len(layers)),
                             squeeze=False)
    for r, layer in enumerate(layers):
        for c, head in enumerate(heads):
            ax = axes[r][c]
            w = maps.weights[layer, head]
            ax.imshow(w, cmap="viridis", vmin=0.0, vmax=max(float(w.max()), 1e-6), interpolation="nearest")
            ax.set_title(f"layer {layer}, head {head}", fontsize=font + 2)
            ax.set_xticks(range(T))
            ax.set_yticks(range(T))
            ax.set_xticklabels(maps.tokens, rotation=90, fontsize=font)
            ax.set_yticklabels(maps.tokens, fontsize=font)
            ax.set_xlabel("key", fontsize=font + 1)
            ax.set_ylabel("query", fontsize=font + 1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    from bertgpt_jax import atomic_files

    with atomic_files.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def write_npz(maps: AttentionMaps, path: str) -> None:
    from bertgpt_jax import atomic_files

    with atomic_files.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, weights=maps.weights, tokens=np.asarray(maps.tokens), token_ids=np.asarray(maps.token_ids))


@dataclasses.dataclass(frozen=True)
class AttentionConfig:
    """The settings of ``python -m bertgpt_jax.attention``."""

    text: str | None = setting(None, "The text to look at.", required=True)
    text_b: str | None = setting(None, "BERT: the second sentence of a pair.")
    layers: tuple[int, ...] = setting((), "Layers to draw (0 = first, negative from the end; default: all).")
    heads: tuple[int, ...] = setting((), "Heads to draw (default: all).")
    output: str = setting("attention.png", "The heat maps (PNG).")
    output_weights: str | None = setting(None, "The weights of every layer and head as .npz (weights [L, H, T, T], "
                                         "tokens, token_ids); default: beside --output.")
    max_seq_length: int | None = setting(None, "Tokens at most (default: the model's position table).")
    html: str | None = setting(None, "Also an interactive head view as one offline HTML file (layer and head "
                               "selectors, a line from each token to every other, the weight as its opacity).")


def run(source: ModelSource, cfg: AttentionConfig) -> AttentionMaps:
    if not cfg.output.endswith(".png"):
        raise ValueError(f"--output {cfg.output} must end in .png")
    if cfg.html and not cfg.html.endswith((".html", ".htm")):
        raise ValueError(f"--html {cfg.html} must end in .html")
    loaded = source.load(purpose="attention maps")
    maps = attention_maps(loaded, cfg.text, cfg.text_b, cfg.max_seq_length)
    maps.select(cfg.layers, cfg.heads)  # bad indices fail before drawing
    os.makedirs(os.path.dirname(os.path.abspath(cfg.output)), exist_ok=True)
    draw_attention(maps, cfg.output, cfg.layers, cfg.heads, title=None)
    write_npz(maps, cfg.output_weights or os.path.splitext(cfg.output)[0] + ".npz")
    if cfg.html:
        from bertgpt_jax.inference import head_view

        os.makedirs(os.path.dirname(os.path.abspath(cfg.html)), exist_ok=True)
        head_view.write_head_view(maps, cfg.html)
    return maps
