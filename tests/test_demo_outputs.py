"""What a run shows a person: the two-panel loss curve (raw + smoothed train loss, eval metrics) and the
fill-in-the-blank predictions on held-out sentences."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertgpt_jax import inference, models, tokenization
from bertgpt_jax.training import metrics
from tests import pipeline_stores
from tests.training_helpers import tiny_config


def test_curves_smooth_the_train_loss_and_carry_every_eval_metric(tmp_path):
    records = [{"step": s, "train/loss": 10.0 - s + (s % 2)} for s in range(1, 9)]
    records[3].update({"eval/loss": 6.0, "eval/masked_lm_accuracy": 0.1, "eval/next_sentence_accuracy": 0.6})
    records[7].update({"eval/loss": 4.0, "eval/masked_lm_accuracy": 0.3, "eval/next_sentence_accuracy": 0.8})
    c = metrics.curves(records)
    raw = np.array([v for _, v in c["train loss"]])
    ema, expected = 0.0, []
    for t, v in enumerate(raw, 1):  # TensorBoard's debiased exponential moving average, weight 0.8
        ema = 0.8 * ema + 0.2 * v
        expected.append(ema / (1 - 0.8 ** t))
    np.testing.assert_allclose([v for _, v in c["train loss (smoothed)"]], expected)
    assert c["eval/masked_lm_accuracy"] == [(4, 0.1), (8, 0.3)]
    assert c["eval/next_sentence_accuracy"] == [(4, 0.6), (8, 0.8)] and c["eval loss"] == [(4, 6.0), (8, 4.0)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert metrics.plot_loss_curve(str(path), str(tmp_path / "curve.png"))
    import matplotlib.image

    height, width = matplotlib.image.imread(str(tmp_path / "curve.png")).shape[:2]
    assert width == 1200 and height == 400  # two panels side by side
    lm = metrics.curves([{"step": 1, "train/loss": 3.0, "eval/loss": 2.0, "eval/perplexity": 7.4}])
    assert lm["eval/perplexity"] == [(1, 7.4)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    docs = pipeline_stores.random_documents(rng, 12, (3, 6), (6, 14))
    return pipeline_stores.write_wordpiece_store(str(tmp_path_factory.mktemp("store")),
                                                 {"train": docs, "validation": docs[:8]})


def test_fill_mask_gives_the_top_five_of_the_mlm_head(store):
    blanks = inference.held_out_blanks(store, num_sentences=4)
    assert len(blanks) == 4
    tok = tokenization.from_file(store + "/tokenizer")
    for b in blanks:
        assert b["input_ids"][0] == tok.cls_token_id and b["input_ids"][-1] == tok.sep_token_id
        assert np.all(b["input_ids"][b["positions"]] == tok.mask_token_id) and len(b["positions"]) >= 1
        assert all(not tok.id_to_token(int(a)).startswith("##") for a in b["answers"])
    assert [b["input_ids"].tolist() for b in inference.held_out_blanks(store, num_sentences=4)] == \
        [b["input_ids"].tolist() for b in blanks]  # the same sentences and blanks every time
    cfg = tiny_config("bert").replace(vocab_size=pipeline_stores.VOCAB_SIZE)
    model = models.from_config(cfg)
    ids = jnp.asarray(blanks[0]["input_ids"][None])
    params = jax.jit(lambda k: model.init({"params": k}, ids, attention_mask=jnp.ones_like(ids),
                                          token_type_ids=jnp.zeros_like(ids), deterministic=True))(
        jax.random.PRNGKey(0))["params"]
    preds = inference.predict_blanks(model, params, blanks, top_k=5)

    @jax.jit
    def full_head(params, x, mask):
        return model.apply({"params": params}, x, attention_mask=mask, token_type_ids=jnp.zeros_like(x),
                           masked_lm_positions=jnp.arange(x.shape[1])[None], deterministic=True).mlm_logits
    # Reference: each sentence alone (padded to one length, padding masked out), the head at every position,
    # softmax and a full sort.
    T = max(len(b["input_ids"]) for b in blanks)
    for b, rows in zip(blanks, preds):
        n = len(b["input_ids"])
        x = jnp.asarray(np.pad(b["input_ids"], (0, T - n))[None])
        logits = full_head(params, x, jnp.asarray((np.arange(T) < n)[None].astype(np.int32)))[0]
        probs = np.asarray(jax.nn.softmax(logits, axis=-1))
        for pos, row in zip(b["positions"], rows):
            top = np.argsort(-probs[pos])[:5]
            assert [t for t, _ in row] == top.tolist()
            np.testing.assert_allclose([p for _, p in row], probs[pos, top], rtol=1e-4, atol=1e-6)
    text = inference.format_predictions(blanks, preds, tok)
    assert text.count("[MASK] =") == sum(len(b["positions"]) for b in blanks) and "top-5:" in text
