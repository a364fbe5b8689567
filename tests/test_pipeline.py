"""Batching: deterministic global shuffle, per-process shares, epochs, exact resume, evaluation passes."""

import grain
import numpy as np
import pytest

from bertgpt_jax import data
from tests import pipeline_stores as ps

SEQ = 8
N_WINDOWS = 96  # divisible by every global batch used below


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    """GPT windows whose first target names the window: the stream is EOS 0 1 2 3 ..."""
    tokens = np.arange(N_WINDOWS * SEQ, dtype=np.int64)
    store = ps.write_gpt_store(str(tmp_path_factory.mktemp("ids")), {"train": [tokens]},
                               vocab_size=70_000, eos_id=69_999, num_shards=1)
    ds = data.gpt_dataset(store, "train", seq_len=SEQ)
    assert len(ds) == N_WINDOWS
    return ds


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    rng = np.random.default_rng(0)
    store = ps.write_wordpiece_store(str(tmp_path_factory.mktemp("bert")),
                                     {"train": ps.random_documents(rng, 60, (5, 30), (2, 9))})
    return data.bert_dataset(store, "train", max_seq_length=32, max_predictions_per_seq=5, seed=3)


def window_ids(batch):
    return (batch["targets"][:, 0] // SEQ).tolist()


def take(it, n):
    return [next(it) for _ in range(n)]


def test_every_epoch_is_a_fresh_permutation_and_the_seed_fixes_the_stream(windows):
    it = data.make_iterator(windows, global_batch_size=16, seed=5, num_epochs=3, process_count=1, process_index=0)
    seen = [window_ids(b) for b in it]
    assert len(seen) == 3 * N_WINDOWS // 16
    epochs = [sum(seen[e * 6:(e + 1) * 6], []) for e in range(3)]
    for order in epochs:
        assert sorted(order) == list(range(N_WINDOWS))
    assert epochs[0] != epochs[1] != epochs[2] and epochs[0] != list(range(N_WINDOWS))
    again = data.make_iterator(windows, global_batch_size=16, seed=5, num_epochs=3, process_count=1, process_index=0)
    assert [window_ids(b) for b in again] == seen
    other = data.make_iterator(windows, global_batch_size=16, seed=6, process_count=1, process_index=0)
    assert window_ids(next(other)) != seen[0]


def test_processes_split_each_global_batch_into_contiguous_blocks(windows):
    whole = data.make_iterator(windows, global_batch_size=24, seed=1, num_epochs=2, process_count=1, process_index=0)
    parts = [data.make_iterator(windows, global_batch_size=24, seed=1, num_epochs=2, process_count=3, process_index=p)
             for p in range(3)]
    for batch in whole:
        local = [next(it) for it in parts]
        assert all(b["input_ids"].shape == (8, SEQ) for b in local)
        assert sum((window_ids(b) for b in local), []) == window_ids(batch)
    for it in parts:
        with pytest.raises(StopIteration):
            next(it)


def test_a_restored_iterator_continues_at_the_next_batch(bert):
    kwargs = dict(global_batch_size=8, seed=2, process_count=1, process_index=0)
    it = data.make_iterator(bert, **kwargs)
    steps_per_epoch = len(bert) // 8
    take(it, steps_per_epoch - 2)  # the resume crosses an epoch boundary
    state = it.get_state()
    expected = take(it, 5)
    fresh = data.make_iterator(bert, **kwargs)
    fresh.set_state(state)
    for want, got in zip(expected, take(fresh, 5)):
        assert set(want) == set(got)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_orbax_checkpoint_round_trip_of_the_iterator(windows, tmp_path):
    import orbax.checkpoint as ocp

    kwargs = dict(global_batch_size=8, seed=4, process_count=1, process_index=0)
    it = data.make_iterator(windows, **kwargs)
    take(it, 7)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as manager:
        manager.save(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(it)))
        manager.wait_until_finished()
    expected = [window_ids(b) for b in take(it, 4)]
    restored = data.make_iterator(windows, **kwargs)
    with ocp.CheckpointManager(str(tmp_path / "ckpt")) as manager:
        manager.restore(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(restored)))
    assert [window_ids(b) for b in take(restored, 4)] == expected


def test_dynamic_masks_change_between_epochs_in_the_pipeline(bert):
    it = data.make_iterator(bert, global_batch_size=len(bert), shuffle=False, num_epochs=2, process_count=1,
                            process_index=0)
    e0, e1 = take(it, 2)
    assert np.array_equal(e0["next_sentence_labels"], e1["next_sentence_labels"])
    long_rows = e0["input_mask"].sum(1) >= 20
    differs = (e0["masked_lm_positions"] != e1["masked_lm_positions"]).any(1)
    assert differs[long_rows].mean() > 0.99


def test_eval_iterator_covers_every_example_once_with_padding_marked(windows):
    seen, real_total = [], 0
    for p in range(2):
        for batch in data.make_eval_iterator(windows, global_batch_size=20, process_count=2, process_index=p):
            assert batch["input_ids"].shape == (10, SEQ)
            real = batch["is_real_example"].astype(bool)
            seen += [w for w, r in zip(window_ids(batch), real) if r]
            real_total += real.sum()
    assert sorted(seen) == list(range(N_WINDOWS)) and real_total == N_WINDOWS
    ordered = sum((window_ids(b) for b in data.make_eval_iterator(windows, global_batch_size=32,
                                                                   process_count=1, process_index=0)), [])
    assert ordered == list(range(N_WINDOWS))  # unshuffled


def test_padding_rows_carry_no_mlm_weight(bert):
    it = data.make_eval_iterator(bert, global_batch_size=64, process_count=1, process_index=0)
    batches = list(it)
    last = batches[-1]
    real = last["is_real_example"].astype(bool)
    assert 0 < real.sum() < 64 and real.sum() == len(bert) % 64
    assert last["masked_lm_weights"][~real].sum() == 0 and last["masked_lm_weights"][real].sum() > 0


def test_any_map_dataset_of_dicts_batches_too():
    source = grain.MapDataset.range(10).map(lambda i: {"x": np.array([i, -i])})
    batches = list(data.make_iterator(source, global_batch_size=5, shuffle=False, num_epochs=1,
                                      process_count=1, process_index=0))
    assert [b["x"][:, 0].tolist() for b in batches] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_grain_transformations_apply_to_the_example_datasets(bert):
    n = len(bert)
    batches = list(bert.repeat(2).batch(n, drop_remainder=True))
    assert len(batches) == 2 and batches[0]["input_ids"].shape == (n, 32)
    direct = bert.examples(np.arange(2 * n))
    for k in batches[0]:  # grain's repeat passes index i + e * n down: epoch 2 gets fresh masks
        np.testing.assert_array_equal(np.concatenate([batches[0][k], batches[1][k]]), direct[k], err_msg=k)
    assert not np.array_equal(batches[0]["masked_lm_positions"], batches[1]["masked_lm_positions"])
    shuffled = next(iter(bert.shuffle(seed=1).batch(8)))
    assert shuffled["masked_lm_weights"].shape == (8, 5)


def test_bad_batch_settings_are_reported(windows):
    with pytest.raises(ValueError, match="multiple of the process count 3"):
        data.make_iterator(windows, global_batch_size=16, process_count=3, process_index=0)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        data.make_iterator(windows, global_batch_size=128, process_count=1, process_index=0)
    with pytest.raises(ValueError, match=r"process_index 2 must lie in \[0, 2\)"):
        data.make_iterator(windows, global_batch_size=16, process_count=2, process_index=2)
