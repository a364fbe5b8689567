"""Sequence classification: GLUE processors on files in the GLUE formats, features against transformers'
tokenizer, GLUE metrics against scipy / hand-computed values, head parity with transformers'
BertForSequenceClassification, initialisation from a pretraining checkpoint, and the run_classifier CLI
learning a task built from real text (which document of the embedded corpus a sentence comes from)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from bertgpt_jax.data import glue
from bertgpt_jax.evaluation import glue as glue_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


# ---- processors ------------------------------------------------------------------------------------


def test_glue_processors_read_the_columns_the_original_reads(tmp_path):
    d = str(tmp_path)
    _write(f"{d}/train.tsv", ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t1\t2\tHe said.\tHe did say.",
                              "0\t3\t4\tA cat.\tA dog."])
    _write(f"{d}/test.tsv", ["index\t#1 ID\t#2 ID\t#1 String\t#2 String", "0\t1\t2\tOne.\tTwo."])
    mrpc = glue.get_processor("MRPC")
    assert mrpc.get_examples(d, "train") == [glue.InputExample("train-1", "He said.", "He did say.", "1"),
                                             glue.InputExample("train-2", "A cat.", "A dog.", "0")]
    assert mrpc.get_examples(d, "test") == [glue.InputExample("test-1", "One.", "Two.", None)]

    cola = tmp_path / "cola"
    cola.mkdir()
    _write(f"{cola}/train.tsv", ["gj04\t1\t\tThe sailors rode the breeze clear of the rocks.",
                                 "gj04\t0\t*\tThe more we study verbs, the crazier they get get."])
    _write(f"{cola}/test.tsv", ["id\tsentence", "0\tBill whistled past the house."])
    ex = glue.get_processor("cola").get_examples(str(cola), "train")
    assert [(e.text_a[:11], e.label) for e in ex] == [("The sailors", "1"), ("The more we", "0")]
    assert glue.get_processor("cola").get_examples(str(cola), "test")[0].text_a == "Bill whistled past the house."

    mnli = tmp_path / "mnli"
    mnli.mkdir()
    head = "\t".join(f"c{i}" for i in range(12))
    row = "\t".join(["0", "1", "2", "3", "4", "5", "6", "7", "Premise here.", "Hypothesis here.", "neutral",
                     "entailment"])
    _write(f"{mnli}/dev_matched.tsv", [head, row])
    (e,) = glue.get_processor("mnli").get_examples(str(mnli), "dev")
    assert (e.text_a, e.text_b, e.label) == ("Premise here.", "Hypothesis here.", "entailment")  # the last column

    stsb = tmp_path / "stsb"
    stsb.mkdir()
    _write(f"{stsb}/train.tsv", ["index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\t"
                                 "sentence2\tscore", "0\tmain\tf\t2012\t1\tnone\tnone\tA plane.\tAn air plane.\t5.000"])
    (e,) = glue.get_processor("STS-B").get_examples(str(stsb), "train")
    assert e.label == 5.0 and glue.get_processor("sts-b").is_regression

    xnli = tmp_path / "xnli"
    (xnli / "multinli").mkdir(parents=True)
    _write(f"{xnli}/multinli/multinli.train.de.tsv", ["premise\thypo\tlabel", "Ein Hund.\tEin Tier.\tcontradictory"])
    cols = ["language", "gold_label"] + [f"x{i}" for i in range(4)] + ["sentence1", "sentence2"]
    _write(f"{xnli}/xnli.dev.tsv", ["\t".join(cols), "de\tneutral\ta\tb\tc\td\tEins.\tZwei.",
                                    "fr\tneutral\ta\tb\tc\td\tUn.\tDeux."])
    proc = glue.XnliProcessor("de")
    assert proc.get_examples(str(xnli), "train")[0].label == "contradiction"  # renamed as the original does
    assert [e.text_a for e in proc.get_examples(str(xnli), "dev")] == ["Eins."]  # other languages skipped


def test_bad_files_are_errors_that_name_the_line(tmp_path):
    d = str(tmp_path)
    _write(f"{d}/train.tsv", ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t1\t2\tA.\tB.", "yes\t1\t2\tA.\tB."])
    with pytest.raises(ValueError, match=r"train.tsv:3: label 'yes' is not one of mrpc's labels \['0', '1'\]"):
        glue.get_processor("mrpc").get_examples(d, "train")
    _write(f"{d}/dev.tsv", ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String", "1\t1\t2\tonly four columns"])
    with pytest.raises(ValueError, match=r"dev.tsv:2: 4 tab-separated columns, but mrpc reads column 4"):
        glue.get_processor("mrpc").get_examples(d, "dev")
    _write(f"{d}/test.tsv", [])
    with pytest.raises(ValueError, match="test.tsv is empty"):
        glue.get_processor("mrpc").get_examples(d, "test")
    with pytest.raises(ValueError, match="task_name 'glu' is not one of"):
        glue.get_processor("glu")


def test_generic_task_reads_named_columns_in_tsv_csv_and_jsonl(tmp_path):
    d = str(tmp_path)
    _write(f"{d}/train.csv", ["id,review,stars", '1,"Great, really great.",pos', "2,Awful.,neg", "3,Fine.,meh"])
    _write(f"{d}/dev.jsonl", [json.dumps({"review": "Nice.", "stars": "pos"})])
    proc = glue.GenericProcessor(text_column="review", label_column="stars", data_dir=d)
    assert proc.get_labels() == ["meh", "neg", "pos"]
    assert proc.get_examples(d, "train")[0] == glue.InputExample("train-0", "Great, really great.", None, "pos")
    assert proc.get_examples(d, "dev") == [glue.InputExample("dev-0", "Nice.", None, "pos")]
    _write(f"{d}/dev.jsonl", [json.dumps({"review": "Nice.", "stars": "great"})])
    with pytest.raises(ValueError, match=r"dev.jsonl:1: label 'great' is not one of"):
        proc.get_examples(d, "dev")
    _write(f"{d}/test.tsv", ["review\tstars", "a\tb\tc"])
    with pytest.raises(ValueError, match=r"test.tsv:2: 3 columns, the header has 2"):
        proc.get_examples(d, "test")


def test_features_match_transformers_pair_truncation(minilm_dir, capsys):
    from transformers import BertTokenizerFast

    from bertgpt_jax import tokenization

    tok = tokenization.from_file(os.path.join(minilm_dir, "vocab.txt"), do_lower_case=True)
    ref = BertTokenizerFast(os.path.join(minilm_dir, "vocab.txt"), do_lower_case=True)
    examples = [glue.InputExample("a", "The quick brown fox jumps over the lazy dog again and again.",
                                  "A short one."),
                glue.InputExample("b", "Tiny.", "Another fairly long second sentence that must lose several of its many tokens right here."),
                glue.InputExample("c", "Single sentence, long enough to be cut at sixteen tokens for sure.", None),
                glue.InputExample("d", "Fits.", "Also fits.")]
    feats = glue.convert_examples_to_features(examples, ["x"], 16, tok)
    assert "3 of 4 examples truncated to max_seq_length=16" in capsys.readouterr().out
    for i, ex in enumerate(examples):
        enc = ref(ex.text_a, ex.text_b, truncation="longest_first", max_length=16, padding="max_length")
        np.testing.assert_array_equal(feats["input_ids"][i], enc["input_ids"], err_msg=ex.guid)
        np.testing.assert_array_equal(feats["segment_ids"][i], enc["token_type_ids"], err_msg=ex.guid)
        np.testing.assert_array_equal(feats["input_mask"][i], enc["attention_mask"], err_msg=ex.guid)


def test_truncate_seq_pair_pops_from_the_longer():
    a, b = list(range(7)), list(range(10, 13))
    assert glue.truncate_seq_pair(a, b, 6)
    assert (a, b) == ([0, 1, 2], [10, 11, 12])
    a, b = [1, 2], [3, 4]
    assert glue.truncate_seq_pair(a, b, 3) and (a, b) == ([1, 2], [3])  # ties: the second loses first
    assert not glue.truncate_seq_pair(a, b, 3)


# ---- metrics -----------------------------------------------------------------------------------------


def test_glue_metrics_against_hand_computed_and_scipy():
    from scipy import stats

    preds, labels = np.array([1, 1, 0, 0, 1]), np.array([1, 0, 0, 1, 1])
    # tp 2, fp 1, fn 1, tn 1
    assert glue_metrics.f1(preds, labels) == pytest.approx(4 / 6)
    assert glue_metrics.matthews(preds, labels) == pytest.approx((2 * 1 - 1 * 1) / np.sqrt(3 * 3 * 2 * 2))
    assert glue_metrics.accuracy(preds, labels) == pytest.approx(0.6)
    assert glue_metrics.matthews(np.ones(4), np.array([1, 0, 1, 0])) == 0.0
    m = glue_metrics.classification_metrics("cola", preds, labels, 2)
    assert set(m) == {"accuracy", "matthews_corrcoef"}
    assert set(glue_metrics.classification_metrics("mrpc", preds, labels, 2)) == {"accuracy", "f1"}
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, 40).astype(float)  # ties
    y = x + rng.normal(size=40)
    assert glue_metrics.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert glue_metrics.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


# ---- the model -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(minilm_dir, tmp_path_factory):
    """MiniLM's encoder with a fresh 3-way head, exported as BertForSequenceClassification."""
    from bertgpt_jax import configs, convert
    from bertgpt_jax.tasks.classification import SequenceClassification

    cfg = configs.get(os.path.join(minilm_dir, "config.json")).replace(kernels="xla")
    task = SequenceClassification(cfg, 3, 16)
    params = task.load_init_params(minilm_dir, None)
    out = str(tmp_path_factory.mktemp("hf_cls"))
    convert.to_hf_finetuned(cfg, params, out, "BertForSequenceClassification", ["a", "b", "c"])
    return task, params, out


