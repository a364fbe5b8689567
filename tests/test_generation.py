"""GPT-2 generation with the KV cache against transformers' ``generate``, sampling sets, errors and the CLI."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
import transformers

from bertgpt_jax import configs, convert, sharding
from bertgpt_jax.inference import generation, loading
from bertgpt_jax.inference.generation import Generator, Sampling
from tests import inference_models as im

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEW = 64


@pytest.fixture(scope="module")
def setup():
    tok = im.bpe_tokenizer()
    cfg = im.gpt2_config(tok.vocab_size)
    hf = im.hf_model(cfg)
    params = im.params_of(cfg, hf)
    single = loading.from_params(cfg, params, tok, mesh=sharding.make_mesh((1, 1, 1), jax.devices()[:1]))
    rs = np.random.RandomState(0)
    # Lengths in one bucket (9..16), so alone and batched each compile once for every test here.
    prompts = [list(rs.randint(0, tok.vocab_size, n)) for n in (9, 12, 16)]
    return dict(tok=tok, cfg=cfg, hf=hf, params=params, single=single, gen=Generator(single, eos_token_id=-1),
                prompts=prompts, ref=_hf_greedy(hf, prompts, NEW))


def _hf_greedy(hf, prompts, new, eos=None, left_pad=False):
    """transformers' greedy generate, each prompt alone (or all left-padded in one batch)."""
    pad = 0
    kw = dict(do_sample=False, max_new_tokens=new, pad_token_id=pad, eos_token_id=eos)
    if not left_pad:
        outs = []
        for p in prompts:
            ids = torch.tensor([p])
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), **kw)[0, len(p):].tolist()
            outs.append(out)
    else:
        T = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (T - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
        outs = hf.generate(ids, attention_mask=mask, **kw)[:, T:].tolist()
    if eos is not None:
        outs = [o[:o.index(eos) + 1] if eos in o else o for o in outs]
    return outs


def test_greedy_equals_transformers_alone_and_in_padded_batches(setup):
    gen, prompts, hf = setup["gen"], setup["prompts"], setup["hf"]
    ref_alone = setup["ref"]
    assert min(len(set(r)) for r in ref_alone) > 10  # the reference output varies: a meaningful comparison
    alone = [gen.generate([p], NEW)[0].token_ids for p in prompts]
    assert alone == ref_alone
    batched = gen.generate(prompts, NEW)
    assert [g.token_ids for g in batched] == ref_alone
    assert all(g.finish_reason == "length" and len(g.token_ids) == NEW for g in batched)
    assert [g.token_ids for g in batched] == _hf_greedy(hf, prompts, NEW, left_pad=True)
    # A right-padded batch (as a tokenizer pads) gives the same prompts back.
    T = max(len(p) for p in prompts)
    ids = np.array([p + [0] * (T - len(p)) for p in prompts])
    mask = np.array([[1] * len(p) + [0] * (T - len(p)) for p in prompts])
    right = generation.prompts_from_padded(ids, mask)
    assert [g.token_ids for g in gen.generate(right, NEW)] == ref_alone


def test_greedy_equals_transformers_at_the_gpt2_124m_shape():
    """The real GPT-2 small shape (12 layers, 768 wide, 12 heads, vocabulary 50257, 1024 positions) with
    transformers' own random initialisation, converted by ``convert``: 64 greedy tokens equal
    ``GPT2LMHeadModel.generate(do_sample=False)``'s for one prompt and for a left-padded batch of two
    prompts of different lengths. A mesh of two devices pads the single prompt to two rows, so both
    requests share one compiled function."""
    cfg = configs.get("gpt2").replace(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.vocab_size,
            cfg.max_position_embeddings) == (12, 768, 12, 50257, 1024)
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg.to_hf_dict())).eval()
    params = convert.params_from_hf_tensors(cfg, {k: v.detach().numpy() for k, v in hf.state_dict().items()})
    gen = Generator(loading.from_params(cfg, params, mesh=sharding.make_mesh((2, 1, 1), jax.devices()[:2])))
    rs = np.random.RandomState(0)
    long, short = (list(map(int, rs.randint(0, 50256, n))) for n in (29, 20))
    T = len(long)
    eos = cfg.eos_token_id  # 50256 on both sides; a row that emits it is done
    kw = dict(do_sample=False, max_new_tokens=NEW, pad_token_id=eos, eos_token_id=eos, output_scores=True,
              return_dict_in_generate=True)
    # One torch thread: beside the suite's other worker on two cores, two threads contend (measured 7x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            ids = torch.tensor([long])
            alone = hf.generate(ids, attention_mask=torch.ones_like(ids), **kw)
            ids = torch.tensor([[eos] * (T - len(short)) + short, long])
            mask = torch.tensor([[0] * (T - len(short)) + [1] * len(short), [1] * T])
            batch = hf.generate(ids, attention_mask=mask, **kw)
    finally:
        torch.set_num_threads(threads)
    ref_alone, ref_batch = ([r[:r.index(eos) + 1] if eos in r else r for r in out.sequences[:, T:].tolist()]
                            for out in (alone, batch))
    for scores in (alone.scores, batch.scores):  # no near-tie that float rounding could flip
        top2 = torch.stack(scores, 1).topk(2, dim=-1).values
        assert float((top2[..., 0] - top2[..., 1]).min()) > 1e-4
    assert min(len(set(r)) for r in ref_alone + ref_batch) > 8  # the continuations vary
    assert [g.token_ids for g in gen.generate([long], NEW)] == ref_alone
    assert [g.token_ids for g in gen.generate([short, long], NEW)] == ref_batch
    assert gen.traces == 1


