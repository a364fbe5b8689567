"""BERT inference against transformers: features on the real MiniLM checkpoint, fill-mask on BertForMaskedLM."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import load_file

from bertgpt_jax import configs, sharding, tokenization
from bertgpt_jax.inference import features, fill_mask, loading
from tests import inference_models as im

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = ["The quick brown fox jumps over the lazy dog.", "A list is a sequence ||| a tuple cannot be changed",
            "Généralement, the interpreter reads unaffable source files line by line before running them."]


def _cli(module, *args):
    return subprocess.run([sys.executable, "-m", f"bertgpt_jax.{module}", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    return loading.load(minilm_dir, model_type="bert")


def test_features_equal_transformers_hidden_states_on_minilm(minilm, minilm_dir):
    pairs = [tuple(e.split(" ||| ")) if " ||| " in e else (e, None) for e in EXAMPLES]
    got = features.extract_features(minilm, pairs, layers=["-1", "-2", "0", "embeddings"], batch_size=8)
    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()
    hf_tok = transformers.BertTokenizer.from_pretrained(minilm_dir)
    worst = 0.0
    for i, (a, b) in enumerate(pairs):
        enc = hf_tok(a, b, return_tensors="pt")
        n = enc["input_ids"].shape[1]
        assert got.input_ids[i, :n].tolist() == enc["input_ids"][0].tolist()
        assert got.token_type_ids[i, :n].tolist() == enc["token_type_ids"][0].tolist()
        assert got.tokens[i] == hf_tok.convert_ids_to_tokens(enc["input_ids"][0])
        with torch.no_grad():
            ref = hf(**enc, output_hidden_states=True)
        for layer, index in ((-1, 6), (-2, 5), (0, 1), ("embeddings", 0)):
            worst = max(worst, im.max_diff(got.layers[layer][i, :n], ref.hidden_states[index][0]))
        assert np.all(got.layers[-1][i, n:] == 0)  # padding holds zeros
        last = ref.hidden_states[-1][0].numpy()
        worst = max(worst, im.max_diff(got.cls[i], last[0]), im.max_diff(got.mean[i], last.mean(0)),
                    im.max_diff(got.pooler[i], ref.pooler_output[0]))
    assert worst <= 1e-4, worst


def test_features_run_sorted_by_length_and_come_back_in_input_order(minilm_dir):
    """Four long and four short examples alternate; in batches of 3, longest first, two batches pad to the
    64-token bucket and the last (two short ones and an empty row) to 16 (unsorted, all three would pad to
    64), and every row still equals transformers' forward pass of that example."""
    long_a = ("The interpreter reads source files line by line, compiles each statement to bytecode, keeps "
              "the bytecode in a cache directory beside the module and runs it")
    texts = [(long_a, None), ("A tuple.", None), (long_a + " again", "and a second segment follows here"),
             ("Lists change.", None), (long_a + " twice over", None), ("Hi.", None),
             (long_a.replace("interpreter", "compiler"), None),
             ("Dicts map.", None)]
    one = loading.load(minilm_dir, model_type="bert", mesh=sharding.make_mesh((1, 1, 1), jax.devices()[:1]))
    ex = features.FeatureExtractor(one, layers=["-1", "-3"])
    got = ex.extract(texts, max_seq_length=64, batch_size=3)
    assert dict(ex.batch_shapes) == {(3, 64): 2, (3, 16): 1}
    hf = transformers.BertModel.from_pretrained(minilm_dir).eval()
    hf_tok = transformers.BertTokenizerFast.from_pretrained(minilm_dir)
    worst = 0.0
    with torch.no_grad():
        for i, (a, b) in enumerate(texts):
            one_enc = hf_tok(a, b, return_tensors="pt")
            n = one_enc["input_ids"].shape[1]
            assert got.input_ids[i, :n].tolist() == one_enc["input_ids"][0].tolist(), i
            assert got.token_type_ids[i, :n].tolist() == one_enc["token_type_ids"][0].tolist(), i
            assert got.attention_mask[i].sum() == n and np.all(got.layers[-1][i, n:] == 0)
            ref = hf(**one_enc, output_hidden_states=True).hidden_states
            worst = max(worst, im.max_diff(got.layers[-1][i, :n], ref[6][0]),
                        im.max_diff(got.layers[-3][i, :n], ref[4][0]), im.max_diff(got.cls[i], ref[6][0, 0]),
                        im.max_diff(got.mean[i], ref[6][0].mean(0)))
    assert worst <= 1e-4, worst


