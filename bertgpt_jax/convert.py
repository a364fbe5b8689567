"""HF checkpoint import/export (``config.json`` + ``model.safetensors``) without torch.

Reads the layouts of BertModel, BertForPreTraining, BertForMaskedLM (keys with or without ``bert.``),
GPT2Model and GPT2LMHeadModel (with or without ``transformer.``); writes BertForPreTraining (BertModel
when the params carry no heads) and GPT2LMHeadModel. Nothing is silently dropped or re-initialised:
missing, unexpected or mis-shaped tensors raise errors that name them; missing BERT heads are only
initialised when asked for (``init_missing_heads=True``).

CLI: ``python -m bertgpt_jax.convert --from_hf DIR --to_hf OUT`` (see ``--help``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import struct
from typing import Any, Optional

import jax
import ml_dtypes
import numpy as np
from absl import logging

from bertgpt_jax import atomic_files
from bertgpt_jax.configs import ModelConfig

SAFETENSORS = "model.safetensors"
CONFIG = "config.json"
# Files a tokenizer may bring along; the CLI copies them so the exported directory is self-contained.
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "spiece.model")
# Buffers (not parameters) that some transformers versions saved.
_IGNORED_SUFFIXES = (".position_ids", "attn.bias", "attn.masked_bias")
BERT_HEADS = ("pooler", "mlm", "nsp")

Params = dict


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One HF tensor and where it lives in our params.

    ``kind`` "copy": same values, reshaped; "T": a torch Linear weight ([out, in]) transposed.
    ``slot``: index into axis 0 of the target after the leading input axes (fused q/k/v).
    """

    hf_key: str
    hf_shape: tuple[int, ...]
    path: tuple[str, ...]
    kind: str = "copy"
    slot: Optional[int] = None
    group: str = "body"  # "body", or the BERT head it belongs to


def _ln(hf: str, path: tuple[str, ...], D: int, group: str = "body") -> list[_Entry]:
    return [_Entry(f"{hf}.weight", (D,), path + ("scale",), group=group),
            _Entry(f"{hf}.bias", (D,), path + ("bias",), group=group)]


def _linear(hf: str, path: tuple[str, ...], d_in: int, d_out: int, group: str = "body") -> list[_Entry]:
    return [_Entry(f"{hf}.weight", (d_out, d_in), path + ("kernel",), "T", group=group),
            _Entry(f"{hf}.bias", (d_out,), path + ("bias",), group=group)]


def _conv1d(hf: str, path: tuple[str, ...], d_in: int, d_out: int) -> list[_Entry]:
    return [_Entry(f"{hf}.weight", (d_in, d_out), path + ("kernel",)),
            _Entry(f"{hf}.bias", (d_out,), path + ("bias",))]


def _bert_entries(cfg: ModelConfig) -> list[_Entry]:
    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    e = [
        _Entry("bert.embeddings.word_embeddings.weight", (V, D), ("embeddings", "word_embeddings", "embedding")),
        _Entry("bert.embeddings.position_embeddings.weight", (cfg.max_position_embeddings, D),
               ("embeddings", "position_embeddings", "embedding")),
        _Entry("bert.embeddings.token_type_embeddings.weight", (cfg.type_vocab_size, D),
               ("embeddings", "token_type_embeddings", "embedding")),
        *_ln("bert.embeddings.LayerNorm", ("embeddings", "LayerNorm"), D),
    ]
    for i in range(cfg.num_hidden_layers):
        hf, p = f"bert.encoder.layer.{i}", ("encoder", f"layer_{i}")
        for slot, name in enumerate(("query", "key", "value")):
            e.append(_Entry(f"{hf}.attention.self.{name}.weight", (D, D), p + ("attention", "qkv", "kernel"), "T",
                            slot))
            e.append(_Entry(f"{hf}.attention.self.{name}.bias", (D,), p + ("attention", "qkv", "bias"), slot=slot))
        e += _linear(f"{hf}.attention.output.dense", p + ("attention", "out"), D, D)
        e += _ln(f"{hf}.attention.output.LayerNorm", p + ("ln_attn",), D)
        e += _linear(f"{hf}.intermediate.dense", p + ("mlp", "wi"), D, F)
        e += _linear(f"{hf}.output.dense", p + ("mlp", "wo"), F, D)
        e += _ln(f"{hf}.output.LayerNorm", p + ("ln_mlp",), D)
    e += _linear("bert.pooler.dense", ("pooler", "dense"), D, D, group="pooler")
    e += _linear("cls.predictions.transform.dense", ("mlm", "transform"), D, D, group="mlm")
    e += _ln("cls.predictions.transform.LayerNorm", ("mlm", "LayerNorm"), D, group="mlm")
    e.append(_Entry("cls.predictions.bias", (V,), ("mlm", "bias"), group="mlm"))
    e += _linear("cls.seq_relationship", ("nsp", "dense"), D, 2, group="nsp")
    return e