def test_one_compile_per_shape_bucket(setup):
    gen, prompts = setup["gen"], setup["prompts"]
    for first, second in (
            (lambda: gen.generate([prompts[0]], NEW), lambda: gen.generate([prompts[1][:10]], 50)),
            (lambda: gen.generate(prompts, 10, Sampling(do_sample=True, top_k=5, temperature=0.7)),
             lambda: gen.generate(prompts, 12, Sampling(do_sample=True, top_k=5, temperature=1.3)))):
        first()
        traces = gen.traces
        second()  # same batch and buckets; temperature and the token count are arguments: no new trace
        assert gen.traces == traces


def test_each_sequence_stops_at_end_of_text(setup):
    prompts, hf = setup["prompts"], setup["hf"]
    ref = setup["ref"]
    eos = ref[1][20]  # a token that the second prompt emits in the middle of its continuation
    gen = Generator(setup["single"], eos_token_id=eos)
    out = gen.generate(prompts, NEW)
    expect = _hf_greedy(hf, prompts, NEW, eos=eos)
    assert [g.token_ids for g in out] == expect
    assert out[1].finish_reason == "eos" and out[1].token_ids[-1] == eos and len(out[1].token_ids) <= 21
    assert all(g.finish_reason == ("eos" if eos in g.token_ids else "length") for g in out)


def _hf_logits(hf, prompt, tokens):
    with torch.no_grad():
        ids = torch.tensor([prompt + tokens])
        return hf(ids).logits[0, len(prompt) - 1:-1].numpy()  # the logits each new token was drawn from


def test_sampling_stays_in_the_top_k_and_the_nucleus(setup):
    gen, hf, prompt = setup["gen"], setup["hf"], setup["prompts"][1]
    rows, n_new = 3, 40
    for sampling in (Sampling(do_sample=True, top_k=5), Sampling(do_sample=True, top_k=None, top_p=0.6),
                     Sampling(do_sample=True, top_k=20, top_p=0.8, temperature=1.5)):
        out = gen.generate([prompt] * rows, n_new, sampling, seed=3, sample_ids=range(rows))
        assert len({tuple(g.token_ids) for g in out}) > 1  # the samples differ from each other
        for g in out:
            logits = _hf_logits(hf, prompt, g.token_ids) / sampling.temperature
            for step, token in enumerate(g.token_ids):
                order = np.argsort(-logits[step])
                rank = int(np.where(order == token)[0][0])
                if sampling.top_k is not None:
                    assert rank < sampling.top_k, (sampling, step, rank)
                kept = logits[step][order[:sampling.top_k or len(order)]]
                probs = np.exp(kept - kept.max())
                probs /= probs.sum()
                mass_before = np.cumsum(probs) - probs
                assert mass_before[rank] < sampling.top_p + 1e-5, (sampling, step, rank)
    # top_k=1 and temperature 0 are argmax.
    greedy = gen.generate([prompt], n_new)[0].token_ids
    assert gen.generate([prompt], n_new, Sampling(do_sample=True, top_k=1), seed=5)[0].token_ids == greedy
    assert gen.generate([prompt], n_new, Sampling(do_sample=True, temperature=0.0), seed=5)[0].token_ids == greedy


