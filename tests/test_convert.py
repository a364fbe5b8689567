"""HF parity and checkpoint import/export against transformers' PyTorch models (fp32, random weights)."""

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file, save_file

from bertgpt_jax import configs, convert, models
from tests.model_params import random_params

TOL = 1e-4
TINY = dict(vocab_size=300, hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2,
            max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _randomize(model, seed=0):
    # Non-trivial LayerNorm scales and biases too, so a mis-mapped bias or scale cannot hide.
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def _hf_model(cls, cfg):
    hf_cfg = cfg.to_hf_dict()
    config = (transformers.BertConfig if cfg.is_bert else transformers.GPT2Config)(**hf_cfg)
    return _randomize(cls(config))


def _save(model, path):
    model.save_pretrained(path)
    return str(path)


def _batch(B, T, V, seed=0, pad_from=None):
    rs = np.random.RandomState(seed)
    ids = rs.randint(1, V, (B, T))
    mask = np.ones((B, T), np.int64)
    if pad_from is not None:
        mask[-1, pad_from:] = 0  # right padding on the last row
        ids[-1, pad_from:] = 0
    types = np.zeros((B, T), np.int64)
    types[:, T // 2:] = 1
    return ids, mask, types


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


@pytest.mark.parametrize("shape", [dict(), dict(hidden_size=48, num_attention_heads=3, hidden_act="gelu_new",
                                                num_hidden_layers=3)])
@pytest.mark.parametrize("B,T,pad_from", [(2, 10, 6), (3, 17, None)])
def test_bert_for_pretraining_parity(tmp_path, shape, B, T, pad_from):
    cfg = configs.get("bert-tiny").replace(**{**TINY, **shape})
    hf = _hf_model(transformers.BertForPreTraining, cfg)
    cfg2, params = convert.from_hf(_save(hf, tmp_path))
    assert cfg2.replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0) == cfg
    ids, mask, types = _batch(B, T, cfg.vocab_size, pad_from=pad_from)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types),
                 output_hidden_states=True)
    positions = np.tile(np.arange(T), (B, 1))
    out = models.from_config(cfg2).apply({"params": params}, ids, attention_mask=mask, token_type_ids=types,
                                         masked_lm_positions=positions, output_hidden_states=True)
    assert len(out.hidden_states) == len(ref.hidden_states)
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        assert _max_diff(ours, theirs.numpy()) <= TOL
    assert _max_diff(out.mlm_logits, ref.prediction_logits.numpy()) <= TOL
    assert _max_diff(out.nsp_logits, ref.seq_relationship_logits.numpy()) <= TOL
    # Gathering a few positions gives exactly those rows of the full-sequence logits.
    some = np.array([[3, 0, 1]] * B)
    few = models.from_config(cfg2).apply({"params": params}, ids, attention_mask=mask, token_type_ids=types,
                                         masked_lm_positions=some)
    expected = np.take_along_axis(ref.prediction_logits.numpy(), some[:, :, None], axis=1)
    assert _max_diff(few.mlm_logits, expected) <= TOL


