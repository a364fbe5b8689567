"""Attention maps and perplexity against transformers (output_attentions; the loss on the same windows)."""

import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers

from bertgpt_jax import configs, sharding, tokenization
from bertgpt_jax.inference import attention, head_view, loading, perplexity
from tests import inference_models as im

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = " ".join(im.SENTENCES[:6]) * 3


def _cli(module, *args):
    return subprocess.run([sys.executable, "-m", f"bertgpt_jax.{module}", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    tok = im.bpe_tokenizer()
    cfg = im.gpt2_config(tok.vocab_size, max_position_embeddings=64)
    hf = im.hf_model(cfg, std=0.1, position_std=0.1)
    params = im.params_of(cfg, hf)
    run = im.write_run(str(tmp_path_factory.mktemp("gpt") / "run"), cfg, params, tok)
    single = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    return dict(tok=tok, cfg=cfg, hf=hf, run=run, loaded=loading.load(run, mesh=single))


def test_gpt2_attention_equals_transformers_and_is_causal(gpt):
    maps = attention.attention_maps(gpt["loaded"], "Generators yield values one at a time.")
    ids = torch.tensor([maps.token_ids])
    with torch.no_grad():
        ref = gpt["hf"](ids, output_attentions=True).attentions
    ref = np.stack([a[0].numpy() for a in ref])
    assert maps.weights.shape == ref.shape == (2, 4, len(maps.token_ids), len(maps.token_ids))
    assert im.max_diff(maps.weights, ref) <= 1e-4
    T = len(maps.token_ids)
    assert np.all(maps.weights[:, :, np.triu_indices(T, 1)[0], np.triu_indices(T, 1)[1]] == 0.0)
    np.testing.assert_allclose(maps.weights.sum(-1), 1.0, atol=1e-5)
    assert "␣one" in maps.tokens and "Generat" in maps.tokens  # byte-level pieces shown readably


def test_bert_attention_equals_transformers_on_minilm(minilm_dir):
    loaded = loading.load(minilm_dir, model_type="bert")
    maps = attention.attention_maps(loaded, "The cat sat on the mat.", "It was happy.")
    hf = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    enc = transformers.BertTokenizer.from_pretrained(minilm_dir)("The cat sat on the mat.", "It was happy.",
                                                                 return_tensors="pt")
    assert maps.token_ids == enc["input_ids"][0].tolist() and maps.tokens[0] == "[CLS]"
    with torch.no_grad():
        ref = np.stack([a[0].numpy() for a in hf(**enc, output_attentions=True).attentions])
    assert im.max_diff(maps.weights, ref) <= 1e-4
    with pytest.raises(ValueError, match="head 12 does not exist: the model has 12 heads"):
        maps.select([0], [12])


def test_attention_cli_draws_panels_and_writes_weights(gpt, tmp_path):
    import matplotlib.image

    png = tmp_path / "maps" / "attention.png"
    text = "The quick brown fox"
    page = tmp_path / "maps" / "heads.html"
    res = _cli("attention", f"--init_checkpoint={gpt['run']}", f"--text={text}", "--layers=0,-1", "--heads=1",
               f"--output={png}", f"--html={page}")
    assert res.returncode == 0, res.stderr
    saved = np.load(tmp_path / "maps" / "attention.npz")
    expect = attention.attention_maps(gpt["loaded"], text)
    np.testing.assert_allclose(saved["weights"], expect.weights, atol=1e-6)
    assert list(saved["tokens"]) == expect.tokens
    # The head view: one offline page whose embedded weights are exactly the .npz's, every layer and head.
    html = page.read_text(encoding="utf-8")
    assert '<select id="layer">' in html and '<select id="head">' in html
    assert not re.search(r"<script[^>]*\bsrc=|<link\b|@import|url\(|<iframe|<img", html)
    assert re.findall(r"https?://[^\s\"']*", html) == ["http://www.w3.org/2000/svg"]  # the SVG namespace name
    data = head_view.read_page_data(html)
    weights = np.asarray(data["weights"], np.float32)
    assert weights.shape == saved["weights"].shape == (2, 4, len(expect.tokens), len(expect.tokens))
    assert np.array_equal(weights, saved["weights"])
    assert data["tokens"] == list(saved["tokens"]) and data["token_ids"] == saved["token_ids"].tolist()
    h, w = matplotlib.image.imread(str(png)).shape[:2]
    assert h > 1.8 * w  # two layers stacked, one head: a tall figure
    with pytest.raises(ValueError, match="text_b is for BERT's sentence pairs"):
        attention.attention_maps(gpt["loaded"], "hi", "there")


def test_head_view_keeps_odd_tokens_inside_its_data_and_rejects_bad_maps():
    w = np.random.RandomState(0).dirichlet(np.ones(3), size=(1, 2, 3)).astype(np.float32)
    tokens = ["</script><script src='https://x'>", "&amp;", "\u2423one"]
    maps = attention.AttentionMaps(weights=w, tokens=tokens, token_ids=[5, 6, 7])
    html = head_view.html_page(maps, title="<b>")
    assert html.count("</script>") == 2 and "<b>" not in html  # only the page's own two script elements close
    data = head_view.read_page_data(html)
    assert data["tokens"] == tokens and data["token_ids"] == [5, 6, 7]
    assert np.array_equal(np.asarray(data["weights"], np.float32), w)
    with pytest.raises(ValueError, match=r"shape \(1, 2, 3, 3\) do not match 2 tokens"):
        head_view.html_page(attention.AttentionMaps(weights=w, tokens=tokens[:2], token_ids=[5, 6]))
    with pytest.raises(ValueError, match="NaN or infinity"):
        head_view.html_page(attention.AttentionMaps(weights=w * np.nan, tokens=tokens, token_ids=[5, 6, 7]))


def test_windows_score_every_token_once():
    for n, length, stride in ((100, 32, 16), (31, 32, 8), (65, 16, 5), (100, 32, 32)):
        wins = perplexity.windows(n, length, stride)
        scored = [p for begin, end, first in wins for p in range(first, end)]
        if stride < length:
            assert scored == list(range(1, n)), (n, length, stride)
        else:  # disjoint windows: a window's first token has no context to be predicted from
            assert scored == [p for p in range(1, n) if p % length], (n, length, stride)
        for begin, end, first in wins:
            assert end - begin <= length and (first - begin >= length - stride or begin == 0)


def test_gpt2_perplexity_equals_transformers_loss_on_the_same_windows(gpt):
    ids = gpt["tok"].encode(TEXT)
    assert len(ids) > 150
    got = perplexity.gpt2_perplexity(gpt["loaded"], ids, max_length=64, stride=24, batch_size=4)
    total, count = 0.0, 0
    for begin, end, first in perplexity.windows(len(ids), 64, 24):
        x = torch.tensor([ids[begin:end]])
        labels = x.clone()
        labels[0, :first - begin] = -100  # transformers shifts: label j is predicted from tokens < j
        n = int((labels[0, 1:] != -100).sum())
        with torch.no_grad():
            total += float(gpt["hf"](x, labels=labels).loss) * n
        count += n
    assert got.tokens == count == len(ids) - 1
    assert abs(got.nll_sum - total) <= 1e-4 * total
    assert abs(got.perplexity - np.exp(total / count)) <= 1e-4 * got.perplexity
    assert "stride 24" in got.method


def test_perplexity_cli(gpt, tmp_path):
    text_file = tmp_path / "text.txt"
    text_file.write_text(TEXT)
    out = tmp_path / "ppl.json"
    res = _cli("perplexity", f"--init_checkpoint={gpt['run']}", f"--input_file={text_file}", "--stride=32",
               f"--output_file={out}")
    assert res.returncode == 0, res.stderr
    got = json.loads(out.read_text())
    expect = perplexity.gpt2_perplexity(gpt["loaded"], gpt["tok"].encode(TEXT), 64, 32)
    assert abs(got["perplexity"] - expect.perplexity) <= 1e-4 * expect.perplexity
    assert "sliding windows of 64 tokens, stride 32" in res.stdout
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    res = _cli("perplexity", f"--init_checkpoint={gpt['run']}", f"--input_file={empty}")
    assert res.returncode == 2 and "is empty" in res.stderr


def test_bert_pseudo_perplexity_equals_transformers(minilm_dir):
    tok = tokenization.from_file(minilm_dir)
    cfg = configs.ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                              attention_probs_dropout_prob=0.0)
    hf = transformers.BertForPreTraining(transformers.BertConfig(**cfg.to_hf_dict()))
    torch.manual_seed(1)
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(0.0, 0.2)
    hf.eval()
    params = im.params_of(cfg, hf)
    loaded = loading.from_params(cfg, params, tok, mesh=sharding.make_mesh((1, 1, 1), jax.devices()[:1]))
    texts = ["The cat sat on the mat.", "A generator yields values."]
    got = perplexity.bert_pseudo_perplexity(loaded, texts, batch_size=8)
    total, count = 0.0, 0
    for text in texts:
        ids = [tok.cls_token_id] + tok.encode(text) + [tok.sep_token_id]
        for p in range(1, len(ids) - 1):
            masked = torch.tensor([ids[:p] + [tok.mask_token_id] + ids[p + 1:]])
            with torch.no_grad():
                logp = torch.log_softmax(hf(masked).prediction_logits[0, p], -1)
            total -= float(logp[ids[p]])
            count += 1
    assert got.tokens == count
    assert abs(got.nll_sum - total) <= 1e-4 * total