def test_head_initialised_as_the_original(exported):
    task, params, _ = exported
    w = np.asarray(params["classifier"]["kernel"])
    assert w.shape == (384, 3) and np.all(params["classifier"]["bias"] == 0)
    assert np.abs(w).max() <= 0.04 + 1e-7  # cut at two standard deviations
    assert np.std(w) == pytest.approx(0.02 * 0.8796, rel=0.1)  # not rescaled after the cut (TF 1)
    assert "mlm" not in params["bert"] and "pooler" in params["bert"]


def test_logits_match_transformers_and_load_back(exported):
    import torch
    from transformers import BertForSequenceClassification

    from bertgpt_jax import convert

    task, params, out = exported
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, 20000, (3, 16)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 10:] = 0
    mask[2, 5:] = 0
    types = np.zeros_like(ids)
    types[:, 8:] = 1
    batch = {"input_ids": ids, "input_mask": mask, "segment_ids": types}
    import jax

    ours = np.asarray(jax.jit(task.outputs)(params, batch))
    ref = BertForSequenceClassification.from_pretrained(out).eval()
    assert ref.config.id2label == {0: "a", 1: "b", 2: "c"}
    with torch.no_grad():
        theirs = ref(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                     token_type_ids=torch.tensor(types, dtype=torch.long)).logits.numpy()
    assert np.max(np.abs(ours - theirs)) <= 1e-4, np.max(np.abs(ours - theirs))
    assert np.std(ours) > 1e-3  # not a degenerate comparison
    _, _, head = convert.from_hf_finetuned(out)
    np.testing.assert_array_equal(head["classifier"]["kernel"], params["classifier"]["kernel"])
    reloaded = task.load_init_params(out, None)  # the fine-tuned head comes back, not a fresh one
    np.testing.assert_array_equal(reloaded["classifier"]["kernel"], params["classifier"]["kernel"])


