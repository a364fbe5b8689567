"""The token store and the BERT / GPT input pipelines.

    ds = data.bert_dataset(store_dir, split="train", max_seq_length=128, max_predictions_per_seq=20)
    ds = data.gpt_dataset(store_dir, split="train", seq_len=1024)
    it = data.make_iterator(ds, global_batch_size=256, shuffle=True, seed=0)   # checkpointable
    ev = data.make_eval_iterator(ds_val, global_batch_size=256)                # one unshuffled pass
"""

from bertgpt_jax import lazy_exports

_EXPORTS = {
    "bert_dataset": "bert_examples",
    "BertExamples": "bert_examples",
    "gpt_dataset": "gpt_examples",
    "GptWindows": "gpt_examples",
    "make_iterator": "pipeline",
    "make_eval_iterator": "pipeline",
    "eval_sample": "pipeline",
    "batched_dataset": "pipeline",
    "BatchedExamples": "pipeline",
    "TokenStore": "token_store",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
