"""A trained model for inference: its config, parameters (placed on a mesh) and tokenizer, from a
pretraining run's ``output_dir`` (Orbax checkpoint) or an HF directory (``config.json`` + safetensors).

A run's ``output_dir`` describes itself: ``pretrain`` writes ``model_config.json`` (the model it trained,
with the token store's vocabulary) and ``tokenizer/`` (the store's tokenizer) beside ``checkpoints/``.
For a directory without them, ``model`` names the config and ``vocab_file`` the tokenizer.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bertgpt_jax import configs, sharding
from bertgpt_jax.cli import setting

RUN_CONFIG = "model_config.json"  # in a run's output_dir, beside checkpoints/
RUN_TOKENIZER = "tokenizer"


@dataclasses.dataclass
class LoadedModel:
    """A model ready to run: ``model.apply({"params": params}, ...)`` under ``mesh``."""

    cfg: configs.ModelConfig
    model: nn.Module
    params: Any
    tokenizer: Any  # bertgpt_jax.tokenization.Tokenizer, or None when the checkpoint carries none
    mesh: jax.sharding.Mesh
    source: str

    def require_tokenizer(self):
        if self.tokenizer is None:
            raise ValueError(f"{self.source} holds no tokenizer; pass --vocab_file (vocab.txt, tokenizer.json, "
                             "vocab.json + merges.txt, a *.tiktoken ranks file, ...)")
        return self.tokenizer


def save_run_description(output_dir: str, cfg: configs.ModelConfig, tokenizer_dir: str | None) -> None:
    """What ``load`` needs besides the checkpoint: the model config and the tokenizer, into ``output_dir``."""
    from bertgpt_jax import atomic_files

    os.makedirs(output_dir, exist_ok=True)
    atomic_files.write_json(os.path.join(output_dir, RUN_CONFIG),
                            {**cfg.to_hf_dict(), "scan_layers": cfg.scan_layers}, indent=2, sort_keys=True)
    target = os.path.join(output_dir, RUN_TOKENIZER)
    if tokenizer_dir and os.path.isdir(tokenizer_dir) and not os.path.isdir(target):
        from bertgpt_jax import tokenization

        tokenization.from_file(tokenizer_dir).save(target)


def is_hf_dir(path: str) -> bool:
    return os.path.exists(os.path.join(path, "config.json")) and not os.path.isdir(os.path.join(path, "checkpoints"))


def param_shardings(model: nn.Module, mesh: jax.sharding.Mesh, example_args: tuple) -> tuple[Any, Any]:
    """``(abstract params, their NamedShardings)`` from the parameters' logical axes and the rules table."""
    with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
        boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), *example_args)["params"])
        shardings = nn.logical_to_mesh_sharding(nn.get_partition_spec(boxed), mesh, sharding.RULES)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), nn.unbox(boxed),
                            shardings)
    return abstract, shardings


def place(params: Any, shardings: Any, source: str) -> Any:
    """``params`` on the mesh, each leaf with the sharding of the model parameter at the same path. The
    params may lack whole heads the model can build (a BertModel has no MLM/NSP heads); a parameter the
    model does not have, or one of another shape, is an error."""
    table = {jax.tree_util.keystr(k): s for k, s in jax.tree_util.tree_leaves_with_path(shardings)}

    def put(path, p):
        name = jax.tree_util.keystr(path)
        if name not in table:
            raise ValueError(f"{source}: parameter {name} is not part of the model the config describes; "
                             "check --model")
        return jax.device_put(p if isinstance(p, jax.Array) else np.asarray(p), table[name])

    return jax.tree_util.tree_map_with_path(put, params)


def _example_args(cfg: configs.ModelConfig) -> tuple:
    return (jnp.zeros((1, 8), jnp.int32),)


def _run_config(path: str, model: str | None, tokenizer) -> configs.ModelConfig:
    described = os.path.join(path, RUN_CONFIG)
    if model:
        cfg = configs.get(model)
        preset = model.lower() in configs.PRESETS or model.lower() in configs.ALIASES
        if preset and tokenizer is not None and tokenizer.vocab_size != cfg.vocab_size:
            cfg = cfg.replace(vocab_size=tokenizer.vocab_size)  # as pretraining fits a preset to its store
        return cfg
    if os.path.exists(described):
        with open(described, encoding="utf-8") as f:
            d = json.load(f)
        return configs.ModelConfig.from_dict(d).replace(scan_layers=bool(d.get("scan_layers", False)))
    raise ValueError(f"{path} holds no {RUN_CONFIG} (written by pretraining runs of this version); pass "
                     "--model with the --model the run trained (a preset or config.json path)")