def test_init_from_a_pretraining_run_keeps_the_encoder(tmp_path):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import optax

    from bertgpt_jax import configs, models, sharding
    from bertgpt_jax.tasks.classification import SequenceClassification
    from bertgpt_jax.training import checkpointing
    from bertgpt_jax.training import state as state_lib

    cfg = configs.get("bert-tiny").replace(vocab_size=128, num_hidden_layers=1, kernels="xla")
    pre = jax.jit(lambda k: models.Bert(cfg).init(k, jnp.zeros((1, 8), jnp.int32),
                                                  masked_lm_positions=jnp.zeros((1, 2), jnp.int32))["params"])(
        jax.random.PRNGKey(3))
    pre = jax.tree.map(np.asarray, nn.unbox(pre))
    state = state_lib.TrainState(step=jnp.asarray(7), params=pre, opt_state={}, rng=jnp.zeros((2,), jnp.uint32))
    ckpt = checkpointing.Checkpointer(checkpointing.checkpoint_dir(str(tmp_path)), async_save=False)
    ckpt.save(state, force=True)
    ckpt.close()
    task = SequenceClassification(cfg, 2, 16)
    mesh = sharding.make_mesh((-1, 1, 1))
    abstract = state_lib.abstract_state(task, optax.identity(), mesh)[0].params
    params = task.load_init_params(str(tmp_path), abstract)
    for key in ("embeddings", "encoder", "pooler"):
        jax.tree.map(np.testing.assert_array_equal, jax.device_get(params["bert"][key]), pre[key])
    assert set(params) == {"bert", "classifier"} and set(params["bert"]) == {"embeddings", "encoder", "pooler"}