def _gpt2_entries(cfg: ModelConfig) -> list[_Entry]:
    D, F, V = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    e = [_Entry("transformer.wte.weight", (V, D), ("wte", "embedding")),
         _Entry("transformer.wpe.weight", (cfg.max_position_embeddings, D), ("wpe", "embedding"))]
    for i in range(cfg.num_hidden_layers):
        hf, p = f"transformer.h.{i}", ("h", f"layer_{i}")
        e += _ln(f"{hf}.ln_1", p + ("ln_attn",), D)
        e += _conv1d(f"{hf}.attn.c_attn", p + ("attention", "qkv"), D, 3 * D)
        e += _conv1d(f"{hf}.attn.c_proj", p + ("attention", "out"), D, D)
        e += _ln(f"{hf}.ln_2", p + ("ln_mlp",), D)
        e += _conv1d(f"{hf}.mlp.c_fc", p + ("mlp", "wi"), D, F)
        e += _conv1d(f"{hf}.mlp.c_proj", p + ("mlp", "wo"), F, D)
    e += _ln("transformer.ln_f", ("ln_f",), D)
    return e


def _entries(cfg: ModelConfig) -> list[_Entry]:
    return _bert_entries(cfg) if cfg.is_bert else _gpt2_entries(cfg)


def _param_shapes(cfg: ModelConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Shapes of our (unscanned) params, from an abstract init of the model itself."""
    from bertgpt_jax import models

    cfg = cfg.replace(scan_layers=False, remat="none")
    ids = np.zeros((1, 2), np.int32)
    shapes = jax.eval_shape(lambda: models.from_config(cfg).init(jax.random.key(0), ids)["params"])
    import flax.linen as nn

    flat = jax.tree_util.tree_flatten_with_path(nn.unbox(shapes))[0]
    return {tuple(k.key for k in path): tuple(v.shape) for path, v in flat}


# ---- layer stacking (scan_layers) --------------------------------------------------------------


def _stack_key(cfg: ModelConfig) -> str:
    return "encoder" if cfg.is_bert else "h"


def stack_layers(cfg: ModelConfig, params: Params) -> Params:
    """Unscanned params (``layer_0..``) -> the scanned layout (``layers`` with a leading axis)."""
    key = _stack_key(cfg)
    layers = [params[key][f"layer_{i}"] for i in range(cfg.num_hidden_layers)]
    return {**params, key: {"layers": jax.tree.map(lambda *xs: np.stack(xs), *layers)}}


def unstack_layers(cfg: ModelConfig, params: Params) -> Params:
    """The scanned layout -> ``layer_0 .. layer_{L-1}`` (what HF export and inspection expect)."""
    key = _stack_key(cfg)
    if "layers" not in params.get(key, {}):
        return params
    stacked = params[key]["layers"]
    return {**params, key: {f"layer_{i}": jax.tree.map(lambda x: np.asarray(x)[i], stacked)
                            for i in range(cfg.num_hidden_layers)}}


# ---- import ------------------------------------------------------------------------------------


def _strip_prefix(tensors: dict[str, np.ndarray], cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Maps every key onto the canonical names (``bert.``/``transformer.`` prefixed, LayerNorm weight/bias)."""
    prefix = "bert." if cfg.is_bert else "transformer."
    out = {}
    for k, v in tensors.items():
        k = k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
        if cfg.is_bert and not k.startswith(("bert.", "cls.")):
            k = prefix + k
        if cfg.is_gpt and not k.startswith(("transformer.", "lm_head.")):
            k = prefix + k
        out[k] = v
    return out


def params_from_hf_tensors(cfg: ModelConfig, tensors: dict[str, np.ndarray], init_missing_heads: bool = False,
                           seed: int = 0) -> Params:
    """Our params from a dict of HF tensors (any supported layout); see ``from_hf``."""
    tensors = _strip_prefix(tensors, cfg)
    entries = _entries(cfg)
    shapes = _param_shapes(cfg)
    known = {e.hf_key for e in entries}
    tied = {"bert.embeddings.word_embeddings.weight" if cfg.is_bert else "transformer.wte.weight"}
    tied_copies = ["cls.predictions.decoder.weight", "lm_head.weight"]
    unexpected = sorted(k for k in tensors if k not in known and k not in tied_copies
                        and k != "cls.predictions.decoder.bias" and not k.endswith(_IGNORED_SUFFIXES))
    if unexpected:
        raise ValueError(f"unexpected tensors in the checkpoint for a {cfg.model_type} model with "
                         f"{cfg.num_hidden_layers} layers: {', '.join(unexpected[:10])}"
                         + (f" (and {len(unexpected) - 10} more)" if len(unexpected) > 10 else ""))
    for copy_key in tied_copies:
        # This package ties the decoder to the word embeddings; an untied checkpoint cannot be represented.
        if copy_key in tensors:
            table = tensors[next(iter(tied))] if next(iter(tied)) in tensors else None
            if table is None or tensors[copy_key].shape != table.shape or not np.array_equal(tensors[copy_key], table):
                raise ValueError(f"tensor {copy_key} differs from the word embeddings; only tied decoders are "
                                 "supported")

    groups_present = {e.group for e in entries if e.hf_key in tensors}
    missing_groups = [g for g in BERT_HEADS if cfg.is_bert and g not in groups_present]
    missing = [e.hf_key for e in entries if e.hf_key not in tensors and e.group not in missing_groups]
    if missing:
        raise ValueError(f"missing tensors in the checkpoint: {', '.join(missing[:10])}"
                         + (f" (and {len(missing) - 10} more)" if len(missing) > 10 else ""))

    flat: dict[tuple[str, ...], np.ndarray] = {}
    for e in entries:
        if e.group in missing_groups:
            continue
        arr = np.asarray(tensors[e.hf_key])
        if tuple(arr.shape) != e.hf_shape:
            raise ValueError(f"tensor {e.hf_key} has shape {tuple(arr.shape)}, expected {e.hf_shape} for "
                             f"this config (hidden_size={cfg.hidden_size}, vocab_size={cfg.vocab_size}, "
                             f"intermediate_size={cfg.intermediate_size})")
        if e.kind == "T":
            arr = arr.T
        target = shapes[e.path]
        if e.slot is None:
            flat[e.path] = arr.reshape(target).astype(np.float32)
        else:
            if e.path not in flat:
                flat[e.path] = np.zeros(target, np.float32)
            lead = len(target) - 3 if len(target) >= 3 else 0  # kernel [D, 3, H, K] / bias [3, H, K]
            idx = (slice(None),) * lead + (e.slot,)
            flat[e.path][idx] = arr.reshape(target[:lead] + target[lead + 1:])

    params: Params = {}
    for path, arr in flat.items():
        node = params
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = arr

    if missing_groups:
        names = {"pooler": "pooler", "mlm": "MLM head (cls.predictions.*)", "nsp": "NSP head (cls.seq_relationship.*)"}
        what = ", ".join(names[g] for g in missing_groups)
        if init_missing_heads:
            fresh = _fresh_heads(cfg, missing_groups, seed)
            params.update(fresh)
            logging.warning("checkpoint has no %s: initialised them from scratch (init_missing_heads=True)", what)
        else:
            logging.warning("checkpoint has no %s: params have no such heads; the encoder runs, and "
                            "from_hf(..., init_missing_heads=True) adds fresh ones for pretraining", what)
    return params


def _fresh_heads(cfg: ModelConfig, groups: list[str], seed: int) -> Params:
    """The model's own initialisation of the named BERT heads (they do not depend on the encoder's depth)."""
    import flax.linen as nn
    import jax.numpy as jnp

    from bertgpt_jax.models.heads import MlmHead, NspHead, Pooler

    D = cfg.hidden_size
    h = jnp.zeros((1, 1, D), jnp.float32)
    modules = {"pooler": (Pooler(cfg), (h,)), "nsp": (NspHead(cfg), (h[:, 0],)),
               "mlm": (MlmHead(cfg), (h, jnp.zeros((cfg.vocab_size, D), jnp.float32)))}
    out = {}
    for i, g in enumerate(groups):
        module, args = modules[g]
        variables = module.init(jax.random.fold_in(jax.random.key(seed), i), *args)
        out[g] = jax.tree.map(np.asarray, nn.unbox(variables["params"]))
    return out


_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                       "BOOL": np.bool_}


