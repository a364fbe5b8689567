"""Configs: presets match the published sizes (parameter counts equal transformers'), JSON round trips, errors."""

import json

import flax.linen as nn
import jax
import numpy as np
import pytest
import torch
import transformers

from bertgpt_jax import configs, models


def _our_count(cfg):
    model = models.from_config(cfg)
    ids = np.zeros((1, 2), np.int32)
    kw = {"masked_lm_positions": np.zeros((1, 1), np.int32)} if cfg.is_bert else {}
    return models.count_params(jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), ids, **kw))["params"]))


def _hf_count(cfg):
    with torch.device("meta"):  # shapes only: gpt2-xl is never materialised
        if cfg.is_bert:
            model = transformers.BertForPreTraining(transformers.BertConfig(**cfg.to_hf_dict()))
        else:
            model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg.to_hf_dict()))
    return sum(p.numel() for p in model.parameters())  # tied tensors counted once


@pytest.mark.parametrize("name", sorted(configs.PRESETS))
def test_preset_parameter_count_equals_transformers(name):
    cfg = configs.get(name)
    assert _our_count(cfg) == _hf_count(cfg)


def test_published_sizes():
    assert _our_count(configs.get("gpt2")) == 124_439_808
    sizes = {n: (c.num_hidden_layers, c.hidden_size, c.num_attention_heads) for n, c in configs.PRESETS.items()}
    assert sizes == {"bert-tiny": (2, 128, 2), "bert-mini": (4, 256, 4), "bert-small": (4, 512, 8),
                     "bert-medium": (8, 512, 8), "bert-base": (12, 768, 12), "bert-large": (24, 1024, 16),
                     "gpt2": (12, 768, 12), "gpt2-medium": (24, 1024, 16), "gpt2-large": (36, 1280, 20),
                     "gpt2-xl": (48, 1600, 25)}
    assert configs.get("gpt2-1558m") == configs.get("gpt2-xl")


@pytest.mark.parametrize("name", ["bert-base", "gpt2-medium"])
def test_hf_config_round_trip(tmp_path, name):
    cfg = configs.get(name).replace(hidden_act="gelu_new", layer_norm_eps=1e-6)
    cfg.save_hf(str(tmp_path))
    assert configs.get(str(tmp_path / "config.json")) == cfg
    # transformers reads what we write and writes what we read.
    hf_cls = transformers.BertConfig if cfg.is_bert else transformers.GPT2Config
    hf = hf_cls.from_pretrained(str(tmp_path))
    assert (hf.num_hidden_layers, hf.hidden_size, hf.vocab_size) == (cfg.num_hidden_layers, cfg.hidden_size,
                                                                    cfg.vocab_size)
    assert configs.ModelConfig.from_dict(hf.to_dict()) == cfg


def test_bert_config_json_round_trip(tmp_path):
    cfg = configs.get("bert-small").replace(vocab_size=8000)
    path = str(tmp_path / "bert_config.json")
    cfg.save_bert_config(path)
    d = json.load(open(path))
    assert "model_type" not in d and d["hidden_size"] == 512 and d["vocab_size"] == 8000
    assert configs.get(path) == cfg


def test_replace_variants():
    cfg = configs.get("bert-base", dtype="bfloat16")
    assert cfg.dtype == "bfloat16" and cfg.param_dtype == "float32"
    assert cfg.replace(remat="full").remat == "full" and cfg.remat == "none"


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="unknown model 'bert-huge'.*bert-base"):
        configs.get("bert-huge")
    with pytest.raises(ValueError, match="hidden_size 100 is not divisible by num_attention_heads 12"):
        configs.get("bert-base").replace(hidden_size=100)
    with pytest.raises(ValueError, match="hidden_act 'swish2'"):
        configs.get("bert-base").replace(hidden_act="swish2")
    with pytest.raises(ValueError, match="remat 'some'"):
        configs.get("gpt2").replace(remat="some")
    with pytest.raises(ValueError, match="position_embedding_type 'relative_key'"):
        configs.ModelConfig.from_dict({**configs.get("bert-base").to_hf_dict(),
                                       "position_embedding_type": "relative_key"})