# ---- the CLI learns ------------------------------------------------------------------------------------


def _truncated_minilm(minilm_dir: str, out: str, layers: int = 2) -> str:
    """MiniLM's first ``layers`` layers as an HF directory: a real pretrained encoder, cheaper to fine-tune."""
    from safetensors.numpy import save_file

    from bertgpt_jax import convert

    tensors = convert.load_hf_tensors(minilm_dir)
    keep = {k: np.asarray(v) for k, v in tensors.items()
            if ".layer." not in k or int(k.split(".layer.")[1].split(".")[0]) < layers}
    os.makedirs(out, exist_ok=True)
    save_file(keep, os.path.join(out, "model.safetensors"))
    with open(os.path.join(minilm_dir, "config.json")) as f:
        config = json.load(f)
    config["num_hidden_layers"] = layers
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(config, f)
    for name in ("vocab.txt", "tokenizer_config.json"):
        with open(os.path.join(minilm_dir, name), "rb") as src, open(os.path.join(out, name), "wb") as dst:
            dst.write(src.read())
    return out


def _documents():
    path = os.path.join(ROOT, "bertgpt_jax", "tokenization", "default_corpus", "python_docs.txt.gz")
    docs, cur = [], []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                cur.append(line)
            elif cur:
                docs.append(cur)
                cur = []
    return docs


def _section_task(d: str, per_class=(40, 15, 3)) -> list[str]:
    """Sentences from the embedded corpus's three longest documents (tkinter, turtle, compound statements),
    labelled with their document; train/dev/test TSVs with a header, as a generic task."""
    docs = _documents()
    longest = sorted(range(len(docs)), key=lambda i: -len(docs[i]))[:3]
    rng = random.Random(0)
    splits = {"train": [], "dev": [], "test": []}
    for label, i in zip(("tk", "turtle", "statements"), longest):
        sents = [s for s in docs[i] if len(s.split()) >= 5]
        rng.shuffle(sents)
        a, b, c = per_class
        splits["train"] += [(s, label) for s in sents[:a]]
        splits["dev"] += [(s, label) for s in sents[a:a + b]]
        splits["test"] += [(s, label) for s in sents[a + b:a + b + c]]
    for name, rows in splits.items():
        rng.shuffle(rows)
        _write(os.path.join(d, f"{name}.tsv"), ["sentence\ttopic"] + [f"{s.replace(chr(9), ' ')}\t{y}" for s, y in rows])
    return [s for s, _ in splits["test"]]