MAX_SAFETENSORS_HEADER = 100 << 20  # the safetensors library's own limit


def load_safetensors(path: str) -> dict[str, np.ndarray]:
    """Memory-mapped tensors of a ``.safetensors`` file, bf16 included (``safetensors.numpy`` rejects it).
    A damaged file (a header length beyond the file or the format's limit, tensors past its end, offsets
    that disagree with shapes) is an error that names the file and the tensor."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} does not exist (expected an HF checkpoint in safetensors format)")
    size = os.path.getsize(path)
    damaged = f"{path} is not a valid safetensors file"
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{damaged}: {size} bytes, shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_SAFETENSORS_HEADER or 8 + n > size:
            raise ValueError(f"{damaged}: its header length {n} exceeds the file ({size} bytes) or the format's "
                             f"limit of {MAX_SAFETENSORS_HEADER} bytes; the file is truncated or damaged")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ValueError(f"{damaged}: its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{damaged}: its header is not a JSON object")
    data_bytes = size - 8 - n
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n) if data_bytes else np.zeros(0, np.uint8)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {name} in {path} has dtype {info['dtype']}, which is not supported")
        dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
        start, end = (int(x) for x in info["data_offsets"])
        expected = int(np.prod(info["shape"], dtype=np.int64)) * dtype.itemsize
        if not 0 <= start <= end <= data_bytes:
            raise ValueError(f"tensor {name} in {path} lies at bytes [{start}, {end}) of a data section of "
                             f"{data_bytes} bytes: the file is truncated or damaged")
        if end - start != expected:
            raise ValueError(f"tensor {name} in {path} has shape {info['shape']} ({expected} bytes of "
                             f"{info['dtype']}) but spans {end - start} bytes: the file is damaged")
        out[name] = data[start:end].view(dtype).reshape(info["shape"])
    return out


def load_hf_tensors(hf_dir: str) -> dict[str, np.ndarray]:
    """All tensors of an HF directory: ``model.safetensors`` or shards listed in ``model.safetensors.index.json``."""
    index = os.path.join(hf_dir, SAFETENSORS + ".index.json")
    if not os.path.exists(os.path.join(hf_dir, SAFETENSORS)) and os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{index} is not a valid safetensors index (a JSON object with a weight_map): "
                             f"{type(e).__name__}: {e}") from None
        root = os.path.realpath(hf_dir)
        tensors: dict[str, np.ndarray] = {}
        for name in files:
            full = os.path.realpath(os.path.join(hf_dir, str(name)))
            if os.path.dirname(full) != root:
                raise ValueError(f"{index} names the weight file {name!r}, which is outside the checkpoint "
                                 f"directory {hf_dir}; a weight map may only name files in that directory")
            tensors.update(load_safetensors(full))
        return tensors
    return load_safetensors(os.path.join(hf_dir, SAFETENSORS))


def from_hf(hf_dir: str, init_missing_heads: bool = False, scan_layers: bool = False,
            seed: int = 0) -> tuple[ModelConfig, Params]:
    """``(cfg, params)`` from an HF directory holding ``config.json`` and ``model.safetensors`` (or shards).

    BERT checkpoints without pretraining heads (BertModel) give params without ``mlm``/``nsp`` unless
    ``init_missing_heads=True``. ``scan_layers=True`` returns the stacked layout for ``cfg.scan_layers``.
    Params are host numpy arrays; ``jax.device_put`` them with the shardings you need.
    """
    cfg = ModelConfig.from_json_file(os.path.join(hf_dir, CONFIG))
    params = params_from_hf_tensors(cfg, load_hf_tensors(hf_dir),
                                    init_missing_heads=init_missing_heads, seed=seed)
    if scan_layers:
        cfg = cfg.replace(scan_layers=True)
        params = stack_layers(cfg, params)
    return cfg, params


# ---- export ------------------------------------------------------------------------------------


def hf_tensors_from_params(cfg: ModelConfig, params: Params) -> dict[str, np.ndarray]:
    """HF tensors (BertForPreTraining / BertModel / GPT2LMHeadModel names) from our params."""
    import flax.linen as nn

    params = unstack_layers(cfg, jax.tree.map(lambda x: np.asarray(x, np.float32)
                                              if np.asarray(x).dtype != np.float32 else np.asarray(x),
                                              nn.unbox(params)))
    present = {g for g in BERT_HEADS if g in params} if cfg.is_bert else set()
    out: dict[str, np.ndarray] = {}
    for e in _entries(cfg):
        if e.group != "body" and e.group not in present:
            continue
        node: Any = params
        for k in e.path:
            if not isinstance(node, dict) or k not in node:
                raise ValueError(f"params have no {'/'.join(e.path)} (needed for HF tensor {e.hf_key})")
            node = node[k]
        arr = np.asarray(node)
        if e.slot is not None:
            lead = arr.ndim - 3
            arr = arr[(slice(None),) * lead + (e.slot,)]
        if e.kind == "T":
            arr = arr.reshape(e.hf_shape[1], e.hf_shape[0]).T
        out[e.hf_key] = np.ascontiguousarray(arr.reshape(e.hf_shape))
    if cfg.is_bert and not present >= {"mlm", "nsp"}:
        # Without both pretraining heads the checkpoint is a BertModel: drop the prefix like HF does.
        out = {k[len("bert."):]: v for k, v in out.items() if k.startswith("bert.")}
    return out


def to_hf(cfg: ModelConfig, params: Params, out_dir: str) -> None:
    """Writes ``config.json`` + ``model.safetensors`` loadable by transformers with no missing/unexpected keys."""
    from safetensors.numpy import save_file

    tensors = hf_tensors_from_params(cfg, params)
    os.makedirs(out_dir, exist_ok=True)
    hf_cfg = cfg.to_hf_dict()
    if cfg.is_bert and not all(g in params for g in ("mlm", "nsp")):
        hf_cfg["architectures"] = ["BertModel"]
    with atomic_files.atomic_path(os.path.join(out_dir, SAFETENSORS)) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    atomic_files.write_json(os.path.join(out_dir, CONFIG), hf_cfg, indent=2, sort_keys=True)


# ---- fine-tuned layouts (BertForSequenceClassification / TokenClassification / QuestionAnswering) --------

#: our output layer's name -> the HF architectures whose head it is (same tensor names: <name>.weight/bias)
FINETUNED_HEADS = {"classifier": ("BertForSequenceClassification", "BertForTokenClassification"),
                   "qa_outputs": ("BertForQuestionAnswering",)}


def from_hf_finetuned(hf_dir: str, scan_layers: bool = False) -> tuple[ModelConfig, Params, Optional[Params]]:
    """``(cfg, encoder_params, head)`` from an HF BERT directory of any layout: the encoder as ``from_hf``
    reads it (pretraining heads included when present), and the fine-tuned output layer
    (``{"classifier": {"kernel", "bias"}}`` or ``{"qa_outputs": ...}``) if the checkpoint has one, else None."""
    cfg = ModelConfig.from_json_file(os.path.join(hf_dir, CONFIG))
    tensors = dict(load_hf_tensors(hf_dir))
    head = None
    for name in FINETUNED_HEADS:
        if f"{name}.weight" in tensors:
            w, b = tensors.pop(f"{name}.weight"), tensors.pop(f"{name}.bias")
            head = {name: {"kernel": np.asarray(w, np.float32).T.copy(), "bias": np.asarray(b, np.float32)}}
    params = params_from_hf_tensors(cfg, tensors)
    if scan_layers:
        cfg = cfg.replace(scan_layers=True)
        params = stack_layers(cfg, params)
    return cfg, params, head


def to_hf_finetuned(cfg: ModelConfig, params: Params, out_dir: str, architecture: str,
                    label_names: Optional[list] = None) -> None:
    """Writes a fine-tuned model (``{"bert": encoder, "<head>": output layer}``) in the HF ``architecture``
    layout, with ``id2label``/``label2id`` from ``label_names`` (``num_labels=1``: a regression head)."""
    import flax.linen as nn
    from safetensors.numpy import save_file

    params = nn.unbox(params)
    heads = [n for n in FINETUNED_HEADS if n in params and architecture in FINETUNED_HEADS[n]]
    if not heads or any(k not in ("bert", heads[0]) for k in params):
        raise ValueError(f"params with {sorted(params)} have no {architecture} layout (expected bert + one of "
                         f"{[n for n in FINETUNED_HEADS if architecture in FINETUNED_HEADS[n]]})")
    # Token and span classifiers in transformers have no pooler (add_pooling_layer=False).
    dropped = ("mlm", "nsp") if architecture == "BertForSequenceClassification" else ("mlm", "nsp", "pooler")
    encoder = {k: v for k, v in params["bert"].items() if k not in dropped}
    tensors = {"bert." + k: v for k, v in hf_tensors_from_params(cfg, encoder).items()}
    head = params[heads[0]]
    tensors[f"{heads[0]}.weight"] = np.ascontiguousarray(np.asarray(head["kernel"], np.float32).T)
    tensors[f"{heads[0]}.bias"] = np.asarray(head["bias"], np.float32)
    hf_cfg = cfg.to_hf_dict()
    hf_cfg["architectures"] = [architecture]
    if label_names is not None:
        hf_cfg["id2label"] = {str(i): str(n) for i, n in enumerate(label_names)}
        hf_cfg["label2id"] = {str(n): i for i, n in enumerate(label_names)}
        hf_cfg["num_labels"] = len(label_names)
    os.makedirs(out_dir, exist_ok=True)
    with atomic_files.atomic_path(os.path.join(out_dir, SAFETENSORS)) as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    atomic_files.write_json(os.path.join(out_dir, CONFIG), hf_cfg, indent=2, sort_keys=True)


def check_vocab(cfg: ModelConfig, vocab_size: int) -> None:
    """Raises if a tokenizer's vocabulary has ids the embedding table cannot hold (NaN losses otherwise)."""
    if vocab_size > cfg.vocab_size:
        raise ValueError(
            f"the tokenizer has {vocab_size} tokens but the model's embedding table has vocab_size="
            f"{cfg.vocab_size} rows: ids >= {cfg.vocab_size} would index past it. Use a model config with "
            f"vocab_size >= {vocab_size} (e.g. cfg.replace(vocab_size={vocab_size})).")