def test_filter_draws_follow_the_renormalised_distribution():
    rs = np.random.RandomState(0)
    logits = rs.standard_normal(50).astype(np.float32) * 2
    n = 4000
    mode = Sampling(do_sample=True, top_k=10, top_p=0.7)
    keys = jax.random.split(jax.random.key(0), n)
    draws = np.asarray(generation.choose(np.tile(logits, (n, 1)), mode, np.float32(1.0), np.float32(0.7), keys))
    order = np.argsort(-logits)[:10]
    p = np.exp(logits[order] - logits[order].max())
    p /= p.sum()
    keep = (np.cumsum(p) - p) < 0.7
    expected = np.where(keep, p, 0) / p[keep].sum()
    freq = np.array([(draws == t).mean() for t in order])
    assert set(np.unique(draws)) <= set(order[keep])
    assert np.max(np.abs(freq - expected)) < 0.03, (freq, expected)


def test_sampling_is_seeded_and_independent_of_the_batch(setup):
    gen, prompts = setup["gen"], setup["prompts"]
    mode = Sampling(do_sample=True, top_k=5)
    a = gen.generate(prompts, 40, mode, seed=7)
    b = gen.generate(prompts, 40, mode, seed=7)
    c = gen.generate(prompts, 40, mode, seed=8)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    assert [g.token_ids for g in a] != [g.token_ids for g in c]
    assert gen.generate([prompts[2]], 40, mode, seed=7)[0].token_ids == a[2].token_ids


def test_generation_on_a_mesh_equals_one_device(setup):
    mesh = sharding.make_mesh((2, 2, 2))  # batch over data x fsdp, parameters over fsdp and tensor
    loaded = loading.from_params(setup["cfg"], setup["params"], setup["tok"], mesh=mesh)
    assert len(loaded.params["wte"]["embedding"].sharding.device_set) == 8
    out = Generator(loaded, eos_token_id=-1).generate(setup["prompts"] + setup["prompts"][:1], NEW)
    assert [g.token_ids for g in out] == setup["ref"] + setup["ref"][:1]


def test_bad_requests_fail_clearly(setup):
    gen = setup["gen"]
    with pytest.raises(ValueError, match=r"prompt 0 has 100 tokens; with max_new_tokens 64 that is 164 positions, "
                                         r"beyond the model's context of 128"):
        gen.generate([[1] * 100], 64)
    for sampling, message in ((Sampling(top_p=0.0), r"top_p must be in \(0, 1\]"),
                              (Sampling(top_p=1.5), r"top_p must be in \(0, 1\]"),
                              (Sampling(top_k=0), "top_k must be an integer >= 1")):
        with pytest.raises(ValueError, match=message):
            gen.generate([[1, 2]], 4, sampling)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        gen.generate([[]], 4)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "bertgpt_jax.generate", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_cli_generates_from_a_run_directory(setup, tmp_path):
    run = im.write_run(str(tmp_path / "run"), setup["cfg"], setup["params"], setup["tok"])
    assert sorted(os.listdir(run)) == ["checkpoints", "model_config.json", "store_tokenizer", "tokenizer"]
    tok = setup["tok"]
    text = "Python is a programming"
    prompts_file = tmp_path / "prompts.txt"
    prompts_file.write_text(f"{text}\n\nThe quick brown fox\n")
    out_file = tmp_path / "samples.jsonl"
    res = _cli(f"--init_checkpoint={run}", f"--prompt_file={prompts_file}", "--nodo_sample", "--max_new_tokens=12",
               f"--output_file={out_file}", "--num_samples=2")
    assert res.returncode == 0, res.stderr
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [(r["prompt"], r["sample"]) for r in records] == [(text, 0), (text, 1), ("The quick brown fox", 0),
                                                            ("The quick brown fox", 1)]
    eos = tok.eos_token_id
    expect = _hf_greedy(setup["hf"], [tok.encode(text)], 12, eos=eos)[0]
    assert records[0]["token_ids"] == expect == records[1]["token_ids"]
    assert records[0]["text"] == tok.decode([t for t in expect if t != eos])
    assert text + records[0]["text"] in res.stdout

    # Bad input exits with status 2 and says what is wrong.
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    res = _cli(f"--init_checkpoint={run}", f"--prompt_file={empty}")
    assert res.returncode == 2 and "holds no prompt" in res.stderr, res.stderr[-2000:]


def test_a_bert_checkpoint_is_refused(tmp_path, minilm_dir):
    with pytest.raises(ValueError, match="is a BERT model .* generation needs a GPT-2 checkpoint"):
        loading.load(minilm_dir, model_type="gpt2", purpose="generation")