def test_run_classifier_cli_learns_which_document_a_sentence_is_from(minilm_dir, tmp_path):
    import torch
    from transformers import BertForSequenceClassification, BertTokenizerFast

    init = _truncated_minilm(minilm_dir, str(tmp_path / "minilm3"), layers=3)
    data = str(tmp_path / "data")
    os.makedirs(data)
    test_sentences = _section_task(data)
    out, hf_out = str(tmp_path / "out"), str(tmp_path / "hf")
    env = dict(os.environ, PYTHONPATH=ROOT, BERTGPT_JAX_NO_HUGE_PAGES="1", XLA_FLAGS="")
    cmd = [sys.executable, "-m", "bertgpt_jax.run_classifier", "--task_name=generic", f"--data_dir={data}",
           "--text_column=sentence", "--label_column=topic", f"--init_checkpoint={init}", "--do_train",
           "--do_eval", "--do_predict", "--max_seq_length=32", "--train_batch_size=16", "--eval_batch_size=8",
           "--learning_rate=5e-4", "--num_train_epochs=4", f"--output_dir={out}", f"--export_hf={hf_out}",
           "--noprogress_bar", "--notensorboard", "--noplot", "--kernels=xla", "--log_every_steps=5",
           "--eval_every_steps=10", "--best_metric=eval/accuracy", "--best_mode=max"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "the output layer (classifier) is freshly initialised" in proc.stdout
    lines = open(os.path.join(out, "eval_results.txt")).read().splitlines()
    keys = [line.split(" = ")[0] for line in lines]
    assert keys == sorted(keys) and {"eval_accuracy", "eval_loss", "global_step", "loss"} <= set(keys)
    results = dict(line.split(" = ") for line in lines)
    assert int(results["global_step"]) == int(120 / 16 * 4)  # steps from epochs, as the original
    assert int(results["eval_num_examples"]) == 45  # 45 = 5 batches of 8 + 5: the last one padded, not dropped
    # Majority baseline 1/3 (chance spread ~0.07 on 45 examples); the encoder is MiniLM's first three layers
    # fine-tuned for 30 steps of 16 (measured: 0.64, eval loss 0.79 against ln 3 = 1.10 at the start).
    assert float(results["eval_accuracy"]) >= 0.55, results
    assert float(results["eval_loss"]) <= 0.95, results
    assert json.load(open(os.path.join(out, "eval_results.json")))["eval_accuracy"] == float(results["eval_accuracy"])
    # --eval_every_steps=10: the task's own metrics (GLUE's, from every dev example) during training; the
    # closing evaluation is the engine's of step 30, not a second pass, and the best step's weights are kept.
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    evals = {r["step"]: r for r in records if "eval/accuracy" in r}
    assert sorted(evals) == [10, 20, 30], sorted(evals)
    assert {"eval/loss", "eval/accuracy"} <= set(evals[30]) and "eval/f1" not in evals[30]  # 3 labels: no F1
    assert evals[30]["eval/accuracy"] == pytest.approx(float(results["eval_accuracy"]), abs=1e-12)
    assert evals[30]["eval/loss"] == pytest.approx(float(results["eval_loss"]), abs=1e-12)
    assert evals[10]["eval/accuracy"] < evals[30]["eval/accuracy"] or evals[10]["eval/loss"] > evals[30]["eval/loss"]
    (kept,) = os.listdir(os.path.join(out, "best_checkpoint"))
    assert evals[int(kept)]["eval/accuracy"] == max(r["eval/accuracy"] for r in evals.values())
    assert "eval at step 30" in proc.stdout
    probs = np.loadtxt(os.path.join(out, "test_results.tsv"), delimiter="\t")
    assert probs.shape == (9, 3) and np.allclose(probs.sum(1), 1.0, atol=1e-6)
    # The exported BertForSequenceClassification gives the same probabilities in PyTorch.
    ref = BertForSequenceClassification.from_pretrained(hf_out).eval()
    enc = BertTokenizerFast(os.path.join(init, "vocab.txt"), do_lower_case=True)(
        test_sentences, truncation=True, max_length=32, padding="max_length", return_tensors="pt")
    with torch.no_grad():
        theirs = torch.softmax(ref(**enc).logits, -1).numpy()
    assert np.max(np.abs(theirs - probs)) <= 1e-4
    assert ref.config.id2label == {0: "statements", 1: "tk", 2: "turtle"}


def test_run_classifier_errors(minilm_dir, tmp_path):
    from bertgpt_jax import run_classifier
    from bertgpt_jax.training import TrainConfig

    d = str(tmp_path)
    _section_task(d, per_class=(2, 1, 1))
    train = TrainConfig(output_dir=str(tmp_path / "o"), model=os.path.join(minilm_dir, "config.json"),
                        init_checkpoint=minilm_dir)
    clf = run_classifier.ClassifierConfig(task_name="generic", data_dir=d, text_column="sentence",
                                          label_column="topic")
    with pytest.raises(ValueError, match="at least one of --do_train, --do_eval or --do_predict"):
        run_classifier.run(train, clf)
    with pytest.raises(ValueError, match="--eval_every_steps=5 evaluates during training and needs --do_eval"):
        run_classifier.run(train.replace(eval_every_steps=5), dataclasses.replace(clf, do_train=True))
    config = json.load(open(os.path.join(minilm_dir, "config.json")))
    _write(str(tmp_path / "small_vocab.json"), [json.dumps({**config, "vocab_size": 30000})])
    with pytest.raises(ValueError, match=r"the vocabulary \(30522 tokens\) differs from the model's vocab_size 30000"):
        run_classifier.run(train.replace(model=str(tmp_path / "small_vocab.json"), init_checkpoint=None),
                           dataclasses.replace(clf, do_eval=True, vocab_file=os.path.join(minilm_dir, "vocab.txt")))


def test_training_stream_resumes_exactly_and_eval_covers_every_example():
    from bertgpt_jax.tasks.finetuning import ArrayBatches, num_train_steps, padded_batches

    feats = {"x": np.arange(10)}
    it = ArrayBatches(feats, 4, seed=3, process_index=0, process_count=1)
    first = [next(it)["x"] for _ in range(3)]  # 12 positions: crosses into the second epoch
    assert sorted(np.concatenate(first)[:10].tolist()) == list(range(10))  # each epoch is a permutation
    state = it.get_state()
    after = [next(it)["x"] for _ in range(4)]
    resumed = ArrayBatches(feats, 4, seed=0, process_index=0, process_count=1)
    resumed.set_state(json.loads(json.dumps(state)))
    for a, b in zip(after, [next(resumed)["x"] for _ in range(4)]):
        np.testing.assert_array_equal(a, b)
    halves = [next(ArrayBatches(feats, 4, seed=3, process_index=p, process_count=2))["x"] for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves), first[0])  # processes split each global batch
    batches = list(padded_batches({"x": np.arange(10)}, 4, process_index=0, process_count=1))
    assert len(batches) == 3 and batches[-1]["is_real_example"].tolist() == [1, 1, 0, 0]
    real = np.concatenate([b["x"][b["is_real_example"] == 1] for b in batches])
    assert real.tolist() == list(range(10))
    assert num_train_steps(3668, 32, 3.0) == 343  # MRPC's train set, as the original counts
    # The engine's sample of at most max_examples: fixed and spread over the whole split, never its head.
    from bertgpt_jax import configs
    from bertgpt_jax.tasks.classification import SequenceClassification

    task = SequenceClassification(configs.get("bert-tiny"), 2, 4, eval_features={"label_ids": np.arange(10)})
    sample = [b["label_ids"][b["is_real_example"] == 1] for b in task.eval_batches(4, 0, max_examples=5)]
    assert np.concatenate(sample).tolist() == [0, 2, 4, 7, 9]
    assert sum(len(b["label_ids"]) for b in task.eval_batches(4, 0)) == 12  # all 10, the last batch padded


