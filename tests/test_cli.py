"""Flags are generated from the config dataclasses: one name, one default and one help text per setting."""

import dataclasses

import pytest
from absl import flags

from bertgpt_jax import cli, configs, pretrain
from bertgpt_jax.tasks.pretraining import PretrainingData
from bertgpt_jax.training.config import TrainConfig


def test_pretrain_flags_are_the_config_fields_with_their_defaults():
    fields = {f.name for cls in (TrainConfig, PretrainingData) for f in dataclasses.fields(cls)}
    aliases = {a for cls in (TrainConfig, PretrainingData) for f in dataclasses.fields(cls)
               for a in f.metadata["aliases"]}
    defined = {f.name for f in pretrain.F.get_flags_for_module(pretrain.__name__)}
    assert defined == fields | aliases  # no flag without a field, none renamed
    for cls in (TrainConfig, PretrainingData):
        assert cli.flag_defaults(cls, pretrain.F) == {f.name: f.default for f in dataclasses.fields(cls)}, cls
        assert all(f.metadata["help"] for f in dataclasses.fields(cls)), cls


def test_execution_settings_are_the_model_configs():
    model = {f.name: f.default for f in dataclasses.fields(configs.ModelConfig)}
    train = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in ("dtype", "param_dtype", "remat", "scan_layers", "kernels"):
        assert train[name].default == model[name], name
    assert set(train["remat"].metadata["choices"]) == set(configs.REMAT_POLICIES)
    assert set(train["kernels"].metadata["choices"]) == set(configs.KERNELS)


def test_parsing_types_aliases_and_required_settings():
    fv = flags.FlagValues()
    cli.define_flags(TrainConfig, PretrainingData, flag_values=fv, module_name="test")
    fv(["prog", "--bert_config_file=bert-base", "--input_file=/data/store", "--output_dir=/runs/x",
        "--mesh_shape=16,4,1", "--learning_rate=1e-4", "--num_warmup_steps=7"])
    train, data = cli.from_flags(TrainConfig, fv), cli.from_flags(PretrainingData, fv)
    assert train.model == "bert-base" and data.dataset == "/data/store" and train.mesh_shape == (16, 4, 1)
    assert train.learning_rate == 1e-4 and train.num_warmup_steps == 7 and train.warmup_steps == 7
    assert TrainConfig(num_train_steps=14).warmup_steps == 14  # the default warmup is capped at the run
    assert TrainConfig().warmup_steps == 10000
    fv = flags.FlagValues()
    cli.define_flags(TrainConfig, flag_values=fv, module_name="test")
    fv(["prog", "--model=a", "--bert_config_file=b", "--output_dir=x"])
    with pytest.raises(cli.UsageError, match="--model=a and its alias --bert_config_file=b disagree"):
        cli.from_flags(TrainConfig, fv)
    fv = flags.FlagValues()
    cli.define_flags(TrainConfig, flag_values=fv, module_name="test")
    fv(["prog", "--output_dir=x", "--mesh_shape=4,1"])
    with pytest.raises(cli.UsageError, match="--model .or --bert_config_file. is required"):
        cli.from_flags(TrainConfig, fv)
    fv["model"].value = "bert-tiny"
    with pytest.raises(cli.UsageError, match="--mesh_shape=4,1 must have 3 entries"):
        cli.from_flags(TrainConfig, fv)
