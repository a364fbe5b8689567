"""Contextual features from BERT, as the original ``extract_features.py`` gives them, plus pooled vectors.

``layers`` indexes the encoder layers as the original does (``-1`` the last, ``0`` the first encoder
layer); the embedding output is ``"embeddings"``. Pooled sentence vectors are read from the last layer:
``cls`` (its [CLS] vector) and ``mean`` (the mean over every real token, [CLS] and [SEP] included, as
sentence-transformers pools); ``pooler`` (tanh dense on [CLS]) when the checkpoint has a pooler.
Examples run sorted by length, each batch padded to a power-of-two length bucket (16, 32, 64, ... up to
``max_seq_length``), every batch with the same rows: one compiled function per bucket, whatever the inputs.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bertgpt_jax import sharding
from bertgpt_jax.cli import setting
from bertgpt_jax.inference import text_inputs
from bertgpt_jax.inference.loading import LoadedModel, ModelSource

EMBEDDINGS = "embeddings"


@dataclasses.dataclass
class Features:
    """Arrays over N examples padded to T tokens: ``layers[name]`` [N, T, D] (name: the layer index as given,
    or ``"embeddings"``), ``input_ids``/``attention_mask``/``token_type_ids`` [N, T], ``cls``/``mean``
    (and ``pooler``) [N, D]; ``tokens[i]`` the token strings of example ``i``."""

    layers: dict
    input_ids: np.ndarray
    attention_mask: np.ndarray
    token_type_ids: np.ndarray
    cls: np.ndarray
    mean: np.ndarray
    pooler: np.ndarray | None
    tokens: list[list[str]]

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything as named arrays (``layer_-1``, ``embeddings``, ...), for .npz / safetensors."""
        out = {(EMBEDDINGS if k == EMBEDDINGS else f"layer_{k}"): v for k, v in self.layers.items()}
        out.update(input_ids=self.input_ids, attention_mask=self.attention_mask, token_type_ids=self.token_type_ids,
                   cls=self.cls, mean=self.mean)
        if self.pooler is not None:
            out["pooler"] = self.pooler
        return out


def parse_layers(layers: Sequence[str | int], num_layers: int) -> list[int | str]:
    """Layer names: encoder indices (negative from the top, as the original) or ``"embeddings"``."""
    out: list[int | str] = []
    for layer in layers:
        if isinstance(layer, str) and layer.strip() == EMBEDDINGS:
            out.append(EMBEDDINGS)
            continue
        try:
            index = int(layer)
        except ValueError:
            raise ValueError(f"layer {layer!r} is neither an encoder layer index nor '{EMBEDDINGS}'") from None
        if not -num_layers <= index < num_layers:
            raise ValueError(f"layer {index} does not exist: the model has {num_layers} encoder layers, so indices "
                             f"run from {-num_layers} to {num_layers - 1} (or '{EMBEDDINGS}')")
        out.append(index)
    if not out:
        raise ValueError("--layers is empty; e.g. --layers=-1,-2,-3,-4")
    return out


def hidden_index(layer: int | str, num_layers: int) -> int:
    """Where ``layer`` sits in the model's hidden states (embeddings first, then every encoder layer)."""
    if layer == EMBEDDINGS:
        return 0
    return layer + 1 if layer >= 0 else num_layers + 1 + layer