def test_bert_model_without_heads(tmp_path):
    cfg = configs.get("bert-tiny").replace(**TINY)
    hf = _hf_model(transformers.BertModel, cfg)
    path = _save(hf, tmp_path / "hf")
    _, params = convert.from_hf(path)
    assert "mlm" not in params and "nsp" not in params and "pooler" in params
    ids, mask, types = _batch(2, 9, cfg.vocab_size, pad_from=5)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
    model = models.from_config(cfg)
    out = model.apply({"params": params}, ids, attention_mask=mask, token_type_ids=types)
    assert _max_diff(out.last_hidden_state, ref.last_hidden_state.numpy()) <= TOL
    assert _max_diff(out.pooler_output, ref.pooler_output.numpy()) <= TOL
    with pytest.raises(ValueError, match="init_missing_heads=True"):
        model.apply({"params": params}, ids, masked_lm_positions=np.zeros((2, 1), np.int32))
    # Asked explicitly: fresh heads, and the body is untouched.
    _, full = convert.from_hf(path, init_missing_heads=True)
    assert set(full) == {"embeddings", "encoder", "pooler", "mlm", "nsp"}
    np.testing.assert_array_equal(full["encoder"]["layer_0"]["attention"]["qkv"]["kernel"],
                                  params["encoder"]["layer_0"]["attention"]["qkv"]["kernel"])
    out = model.apply({"params": full}, ids, masked_lm_positions=np.zeros((2, 1), np.int32))
    assert out.mlm_logits.shape == (2, 1, cfg.vocab_size) and np.isfinite(out.mlm_logits).all()
    # Export of a headless model is a BertModel that transformers loads completely.
    convert.to_hf(cfg, params, str(tmp_path / "out"))
    back, info = transformers.BertModel.from_pretrained(str(tmp_path / "out"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        again = back.eval()(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
    assert _max_diff(again.last_hidden_state.numpy(), ref.last_hidden_state.numpy()) == 0.0


def test_bert_for_masked_lm_import(tmp_path):
    cfg = configs.get("bert-tiny").replace(**TINY)
    hf = _hf_model(transformers.BertForMaskedLM, cfg)
    hf.tie_weights()  # randomising broke nothing, but keep the decoder the same tensor as the table
    _, params = convert.from_hf(_save(hf, tmp_path))
    assert "mlm" in params and "nsp" not in params and "pooler" not in params
    ids, mask, types = _batch(2, 8, cfg.vocab_size)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types)).logits
    out = models.from_config(cfg).apply({"params": params}, ids, attention_mask=mask, token_type_ids=types)
    assert out.pooler_output is None
    # The MLM head alone, applied at every position, is what BertForMaskedLM computes.
    _, full = convert.from_hf(str(tmp_path), init_missing_heads=True)
    full["mlm"] = params["mlm"]
    ours = models.from_config(cfg).apply({"params": full}, ids, attention_mask=mask, token_type_ids=types,
                                         masked_lm_positions=np.tile(np.arange(8), (2, 1))).mlm_logits
    assert _max_diff(ours, ref.numpy()) <= TOL


@pytest.mark.parametrize("cls", [transformers.GPT2LMHeadModel, transformers.GPT2Model])
@pytest.mark.parametrize("B,T,pad_from", [(2, 12, 7), (1, 20, None)])
def test_gpt2_parity(tmp_path, cls, B, T, pad_from):
    cfg = configs.get("gpt2").replace(**TINY)
    hf = _hf_model(cls, cfg)
    cfg2, params = convert.from_hf(_save(hf, tmp_path))
    ids, mask, _ = _batch(B, T, cfg.vocab_size, pad_from=pad_from)
    with torch.no_grad():
        ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), output_hidden_states=True)
    out = models.from_config(cfg2).apply({"params": params}, ids,
                                         attention_mask=mask if pad_from else None, output_hidden_states=True)
    keep = mask.astype(bool)  # padded positions are not defined outputs
    assert len(out.hidden_states) == len(ref.hidden_states)
    for ours, theirs in zip(out.hidden_states, ref.hidden_states):
        assert _max_diff(np.asarray(ours)[keep], theirs.numpy()[keep]) <= TOL
    wte = hf.get_input_embeddings().weight.detach().numpy()
    ref_logits = ref.logits.numpy() if cls is transformers.GPT2LMHeadModel else ref.last_hidden_state.numpy() @ wte.T
    assert _max_diff(np.asarray(out.logits)[keep], ref_logits[keep]) <= TOL


@pytest.mark.parametrize("name,cls", [("bert-tiny", transformers.BertForPreTraining),
                                      ("gpt2", transformers.GPT2LMHeadModel)])