def test_compile_only_of_squad_and_ner_compiles_their_own_step(tmp_path, monkeypatch):
    """run_squad and run_ner hand aot their span / tagging task at the run's settings, reading no examples
    (run_ner reads train.txt's tag set only); the compile itself is the classifier test's."""
    from bertgpt_jax import run_ner, run_squad
    from bertgpt_jax.tasks.spans import SpanExtraction
    from bertgpt_jax.tasks.tagging import TokenClassification
    from bertgpt_jax.training import TrainConfig, aot

    seen = []
    monkeypatch.setattr(aot, "compile_only", lambda cfg, task: seen.append((cfg, task)) or {"stopped_by": "x"})
    train = TrainConfig(output_dir=str(tmp_path / "out"), model="bert-tiny", train_batch_size=48,
                        grad_accum_steps=3, dtype="bfloat16", compile_only=True, topology="v4-8", num_train_steps=77)
    run_squad.run(train, run_squad.SquadConfig(max_seq_length=256, train_file="/nonexistent.json"))
    _write(str(tmp_path / "train.txt"),
           ["EU B-ORG", "rejects O", "German B-MISC", "", "Peter B-PER", "Blackburn I-PER"])
    run_ner.run(train, run_ner.TaggingConfig(data_dir=str(tmp_path), max_seq_length=64))
    (sq_cfg, sq_task), (ner_cfg, ner_task) = seen
    assert isinstance(sq_task, SpanExtraction) and sq_task.seq_len == 256 and sq_task.train_features is None
    assert isinstance(ner_task, TokenClassification) and ner_task.seq_len == 64
    assert ner_task.num_labels == 5  # B-MISC, B-ORG, B-PER, I-PER, O
    for cfg, task in seen:
        assert (cfg.train_batch_size, cfg.grad_accum_steps, cfg.num_train_steps, cfg.num_warmup_steps) == (48, 3, 77, 7)
        assert cfg.do_train and task.model_cfg.kernels == "xla" and task.model_cfg.dtype == "bfloat16"
        assert task.model_cfg.vocab_size == 30522  # the preset's own, with no vocabulary given
    assert not (tmp_path / "out").exists()