class FeatureExtractor:
    """Compiled BERT forward passes returning the chosen layers and pooled vectors."""

    def __init__(self, loaded: LoadedModel, layers: Sequence[str | int] = (-1, -2, -3, -4)):
        if not loaded.cfg.is_bert:
            raise ValueError(f"{loaded.source} is a {loaded.cfg.model_type} model; feature extraction reads BERT")
        self.loaded = loaded
        self.layers = parse_layers(layers, loaded.cfg.num_hidden_layers)
        self.has_pooler = "pooler" in loaded.params
        model, L = loaded.model, loaded.cfg.num_hidden_layers
        picks = [hidden_index(layer, L) for layer in self.layers]

        def forward(params, ids_BxT, mask_BxT, types_BxT):
            out = model.apply({"params": params}, ids_BxT, attention_mask=mask_BxT, token_type_ids=types_BxT,
                              output_hidden_states=True)
            last_BxTxD = out.hidden_states[-1]
            w_BxT = mask_BxT.astype(jnp.float32)
            mean_BxD = jnp.einsum("btd,bt->bd", last_BxTxD, w_BxT) / jnp.maximum(w_BxT.sum(1), 1.0)[:, None]
            chosen = tuple(out.hidden_states[i] for i in picks)
            return chosen, last_BxTxD[:, 0], mean_BxD, out.pooler_output

        mesh = loaded.mesh
        rows = sharding.batch_sharding(mesh, 2)
        self.batch_shapes: collections.Counter = collections.Counter()  # (rows, length) -> batches run
        self._forward = jax.jit(forward, in_shardings=(jax.tree.map(lambda p: p.sharding, loaded.params),
                                                       rows, rows, rows))

    def dispatch(self, batch: dict[str, np.ndarray]):
        """Starts the forward pass of one padded batch; the results stay on the device until fetched."""
        self.batch_shapes[batch["input_ids"].shape] += 1
        with jax.set_mesh(self.loaded.mesh), nn.logical_axis_rules(sharding.RULES):
            return self._forward(self.loaded.params, batch["input_ids"], batch["attention_mask"],
                                 batch["token_type_ids"])

    def extract(self, examples: Sequence[tuple[str, str | None]] | Sequence[str], max_seq_length: int = 128,
                batch_size: int = 32, progress: bool = False) -> Features:
        """Features of each example (text, or (text_a, text_b) pair), in the order given.

        Examples run sorted by length, so a batch pads to the bucket of similar lengths, not to the longest
        example among any 32 (on the benchmark's sentences that is 2.5x fewer padded tokens); the next
        batch is dispatched before the previous one is fetched, so the copy to the host overlaps compute."""
        tok = self.loaded.require_tokenizer()
        from bertgpt_jax import configs

        configs.check_positions(max_seq_length, self.loaded.cfg.max_position_embeddings, "max_seq_length")
        pairs = [(e, None) if isinstance(e, str) else (e[0], e[1]) for e in examples]
        if not pairs:
            raise ValueError("no example to extract features from")
        encoded = text_inputs.encode_bert_batch(tok, pairs, max_seq_length)
        lengths = np.array([len(e.input_ids) for e in encoded])
        N, T = len(encoded), int(lengths.max())
        D = self.loaded.cfg.hidden_size
        layers = {layer: np.zeros((N, T, D), np.float32) for layer in self.layers}
        cls, mean = np.zeros((N, D), np.float32), np.zeros((N, D), np.float32)
        pooler = np.zeros((N, D), np.float32) if self.has_pooler else None
        dp = sharding.data_parallel_size(self.loaded.mesh)
        # Every batch has the same rows (the last one padded with empty rows), longest examples first, so
        # the padded last batch is one of the cheapest and each length bucket compiles once.
        rows_per_batch = min(text_inputs.round_up(batch_size, dp), text_inputs.round_up(N, dp))
        order = np.argsort(-lengths, kind="stable")

        def store(rows, length, out):
            chosen, c, m, p = jax.device_get(out)
            n, t = len(rows), min(length, T)
            for layer, h in zip(self.layers, chosen):
                layers[layer][rows, :t] = h[:n, :t]
            cls[rows], mean[rows] = c[:n], m[:n]
            if pooler is not None:
                pooler[rows] = p[:n]

        from tqdm import tqdm

        pending = None
        for start in tqdm(range(0, N, rows_per_batch), unit="batch", disable=not progress):
            rows = order[start:start + rows_per_batch]
            chunk = [encoded[i] for i in rows]
            length = text_inputs.length_bucket(int(lengths[rows].max()), max_seq_length)
            out = self.dispatch(text_inputs.pad_batch(chunk, length, rows=rows_per_batch))
            if pending is not None:
                store(*pending)
            pending = (rows, length, out)
        store(*pending)
        full = text_inputs.pad_batch(encoded, T)
        for layer in self.layers:  # padding positions hold zeros, not whatever the model computed there
            layers[layer] *= full["attention_mask"][:, :, None]
        return Features(layers=layers, input_ids=full["input_ids"], attention_mask=full["attention_mask"],
                        token_type_ids=full["token_type_ids"], cls=cls, mean=mean, pooler=pooler,
                        tokens=[e.tokens for e in encoded])