def test_export_loads_in_transformers_with_identical_outputs(tmp_path, name, cls):
    cfg = configs.get(name).replace(**TINY)
    model = models.from_config(cfg)
    ids, mask, types = _batch(2, 11, cfg.vocab_size, pad_from=8)
    kw = {"masked_lm_positions": np.zeros((2, 1), np.int32)} if cfg.is_bert else {}
    params = random_params(model, ids, seed=3, std=0.3, **kw)
    convert.to_hf(cfg, params, str(tmp_path))
    hf, info = cls.from_pretrained(str(tmp_path), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    hf.eval()
    with torch.no_grad():
        if cfg.is_bert:
            ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask), token_type_ids=torch.tensor(types))
            out = model.apply({"params": params}, ids, attention_mask=mask, token_type_ids=types,
                              masked_lm_positions=np.tile(np.arange(11), (2, 1)))
            assert _max_diff(out.mlm_logits, ref.prediction_logits.numpy()) <= TOL
            assert _max_diff(out.nsp_logits, ref.seq_relationship_logits.numpy()) <= TOL
        else:
            ref = hf(torch.tensor(ids), attention_mask=torch.tensor(mask))
            out = model.apply({"params": params}, ids, attention_mask=mask)
            keep = mask.astype(bool)
            assert _max_diff(np.asarray(out.logits)[keep], ref.logits.numpy()[keep]) <= TOL
    # Re-import gives back exactly what was exported.
    _, again = convert.from_hf(str(tmp_path))
    jax.tree.map(np.testing.assert_array_equal, again, jax.tree.map(np.asarray, params))


def test_scanned_layout_round_trip(tmp_path):
    cfg = configs.get("gpt2").replace(**TINY)
    hf = _hf_model(transformers.GPT2LMHeadModel, cfg)
    cfg_s, stacked = convert.from_hf(_save(hf, tmp_path / "in"), scan_layers=True)
    assert cfg_s.scan_layers and stacked["h"]["layers"]["attention"]["qkv"]["kernel"].shape == (2, 32, 3, 4, 8)
    ids, _, _ = _batch(2, 9, cfg.vocab_size)
    with torch.no_grad():
        ref = hf(torch.tensor(ids)).logits.numpy()
    out = models.from_config(cfg_s).apply({"params": stacked}, ids)
    assert _max_diff(out.logits, ref) <= TOL
    convert.to_hf(cfg_s, stacked, str(tmp_path / "out"))
    a, b = load_file(str(tmp_path / "out" / "model.safetensors")), load_file(str(tmp_path / "in" / "model.safetensors"))
    for k, v in a.items():
        np.testing.assert_array_equal(v, b[k], err_msg=k)