def test_engine_reports_a_tasks_own_evaluation_and_checks_best_metric():
    from bertgpt_jax import configs
    from bertgpt_jax.tasks.classification import SequenceClassification
    from bertgpt_jax.tasks.finetuning import Evaluation
    from bertgpt_jax.training import TrainConfig, loop

    task = SequenceClassification(configs.get("bert-tiny"), 2, 16)  # no features: only its evaluation is asked
    task.evaluator = Evaluation(lambda params: ({"f1": np.float64(0.5), "accuracy": 0.75, "n": "text"}, None))
    cfg = TrainConfig(output_dir="/tmp/unused", model="bert-tiny", best_metric="eval/f1")
    assert loop.evaluate(None, {}, cfg, task, None) == {"eval/f1": 0.5, "eval/accuracy": 0.75}
    with pytest.raises(ValueError, match=r"--best_metric eval/f2 is not one of this task's eval metrics "
                                         r"\(eval/accuracy, eval/f1\)"):
        loop.evaluate(None, {}, cfg.replace(best_metric="eval/f2"), task, None)


def test_prediction_compiles_once_however_often_it_evaluates():
    """Evaluation every N steps predicts dev again and again: the jitted prediction is kept per mesh."""
    import jax

    from bertgpt_jax import configs, sharding
    from bertgpt_jax.tasks.classification import SequenceClassification

    cfg = configs.get("bert-tiny").replace(vocab_size=64, max_position_embeddings=16, kernels="xla")
    task = SequenceClassification(cfg, 2, 8)
    mesh = sharding.make_mesh((-1, 1, 1))
    params = task.fresh_params()
    rng = np.random.default_rng(0)
    feats = {**task.example_batch(12), "input_ids": rng.integers(0, 64, (12, 8)).astype(np.int32)}
    first = task.predict(params, feats, 8, mesh)
    compiles = []

    def listener(name, seconds, **kwargs):
        if "backend_compile" in name:
            compiles.append(name)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        again = [task.predict(params, feats, 8, mesh) for _ in range(2)]
        assert compiles == []
        task.predict(params, feats, 16, mesh)  # another batch shape: compiled once (the listener hears it)
        assert len(compiles) == 1
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    for logits in again:
        np.testing.assert_array_equal(logits, first)


def test_closing_evaluation_reuses_the_engines_of_the_same_parameters():
    from bertgpt_jax.tasks.finetuning import Evaluation

    calls = []

    def fn(params):
        calls.append(params)
        return {"accuracy": 0.5 + len(calls) / 8, "loss": np.float32(0.25), "label": "not a figure"}, params

    evaluation = Evaluation(fn)
    assert evaluation("p1") == {"accuracy": 0.625, "loss": 0.25}  # what the engine records
    engine = {"stopped_by": "end", "eval/accuracy": 0.625, "eval/loss": 0.25, "train/loss": 1.0}
    assert evaluation.final("p1", engine)[1] == "p1" and calls == ["p1"]  # reused: no second pass
    # Another evaluation than the engine's last, a run stopped by SIGTERM, or no engine run: computed anew.
    assert evaluation.final("p2", {**engine, "eval/accuracy": 0.75})[1] == "p2"
    assert evaluation.final("p3", {**engine, "stopped_by": "sigterm"})[1] == "p3"
    assert evaluation.final("p4", {})[1] == "p4" and calls == ["p1", "p2", "p3", "p4"]


