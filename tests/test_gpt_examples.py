"""GPT windows: the EOS-joined stream cut into shifted windows, segment and position ids per document."""

import numpy as np
import pytest

from bertgpt_jax import data
from tests import pipeline_stores as ps

VOCAB, EOS = 1000, 999


@pytest.fixture(scope="module")
def docs_and_store(tmp_path_factory):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, EOS, int(rng.integers(1, 60))) for _ in range(300)]
    store = ps.write_gpt_store(str(tmp_path_factory.mktemp("gpt_store")), {"train": docs, "tiny": docs[:1]},
                               vocab_size=VOCAB, eos_id=EOS, num_shards=1)
    return docs, store


def test_windows_are_the_eos_joined_stream_shifted_by_one(docs_and_store):
    docs, store = docs_and_store
    stream = np.concatenate([np.concatenate([[EOS], d]) for d in docs])
    ds = data.gpt_dataset(store, "train", seq_len=16)
    assert len(ds) == (len(stream) - 1) // 16
    batch = ds.examples(np.arange(len(ds)))
    assert batch["input_ids"].dtype == np.int32 and batch["input_ids"].shape == (len(ds), 16)
    want = stream[: len(ds) * 16 + 1]
    assert np.array_equal(batch["input_ids"].reshape(-1), want[:-1])
    assert np.array_equal(batch["targets"].reshape(-1), want[1:])
    assert set(batch) == {"input_ids", "targets"}
    item = ds[3]
    assert np.array_equal(item["input_ids"], stream[48:64]) and np.array_equal(item["targets"], stream[49:65])


def test_segment_and_position_ids_restart_at_each_document(docs_and_store):
    _, store = docs_and_store
    ds = data.gpt_dataset(store, "train", seq_len=24, document_boundaries=True)
    batch = ds.examples(np.arange(len(ds)))
    for ids, seg, pos in zip(batch["input_ids"], batch["segment_ids"], batch["position_ids"]):
        want_seg, want_pos, s, p = [], [], 1, 0
        for j, token in enumerate(ids):  # a plain loop: EOS opens a new document
            if token == EOS and j > 0:
                s, p = s + 1, 0
            elif token == EOS:
                p = 0
            want_seg.append(s)
            want_pos.append(p)
            p += 1
        assert seg.tolist() == want_seg and pos.tolist() == want_pos
    # The only target read across a segment change is the EOS that ends the current document.
    crosses = np.diff(batch["segment_ids"], axis=1) != 0
    assert np.array_equal(crosses, batch["targets"][:, :-1] == EOS)
    assert batch["segment_ids"].max() > 2 and batch["position_ids"].dtype == np.int32


def test_bad_input(docs_and_store, tmp_path):
    _, store = docs_and_store
    with pytest.raises(ValueError, match="position table"):
        data.gpt_dataset(store, "train", seq_len=64, max_position_embeddings=32)
    with pytest.raises(ValueError, match="too few for one window"):
        data.gpt_dataset(store, "tiny", seq_len=4096)
    with pytest.raises(ValueError, match="another tokenizer"):
        data.gpt_dataset(store, "train", seq_len=16, expected_fingerprint="elsewhere")
    rng = np.random.default_rng(1)
    wordpiece = ps.write_wordpiece_store(str(tmp_path / "wp"), {"train": ps.random_documents(rng, 5, (1, 3), (2, 5))})
    with pytest.raises(ValueError, match="no eos token"):
        data.gpt_dataset(wordpiece, "train", seq_len=16)