def copy_tokenizer_files(src_dir: str, dst_dir: str) -> list[str]:
    """Copies the tokenizer files found in ``src_dir``; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if os.path.exists(os.path.join(src_dir, name)):
            with atomic_files.atomic_path(os.path.join(dst_dir, name)) as tmp:
                shutil.copyfile(os.path.join(src_dir, name), tmp)
            copied.append(name)
    return copied


def main(argv: list[str]) -> None:
    from absl import app, flags

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; give --from_hf=DIR --to_hf=OUT_DIR")
    f = flags.FLAGS
    if not f.from_hf or not f.to_hf:
        raise app.UsageError("give both --from_hf=DIR (an HF checkpoint) and --to_hf=OUT_DIR")
    cfg, params = from_hf(f.from_hf, init_missing_heads=f.init_missing_heads)
    to_hf(cfg, params, f.to_hf)
    copied = copy_tokenizer_files(f.from_hf, f.to_hf)
    from bertgpt_jax.models import count_params

    print(f"wrote {f.to_hf}: {cfg.model_type}, {count_params(params):,} parameters"
          + (f"; tokenizer files {', '.join(copied)}" if copied else ""))


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string("from_hf", None, "HF model directory to read (config.json + model.safetensors): "
                        "BertModel, BertForPreTraining, BertForMaskedLM, GPT2Model or GPT2LMHeadModel.")
    flags.DEFINE_string("to_hf", None, "Directory to write config.json + model.safetensors in the "
                        "BertForPreTraining (BertModel if there are no heads) or GPT2LMHeadModel layout.")
    flags.DEFINE_bool("init_missing_heads", False, "For BERT checkpoints without the pooler / MLM / NSP "
                      "heads, initialise them from scratch instead of exporting the encoder only.")


if __name__ == "__main__":
    from bertgpt_jax import cli

    _define_flags()
    cli.run(main, user_errors=(ValueError, FileNotFoundError, NotADirectoryError))