def test_bad_checkpoints_name_the_tensor(tmp_path):
    cfg = configs.get("bert-tiny").replace(**TINY)
    path = _save(_hf_model(transformers.BertForPreTraining, cfg), tmp_path)
    tensors = load_file(os.path.join(path, "model.safetensors"))
    st = os.path.join(path, "model.safetensors")

    def write(t):
        save_file(t, st)

    key = "bert.encoder.layer.1.attention.self.key.weight"
    write({k: v for k, v in tensors.items() if k != key})
    with pytest.raises(ValueError, match=f"missing tensors.*{key}"):
        convert.from_hf(path)
    write({**tensors, "bert.encoder.layer.7.output.dense.weight": tensors[key]})
    with pytest.raises(ValueError, match="unexpected tensors.*bert.encoder.layer.7.output.dense.weight"):
        convert.from_hf(path)
    write({**tensors, key: tensors[key][:, :16]})
    with pytest.raises(ValueError, match=rf"{key} has shape \(32, 16\), expected \(32, 32\)"):
        convert.from_hf(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        convert.from_hf(str(tmp_path / "nowhere"))


def test_check_vocab():
    cfg = configs.get("bert-tiny").replace(vocab_size=100)
    convert.check_vocab(cfg, 100)
    with pytest.raises(ValueError, match="101 tokens.*vocab_size=100"):
        convert.check_vocab(cfg, 101)


def test_minilm_matches_transformers_on_real_sentences(minilm_dir, tmp_path):
    cfg, params = convert.from_hf(minilm_dir)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (6, 384, 12)
    assert "mlm" not in params  # a BertModel: the encoder only
    tok = transformers.BertTokenizer(os.path.join(minilm_dir, "vocab.txt"), do_lower_case=True)
    sentences = ["The quick brown fox jumps over the lazy dog.",
                 "JAX compiles numerical programs for accelerators.",
                 "Pretraining on a large corpus, then fine-tuning on a small task, works well."]
    enc = tok(sentences, padding=True, return_tensors="np")  # padded batch
    pair = tok("Is this the first sentence?", "Yes, and this is the second one.", return_tensors="np")
    assert enc["attention_mask"].min() == 0 and pair["token_type_ids"].max() == 1
    ref_model = transformers.BertModel.from_pretrained(minilm_dir).eval()
    model = models.from_config(cfg)
    for batch in (enc, pair):
        with torch.no_grad():
            ref = ref_model(**{k: torch.tensor(v) for k, v in batch.items()})
        out = model.apply({"params": params}, batch["input_ids"], attention_mask=batch["attention_mask"],
                          token_type_ids=batch["token_type_ids"])
        assert out.last_hidden_state.shape[1] > 8
        assert _max_diff(out.last_hidden_state, ref.last_hidden_state.numpy()) <= TOL
        assert _max_diff(out.pooler_output, ref.pooler_output.numpy()) <= TOL
    # The CLI re-exports it; transformers then loads it completely and agrees.
    out_dir = tmp_path / "export"
    subprocess.run([sys.executable, "-m", "bertgpt_jax.convert", f"--from_hf={minilm_dir}", f"--to_hf={out_dir}"],
                   check=True, capture_output=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert json.load(open(out_dir / "config.json"))["architectures"] == ["BertModel"]
    assert (out_dir / "vocab.txt").exists()
    back, info = transformers.BertModel.from_pretrained(str(out_dir), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        a = back.eval()(**{k: torch.tensor(v) for k, v in pair.items()}).last_hidden_state
        b = ref_model(**{k: torch.tensor(v) for k, v in pair.items()}).last_hidden_state
    assert torch.equal(a, b)


def test_cli_help_explains():
    res = subprocess.run([sys.executable, "-m", "bertgpt_jax.convert", "--helpfull"], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert "--from_hf" in res.stdout and "--to_hf" in res.stdout and "init_missing_heads" in res.stdout


def test_bf16_and_sharded_checkpoints_import(tmp_path):
    cfg = configs.get("gpt2").replace(**TINY)
    hf = _hf_model(transformers.GPT2LMHeadModel, cfg)
    _, ref = convert.from_hf(_save(hf, tmp_path / "fp32"))
    hf.to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
    _, bf16 = convert.from_hf(str(tmp_path / "bf16"))
    kernel = ref["h"]["layer_0"]["mlp"]["wi"]["kernel"]
    assert bf16["h"]["layer_0"]["mlp"]["wi"]["kernel"].dtype == np.float32
    np.testing.assert_allclose(bf16["h"]["layer_0"]["mlp"]["wi"]["kernel"], kernel, rtol=1e-2)
    hf.to(torch.float32).save_pretrained(str(tmp_path / "shards"), max_shard_size="20KB")
    assert (tmp_path / "shards" / "model.safetensors.index.json").exists()
    _, sharded = convert.from_hf(str(tmp_path / "shards"))
    jax.tree.map(np.testing.assert_array_equal, sharded, bf16)  # the same (bf16-rounded) weights


def test_damaged_safetensors_and_index_are_refused_by_name(tmp_path):
    import struct

    from safetensors.numpy import save_file

    good = str(tmp_path / "model.safetensors")
    save_file({"w": np.arange(64, dtype=np.float32).reshape(8, 8)}, good)
    np.testing.assert_array_equal(convert.load_safetensors(good)["w"], np.arange(64).reshape(8, 8))
    raw = open(good, "rb").read()
    truncated = str(tmp_path / "truncated.safetensors")
    open(truncated, "wb").write(raw[:-17])
    with pytest.raises(ValueError, match=f"tensor w in {truncated} lies at bytes .* truncated"):
        convert.load_safetensors(truncated)
    huge = str(tmp_path / "huge.safetensors")
    open(huge, "wb").write(struct.pack("<Q", 1 << 62) + raw[8:])
    with pytest.raises(ValueError, match=f"{huge} is not a valid safetensors file: its header length"):
        convert.load_safetensors(huge)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(good, tmp_path / "outside.safetensors")
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "../outside.safetensors"}}))
    with pytest.raises(ValueError, match="outside the checkpoint directory"):
        convert.load_hf_tensors(str(ckpt))
    shutil.copy(good, ckpt / "part-1.safetensors")
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "part-1.safetensors"}}))
    assert list(convert.load_hf_tensors(str(ckpt))) == ["w"]