def test_sts_b_regression_eval_and_predict(minilm_dir, tmp_path):
    """STS-B from its GLUE TSVs: one output, squared error; eval metrics agree with test_results.tsv's scores."""
    from scipy import stats

    from bertgpt_jax import run_classifier
    from bertgpt_jax.training import TrainConfig

    init = _truncated_minilm(minilm_dir, str(tmp_path / "minilm1"), layers=1)
    d = tmp_path / "stsb"
    d.mkdir()
    pairs = [("A man is playing a guitar.", "A man plays the guitar.", 4.8),
             ("A cat sleeps.", "The stock market fell.", 0.2), ("Kids are running.", "Children run outside.", 3.9),
             ("A woman slices onions.", "Someone is cutting an onion.", 4.1), ("It rains.", "The sun shines.", 1.0)]
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
    rows = [f"{i}\tmain\tf\t2012\t{i}\tnone\tnone\t{a}\t{b}" for i, (a, b, _) in enumerate(pairs)]
    _write(str(d / "dev.tsv"), [head + "\tscore"] + [f"{r}\t{s}" for r, (_, _, s) in zip(rows, pairs)])
    _write(str(d / "test.tsv"), [head] + rows)
    out = str(tmp_path / "out")
    metrics = run_classifier.run(
        TrainConfig(output_dir=out, model=os.path.join(init, "config.json"), init_checkpoint=init, eval_batch_size=8,
                    kernels="xla"),
        run_classifier.ClassifierConfig(task_name="STS-B", data_dir=str(d), do_eval=True, do_predict=True,
                                        max_seq_length=24, predict_batch_size=8))
    scores = np.loadtxt(os.path.join(out, "test_results.tsv")).reshape(-1)
    labels = np.array([s for _, _, s in pairs])
    assert scores.shape == (5,) and metrics["global_step"] == 0 and "eval_accuracy" not in metrics
    assert metrics["eval_loss"] == pytest.approx(np.mean((scores - labels) ** 2), rel=1e-5)
    assert metrics["eval_pearson"] == pytest.approx(stats.pearsonr(scores, labels)[0], abs=1e-5)
    assert metrics["eval_spearman"] == pytest.approx(stats.spearmanr(scores, labels)[0], abs=1e-5)


# ---- --compile_only: the fine-tuning step compiled for a TPU slice ---------------------------------------


def test_compile_only_compiles_the_classifier_step_for_a_tpu_slice(tmp_path, capsys):
    """The step compiled is the classifier's (encoder without pretraining heads + a 2-way output layer), on
    the run's mesh and batch; nothing is trained or written. An oversized batch exits 2 naming what to change."""
    from bertgpt_jax import run_classifier
    from bertgpt_jax.training import TrainConfig

    out = tmp_path / "out"
    train = TrainConfig(output_dir=str(out), model="bert-tiny", train_batch_size=32, dtype="bfloat16",
                        compile_only=True, topology="v5litepod-4")
    result = run_classifier.run(train, run_classifier.ClassifierConfig(task_name="MRPC", max_seq_length=128))
    report = result["compile_report"]
    H, L, I, V, P, C = 128, 2, 512, 30522, 512, 2  # bert-tiny; MRPC's two labels
    encoder = V * H + P * H + 2 * H + 2 * H + L * (4 * (H * H + H) + 2 * H + H * I + I + I * H + H + 2 * H)
    n_params = encoder + H * H + H + H * C + C  # + pooler + classifier (no MLM/NSP heads)
    assert report["params"] == n_params == 4_386_178
    # Pure data parallelism over 4 chips: every chip holds all fp32 parameters and AdamW's two moments.
    assert (report["chips"], report["mesh"]) == (4, {"data": 4, "fsdp": 1, "tensor": 1})
    assert report["param_bytes"] == 4 * n_params
    assert abs(report["opt_state_bytes"] - 2 * 4 * n_params) <= 64
    assert report["tokens_per_step"] == 32 * 128 and report["fits"]
    assert report["peak_bytes"] >= report["argument_bytes"] >= report["param_bytes"] + report["opt_state_bytes"]
    assert result["stopped_by"] == "compile_only"
    assert "compiled train step of bert-tiny for v5litepod-4" in capsys.readouterr().out
    assert not out.exists()  # no checkpoint, no metrics

    env = dict(os.environ, PYTHONPATH=ROOT, BERTGPT_JAX_NO_HUGE_PAGES="1", XLA_FLAGS="", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "bertgpt_jax.run_classifier", "--task_name=MRPC",
                           "--model=bert-tiny", "--compile_only", "--topology=v5litepod-4", f"--output_dir={out}",
                           "--train_batch_size=16384", "--max_seq_length=512"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "the train step of bert-tiny does not fit v5litepod-4" in proc.stderr
    assert "--grad_accum_steps=2 (microbatch 2048 per chip" in proc.stderr
    assert not out.exists()