def extract_features(loaded: LoadedModel, examples, layers=(-1, -2, -3, -4), max_seq_length: int = 128,
                     batch_size: int = 32) -> Features:
    """The Python API: :class:`Features` of ``examples`` (texts or (A, B) pairs)."""
    return FeatureExtractor(loaded, layers).extract(examples, max_seq_length, batch_size)


def write_jsonl(path: str, features: Features) -> None:
    """The original's output: per line ``linex_index`` and per token ``token`` and ``layers`` (``index``,
    ``values`` rounded to 6 decimals)."""
    from bertgpt_jax import atomic_files

    with atomic_files.atomic_open(path, "w", encoding="utf-8") as f:
        for i, tokens in enumerate(features.tokens):
            per_token = []
            for t, token in enumerate(tokens):
                per_token.append({"token": token, "layers": [
                    {"index": layer, "values": [round(float(x), 6) for x in features.layers[layer][i, t]]}
                    for layer in features.layers]})
            f.write(json.dumps({"linex_index": i, "features": per_token}) + "\n")


def write_arrays(path: str, features: Features) -> None:
    """``.npz`` or ``.safetensors`` with every array of :meth:`Features.arrays`."""
    from bertgpt_jax import atomic_files

    arrays = {k: np.ascontiguousarray(v) for k, v in features.arrays().items()}
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file

        with atomic_files.atomic_path(path) as tmp:
            save_file(arrays, tmp)
    elif path.endswith(".npz"):
        with atomic_files.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    else:
        raise ValueError(f"--output_arrays {path} must end in .npz or .safetensors")


@dataclasses.dataclass(frozen=True)
class FeaturesConfig:
    """The settings of ``python -m bertgpt_jax.extract_features`` (the original's flags)."""

    input_file: str | None = setting(None, "One example per line; 'A ||| B' for a sentence pair.", required=True)
    output_file: str | None = setting(None, "JSONL in the original's format (linex_index, features -> token, layers "
                                      "-> index, values); ~15 kB per token.")
    output_arrays: str | None = setting(None, "The same arrays plus pooled sentence vectors (cls, mean, pooler) as "
                                        ".npz or .safetensors.")
    layers: tuple[str, ...] = setting(("-1", "-2", "-3", "-4"), "Encoder layers to output (-1 = last, 0 = first); "
                                      "'embeddings' for the embedding output.")
    max_seq_length: int = setting(128, "Tokens per example after WordPiece ([CLS]/[SEP] included); longer inputs "
                                  "are truncated.")
    batch_size: int = setting(32, "Examples per forward pass.")

    def check(self) -> None:
        if not self.output_file and not self.output_arrays:
            raise ValueError("give --output_file (JSONL) and/or --output_arrays (.npz / .safetensors)")
        if self.output_arrays and not self.output_arrays.endswith((".npz", ".safetensors")):
            raise ValueError(f"--output_arrays {self.output_arrays} must end in .npz or .safetensors")


def run(source: ModelSource, cfg: FeaturesConfig) -> Features:
    cfg.check()
    examples = text_inputs.read_examples(cfg.input_file)
    loaded = source.load(model_type="bert", purpose="feature extraction")
    features = FeatureExtractor(loaded, cfg.layers).extract(examples, cfg.max_seq_length, cfg.batch_size,
                                                           progress=True)
    for out in (cfg.output_file, cfg.output_arrays):
        if out:
            os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    if cfg.output_file:
        write_jsonl(cfg.output_file, features)
    if cfg.output_arrays:
        write_arrays(cfg.output_arrays, features)
    return features