def load(path: str, *, model: str | None = None, vocab_file: str | None = None, do_lower_case: bool | None = None,
         model_type: str | None = None, mesh: jax.sharding.Mesh | None = None, purpose: str = "this tool",
         dtype: str = "float32", need_mlm_head: bool = False) -> LoadedModel:
    """The model at ``path`` (a run's output_dir, one of its checkpoint folders, or an HF directory).

    ``model_type`` ("bert" or "gpt2") is what the caller needs; another kind is an error naming ``purpose``,
    as is a BERT without a masked-LM head when ``need_mlm_head``.
    Parameters are placed on ``mesh`` (default: every device, batch over data) as their logical axes say.
    """
    from bertgpt_jax import convert, models, tokenization
    from bertgpt_jax.training import checkpointing

    if not path:
        raise ValueError("--init_checkpoint is required: a pretraining run's output_dir or an HF directory")
    if not os.path.exists(path):
        raise FileNotFoundError(f"init_checkpoint {path} does not exist; give a pretraining run's output_dir or an "
                                "HF directory (config.json + model.safetensors)")
    mesh = mesh if mesh is not None else sharding.make_mesh((-1, 1, 1))
    tokenizer = None
    if vocab_file:
        tokenizer = tokenization.from_file(vocab_file, do_lower_case=do_lower_case)
    run_dir = path
    if os.path.basename(os.path.normpath(path)) in ("checkpoints", "best_checkpoint"):
        run_dir = os.path.dirname(os.path.normpath(path))
    elif os.path.isdir(os.path.join(path, checkpointing.PARAMS)):  # one step's folder
        run_dir = os.path.dirname(os.path.dirname(os.path.normpath(path)))

    if is_hf_dir(path):
        cfg = configs.ModelConfig.from_json_file(os.path.join(path, "config.json"))
        if tokenizer is None:
            try:
                tokenizer = tokenization.from_file(path, do_lower_case=do_lower_case)
            except ValueError:
                tokenizer = None
    else:
        if tokenizer is None and os.path.isdir(os.path.join(run_dir, RUN_TOKENIZER)):
            tokenizer = tokenization.from_file(os.path.join(run_dir, RUN_TOKENIZER))
        cfg = _run_config(run_dir, model, tokenizer)
    if model_type is not None and cfg.model_type != model_type:
        kinds = {"bert": "a BERT", "gpt2": "a GPT-2"}
        raise ValueError(f"init_checkpoint {path} is {kinds[cfg.model_type]} model (model_type {cfg.model_type!r}); "
                         f"{purpose} needs {kinds[model_type]} checkpoint")
    cfg = cfg.replace(dtype=dtype, kernels="xla", remat="none", hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0)
    if tokenizer is not None:
        convert.check_vocab(cfg, tokenizer.vocab_size)

    if is_hf_dir(path):
        _, host_params = convert.from_hf(path)
        if need_mlm_head and cfg.is_bert:
            if "mlm" not in host_params:
                raise ValueError(f"init_checkpoint {path} has no masked-LM head (cls.predictions.*: a BertModel, e.g. "
                                 f"a sentence-transformers checkpoint); {purpose} needs BertForMaskedLM or "
                                 "BertForPreTraining weights, or a pretraining run of this package")
            if any(h not in host_params for h in convert.BERT_HEADS):  # e.g. BertForMaskedLM: no NSP head
                _, host_params = convert.from_hf(path, init_missing_heads=True)
        stored_cfg = cfg.replace(scan_layers=False)
    else:
        stored_cfg = cfg
        stored_model = models.from_config(stored_cfg, platform="cpu")
        abstract, _ = param_shardings(stored_model, mesh, _example_args(cfg))
        host_params = checkpointing.restore_params(path, abstract)
        if cfg.scan_layers:
            host_params = convert.unstack_layers(cfg, jax.device_get(host_params))
    cfg = stored_cfg.replace(scan_layers=False)
    net = models.from_config(cfg, platform="cpu")
    _, shardings = param_shardings(net, mesh, _example_args(cfg))
    params = place(host_params, shardings, path)
    return LoadedModel(cfg=cfg, model=net, params=params, tokenizer=tokenizer, mesh=mesh, source=path)


def from_params(cfg: configs.ModelConfig, params: Any, tokenizer=None, mesh: jax.sharding.Mesh | None = None,
                source: str = "<params>") -> LoadedModel:
    """A :class:`LoadedModel` from parameters in memory (a notebook's freshly trained or imported model)."""
    from bertgpt_jax import models

    mesh = mesh if mesh is not None else sharding.make_mesh((-1, 1, 1))
    cfg = cfg.replace(kernels="xla", remat="none", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if cfg.scan_layers:
        from bertgpt_jax import convert

        params = convert.unstack_layers(cfg, jax.device_get(params))
        cfg = cfg.replace(scan_layers=False)
    net = models.from_config(cfg, platform="cpu")
    _, shardings = param_shardings(net, mesh, _example_args(cfg))
    params = place(nn.unbox(params), shardings, source)
    return LoadedModel(cfg=cfg, model=net, params=params, tokenizer=tokenizer, mesh=mesh, source=source)


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """Where a tool's model comes from (the flags every inference tool shares)."""

    init_checkpoint: str | None = setting(
        None, "A pretraining run's output_dir (or its checkpoints/ or best_checkpoint/ folder), or an HF directory "
        "(config.json + model.safetensors).", required=True)
    model: str | None = setting(None, "The model config, for a run directory without model_config.json: a preset "
                                "name or a config.json / bert_config.json path.", aliases=("bert_config_file",))
    vocab_file: str | None = setting(None, "The tokenizer, when the checkpoint directory holds none: vocab.txt, "
                                     "tokenizer.json, vocab.json + merges.txt, a *.tiktoken ranks file, ...")
    do_lower_case: bool | None = setting(None, "Lower-case input for a bare vocab.txt (other tokenizer files say "
                                         "themselves).")
    mesh_shape: tuple[int, int, int] = setting((-1, 1, 1), "Device mesh (data, fsdp, tensor): batches over "
                                               "data x fsdp, parameters over fsdp and tensor, as in training.")

    def load(self, model_type: str | None = None, purpose: str = "this tool", need_mlm_head: bool = False
             ) -> LoadedModel:
        return load(self.init_checkpoint, model=self.model, vocab_file=self.vocab_file,
                    do_lower_case=self.do_lower_case, model_type=model_type,
                    mesh=sharding.make_mesh(self.mesh_shape), purpose=purpose, need_mlm_head=need_mlm_head)
