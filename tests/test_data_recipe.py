"""The original data recipe on the pretrain CLI and in the run's record; eval over a fixed sample of the whole
validation split; a store without a pad token masks real id 0."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bertgpt_jax import data, pretrain, tasks
from bertgpt_jax.tasks.pretraining import PretrainingData
from tests import pipeline_stores
from tests.training_helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    docs = pipeline_stores.random_documents(rng, 40, (3, 8), (4, 12))
    val = pipeline_stores.random_documents(rng, 30, (3, 8), (4, 12))
    return pipeline_stores.write_wordpiece_store(str(tmp_path_factory.mktemp("store")), {"train": docs,
                                                                                          "validation": val})


def _task(store_dir, **changes):
    cfg = tiny_config("bert").replace(vocab_size=pipeline_stores.VOCAB_SIZE)
    return tasks.task_for(cfg, PretrainingData(dataset=store_dir, max_seq_length=32, max_predictions_per_seq=5,
                                               **changes))


def test_defaults_are_the_original_recipe(store):
    d = PretrainingData(dataset=store)
    assert (d.dupe_factor, d.dynamic_masking, d.do_whole_word_mask, d.masked_lm_prob, d.short_seq_prob,
            d.random_seed) == (10, False, False, 0.15, 0.1, 12345)
    ten = _task(store).dataset("train", 0)
    one = _task(store, dupe_factor=1).dataset("train", 0)
    assert not ten.dynamic_masking and ten.seed == 12345 and ten.word_start_table is None
    # Ten cuts of the documents: about ten times the instances, and the copies are cut differently.
    assert 9 * len(one) <= len(ten) <= 11 * len(one)
    first, second = ten.examples(np.arange(len(one))), ten.examples(np.arange(len(one), 2 * len(one)))
    assert not np.array_equal(first["next_sentence_labels"], second["next_sentence_labels"])
    # Static masking: the same instance in a later epoch keeps its mask.
    again = ten.examples(np.arange(len(one)) + len(ten))
    np.testing.assert_array_equal(first["input_ids"], again["input_ids"])
    wwm = _task(store, do_whole_word_mask=True, dynamic_masking=True, masked_lm_prob=0.125).dataset("train", 0)
    assert wwm.word_start_table is not None and wwm.dynamic_masking and wwm.masked_lm_prob == 0.125


def test_the_recipe_is_recorded_and_a_changed_one_is_refused(tmp_path, store):
    out = str(tmp_path / "run")
    recipe = PretrainingData(dataset=store).recipe(bert=True)
    pretrain.record_recipe(out, recipe)
    with open(os.path.join(out, pretrain.RECIPE_FILE)) as f:
        assert json.load(f) == recipe and recipe["dupe_factor"] == 10 and recipe["dynamic_masking"] is False
    pretrain.record_recipe(out, recipe)  # the same recipe resumes
    changed = PretrainingData(dataset=store, dupe_factor=2, dynamic_masking=True).recipe(bert=True)
    with pytest.raises(ValueError, match=r"dupe_factor=10 there but 2 now, dynamic_masking=False there but True"):
        pretrain.record_recipe(out, changed)


def test_help_names_the_recipe_flags_and_their_origin():
    out = subprocess.run([sys.executable, "-m", "bertgpt_jax.pretrain", "--helpfull"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for flag in ("--dupe_factor", "--[no]dynamic_masking", "--[no]do_whole_word_mask", "--masked_lm_prob",
                 "--short_seq_prob", "--random_seed"):
        assert flag in text, flag
    assert "static masking, as the original" in text and "the original's 10" in text


def test_eval_sample_is_fixed_and_spread_over_the_split():
    class Items:
        def __len__(self):
            return 1000

        def examples(self, idx):
            return {"i": np.asarray(idx)}

    import grain

    ds = grain.MapDataset.range(1000)
    small = data.eval_sample(ds, 2000, seed=1)
    assert small is ds  # the whole split when it is small
    sample = data.eval_sample(ds, 50, seed=1)
    picked = [sample[i] for i in range(len(sample))]
    assert len(picked) == 50 and picked == sorted(picked) and len(set(picked)) == 50
    assert min(picked) < 100 and max(picked) > 900  # spread, not the leading documents
    assert picked == [data.eval_sample(ds, 50, seed=1)[i] for i in range(50)]  # the same every time
    batched = data.eval_sample(ds, 50, seed=1)
    assert not hasattr(batched, "examples")
    it = data.make_eval_iterator(grain.MapDataset.range(1000).map(lambda i: {"i": np.int64(i)}), global_batch_size=8,
                                 max_examples=20, sample_seed=1, process_count=1, process_index=0)
    rows = np.concatenate([b["i"][b["is_real_example"] == 1] for b in it])
    assert len(rows) == 20 and rows.tolist() == sorted(rows.tolist())


def test_evaluate_covers_a_sample_of_the_whole_validation_split(store):
    import jax

    from bertgpt_jax import sharding
    from bertgpt_jax.training import TrainConfig, loop
    from bertgpt_jax.training import optimizers
    from bertgpt_jax.training import state as state_lib
    from bertgpt_jax.training import step as step_lib

    task = _task(store, dupe_factor=1)
    n = len(task.dataset("validation", 0))
    mesh = sharding.make_mesh((8, 1, 1))
    state = state_lib.create_state(task, optimizers.make_optimizer("adamw", 1e-3), mesh, seed=0)
    eval_step = step_lib.make_eval_step(task, mesh)
    cfg = TrainConfig(output_dir="unused", model="bert-tiny", eval_batch_size=16, max_eval_steps=2)
    few = loop.evaluate(eval_step, state.params, cfg, task, mesh)
    again = loop.evaluate(eval_step, state.params, cfg, task, mesh)
    assert n > 32 and few["eval/examples"] == 32 and few == again
    # The sample is spread over the split: its NSP labels are not those of the first 32 instances.
    positions = data.eval_sample(task.dataset("validation", 0), 32, seed=1_000_003).indices
    assert positions[-1] > n // 2
    everything = loop.evaluate(eval_step, state.params, cfg.replace(max_eval_steps=1000), task, mesh)
    assert everything["eval/examples"] == n
    assert jax.device_count() == 8


def test_a_store_without_pad_token_masks_real_id_zero(tmp_path):
    # Byte-level BPE with added [CLS]/[SEP]/[MASK]: id 0 is a real token ("!" in GPT-2's ranks).
    V = 300
    info = {"kind": "bpe", "vocab_size": V, "fingerprint": "synthetic-bpe-bert", "cls_token_id": V - 3,
            "sep_token_id": V - 2, "mask_token_id": V - 1, "pad_token_id": None, "unk_token_id": None,
            "eos_token_id": None}
    rng = np.random.default_rng(0)
    docs = [[np.where(rng.random(10) < 0.5, 0, rng.integers(1, V - 3, 10)) for _ in range(4)] for _ in range(20)]
    pipeline_stores._write(str(tmp_path), {"train": docs, "validation": docs[:4]}, info, 1)
    ds = data.bert_dataset(str(tmp_path), max_seq_length=64, max_predictions_per_seq=10, dupe_factor=1)
    b = ds.examples(np.arange(len(ds)))
    predicted = b["masked_lm_ids"][b["masked_lm_weights"] > 0]
    assert (predicted == 0).mean() > 0.3  # about half the tokens are 0, and they are masked like the others
    assert np.all(b["input_ids"][b["input_mask"] == 0] == 0)  # padding is still id 0, marked by input_mask


def test_create_pretraining_data_cuts_the_instances_with_the_original_recipe(tmp_path):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    rng = np.random.default_rng(0)
    docs = ["\n".join(" ".join(rng.choice(words, 9)) + "." for _ in range(6)) for _ in range(30)]
    (tmp_path / "corpus.txt").write_text("\n\n".join(docs) + "\n")
    out = tmp_path / "store"
    run = subprocess.run([sys.executable, "-m", "bertgpt_jax.create_pretraining_data",
                          f"--input_file={tmp_path / 'corpus.txt'}", f"--output_dir={out}", "--vocab_size=64",
                          "--validation_fraction=0.2", "--max_seq_length=32", "--max_predictions_per_seq=5",
                          "--num_workers=0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    with open(out / "bert_instances.json") as f:
        record = json.load(f)
    assert record["recipe"] == {"max_seq_length": 32, "random_seed": 12345, "max_predictions_per_seq": 5,
                                "dupe_factor": 10, "dynamic_masking": False, "do_whole_word_mask": False,
                                "masked_lm_prob": 0.15, "short_seq_prob": 0.1}
    # pretrain with the same recipe reads the same instances (the cut cached in the store).
    ds = data.bert_dataset(str(out), "train", max_seq_length=32, max_predictions_per_seq=5, dupe_factor=10,
                           dynamic_masking=False, seed=12345)
    assert record["instances"]["train"] == len(ds) > 0 and "validation" in record["instances"]
    assert "BERT instances (max_seq_length=32" in run.stdout