def test_extract_features_cli_writes_the_original_jsonl_and_arrays(minilm_dir, tmp_path):
    inp = tmp_path / "input.txt"
    inp.write_text("\n".join(EXAMPLES[:2]) + "\n\n")
    out_json, out_npz, out_st = tmp_path / "f.jsonl", tmp_path / "f.npz", tmp_path / "f.safetensors"
    res = _cli("extract_features", f"--input_file={inp}", f"--output_file={out_json}", f"--output_arrays={out_npz}",
               f"--init_checkpoint={minilm_dir}", "--layers=-1,-2", "--max_seq_length=32")
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in out_json.read_text().splitlines()]
    arrays = dict(np.load(out_npz))
    assert [r["linex_index"] for r in lines] == [0, 1]
    tok = tokenization.from_file(minilm_dir)
    assert [f["token"] for f in lines[1]["features"]] == (["[CLS]"] + tok.tokenize("A list is a sequence") + ["[SEP]"]
                                                          + tok.tokenize("a tuple cannot be changed") + ["[SEP]"])
    first = lines[0]["features"][1]["layers"]
    assert [x["index"] for x in first] == [-1, -2]
    np.testing.assert_allclose(first[0]["values"], arrays["layer_-1"][0, 1], atol=1e-6)
    assert sorted(arrays) == ["attention_mask", "cls", "input_ids", "layer_-1", "layer_-2", "mean", "pooler",
                              "token_type_ids"]
    features.write_arrays(str(out_st), features.extract_features(
        loading.load(minilm_dir), [e.split(" ||| ") if " ||| " in e else e for e in EXAMPLES[:2]], layers=["-1", "-2"],
        max_seq_length=32))
    st = load_file(str(out_st))
    assert sorted(st) == sorted(arrays)
    np.testing.assert_allclose(st["mean"], arrays["mean"], atol=1e-6)
    # Bad input: exit status 2 and a message that says what is wrong.
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    res = _cli("extract_features", f"--input_file={empty}", f"--output_file={out_json}",
               f"--init_checkpoint={minilm_dir}")
    assert res.returncode == 2 and "holds no example" in res.stderr, res.stderr[-2000:]
    with pytest.raises(ValueError, match="has no masked-LM head .* fill-mask needs BertForMaskedLM"):
        loading.load(minilm_dir, model_type="bert", need_mlm_head=True, purpose="fill-mask")


def test_layer_and_input_errors(minilm):
    with pytest.raises(ValueError, match="layer 6 does not exist: the model has 6 encoder layers"):
        features.FeatureExtractor(minilm, layers=["6"])
    with pytest.raises(ValueError, match="neither an encoder layer index nor 'embeddings'"):
        features.FeatureExtractor(minilm, layers=["top"])
    with pytest.raises(ValueError, match="max_seq_length 1024 exceeds the model's position table"):
        features.extract_features(minilm, ["hello"], max_seq_length=1024)


@pytest.fixture(scope="module")
def masked_lm(minilm_dir, tmp_path_factory):
    """A random BertForMaskedLM with MiniLM's real vocabulary, saved by transformers (no NSP head, no pooler)."""
    tok = tokenization.from_file(minilm_dir)
    cfg = configs.ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                              attention_probs_dropout_prob=0.0)
    hf = im.hf_model(cfg, std=0.2, position_std=0.2)
    path = str(tmp_path_factory.mktemp("mlm"))
    hf.save_pretrained(path)
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(minilm_dir, name)):
            with open(os.path.join(minilm_dir, name), "rb") as src, open(os.path.join(path, name), "wb") as dst:
                dst.write(src.read())
    return dict(hf=hf, path=path, loaded=loading.load(path, model_type="bert", need_mlm_head=True), tok=tok)


def test_fill_mask_equals_bert_for_masked_lm(masked_lm):
    hf, loaded, tok = masked_lm["hf"], masked_lm["loaded"], masked_lm["tok"]
    texts = ["The [MASK] statement ends a loop.", "Python [MASK] [MASK] a programming language [MASK]."]
    fm = fill_mask.FillMask(loaded)
    encoded = [fill_mask.encode_masked(tok, t, 64) for t in texts]
    ours = fm.log_probs([e[0] for e in encoded], [e[1] for e in encoded])
    hf_tok = transformers.BertTokenizer.from_pretrained(masked_lm["path"])
    for text, (ids, positions), lp in zip(texts, encoded, ours):
        enc = hf_tok(text, return_tensors="pt")
        assert enc["input_ids"][0].tolist() == ids
        with torch.no_grad():
            logits = hf(**enc).logits[0, positions]
        assert im.max_diff(lp, torch.log_softmax(logits, -1)) <= 1e-4
    words = fm.predict(texts, top_k=3)
    assert [w.positions for w in words[1]] == [[2, 3], [7]]
    assert len(words[0]) == 1 and len(words[0][0].per_mask[0]) == 3
    best = words[0][0].per_mask[0][0]
    lp0 = ours[0][0]
    assert best.token_ids == [int(np.argmax(lp0))] and abs(best.probability - float(np.exp(lp0.max()))) < 1e-5
    # The two-piece word: a word start then a continuation piece; its probability the product of the two.
    starts = tok.word_start_table()
    word = words[1][0].words[0]
    a, b = ours[1][0], ours[1][1]
    first = int(np.argmax(np.where(starts[:len(a)], a, -np.inf)))
    second = int(np.argmax(np.where(~starts[:len(b)], b, -np.inf)))
    assert word.token_ids == [first, second] and tok.id_to_token(second).startswith("##")
    assert abs(word.probability - float(np.exp(a[first] + b[second]))) < 1e-6
    with pytest.raises(ValueError, match=r"has no \[MASK\]"):
        fm.predict(["no blank here"])


def test_fill_mask_cli_prints_and_writes(masked_lm, tmp_path):
    out = tmp_path / "fill.jsonl"
    res = _cli("fill_mask", f"--init_checkpoint={masked_lm['path']}", "--top_k=2", f"--output_file={out}",
               "The [MASK] statement ends a loop.")
    assert res.returncode == 0, res.stderr
    rec = json.loads(out.read_text())
    expect = fill_mask.fill_mask(masked_lm["loaded"], "The [MASK] statement ends a loop.", top_k=2)[0][0]
    assert [c["token_ids"] for c in rec["masks"][0]["per_mask"][0]] == [c.token_ids for c in expect.per_mask[0]]
    assert f"[MASK] at 2: {expect.per_mask[0][0].text} " in res.stdout
    res = _cli("fill_mask", f"--init_checkpoint={masked_lm['path']}", "nothing to fill")
    assert res.returncode == 2 and "has no [MASK]" in res.stderr