def test_pretraining_runs_describe_themselves_for_the_tools(setup, tmp_path):
    from bertgpt_jax import configs, pretrain, tokenization
    from bertgpt_jax.tasks import PretrainingData
    from bertgpt_jax.training import TrainConfig

    store = tmp_path / "store"
    setup["tok"].save(str(store / "tokenizer"))
    out = tmp_path / "out"
    cfg = setup["cfg"].replace(scan_layers=True)
    pretrain.describe_run(TrainConfig(output_dir=str(out), model="gpt2"), PretrainingData(dataset=str(store)), cfg)
    described = json.loads((out / "model_config.json").read_text())
    assert configs.ModelConfig.from_dict(described).replace(scan_layers=described["scan_layers"]) == cfg
    assert tokenization.from_file(str(out / "tokenizer")).fingerprint == setup["tok"].fingerprint


def test_a_run_trained_with_scanned_layers_loads_unscanned(setup, tmp_path):
    from bertgpt_jax import convert

    cfg = setup["cfg"].replace(scan_layers=True)
    run = im.write_run(str(tmp_path / "run"), cfg, convert.stack_layers(cfg, setup["params"]), setup["tok"])
    loaded = loading.load(run, mesh=sharding.make_mesh((1, 1, 1), jax.devices()[:1]))
    assert not loaded.cfg.scan_layers and "layer_1" in loaded.params["h"]
    assert Generator(loaded, eos_token_id=-1).generate([setup["prompts"][0]], NEW)[0].token_ids == setup["ref"][0]


def test_an_hf_directory_with_the_gpt2_ranks_file_as_vocab_file(tmp_path, gpt2_tiktoken):
    import base64

    import tiktoken

    from bertgpt_jax.tokenization import bpe

    with open(gpt2_tiktoken, "rb") as f:
        ranks = {base64.b64decode(a): int(b) for a, b in (line.split() for line in f if line.strip())}
    reference = tiktoken.Encoding("gpt2", pat_str=bpe.GPT2_PATTERN, mergeable_ranks=ranks,
                                  special_tokens={"<|endoftext|>": 50256})
    cfg = im.gpt2_config(50257, hidden_size=32, num_attention_heads=2, intermediate_size=64)
    hf = im.hf_model(cfg)
    hf.save_pretrained(str(tmp_path))  # weights and config only: no tokenizer files
    mesh = sharding.make_mesh((1, 1, 1), jax.devices()[:1])
    bare = loading.load(str(tmp_path), model_type="gpt2", mesh=mesh)
    with pytest.raises(ValueError, match="holds no tokenizer; pass --vocab_file"):
        generation.generate(bare, ["Hello world"], 8)
    loaded = loading.load(str(tmp_path), vocab_file=gpt2_tiktoken, mesh=mesh)
    ids = reference.encode("Hello world, said the")
    assert loaded.tokenizer.encode("Hello world, said the") == ids
    [[gen]] = generation.generate(loaded, ["Hello world, said the"], 16)
    assert gen.token_ids == _hf_greedy(hf, [ids], 16, eos=50256)[0]


def test_batches_decode_with_weight_major_dense_kernels_and_the_same_logits(setup):
    """On CPU a batch decodes with the ``cpu_decoding`` kernels (each dense kernel read transposed, as an array
    of its own, models/kernels.py); batch 1 with XLA's own. Both give the same logits."""
    gen, params, cfg = setup["gen"], setup["single"].params, setup["cfg"]
    assert gen.batch_model.cfg.kernels == "cpu_decoding" and gen.loaded.model.cfg.kernels == "xla"
    ids = np.asarray(np.random.RandomState(1).randint(0, cfg.vocab_size, (2, 8)), np.int32)

    def logits(model):
        return jax.jit(lambda p: model.apply({"params": p}, ids).logits)

    plain, weight_major = logits(gen.loaded.model), logits(gen.batch_model)
    np.testing.assert_allclose(np.asarray(weight_major(params)), np.asarray(plain(params)), rtol=1e-5, atol=1e-5)
    # Every dense kernel (qkv, output, two MLP per layer) is transposed once, in a conditional of its own.
    hlo = weight_major.lower(params).compile().as_text()
    assert hlo.count(" conditional(") == 4 * cfg.num_hidden_layers
    assert plain.lower(params).compile().as_text().count(" conditional(") == 0
