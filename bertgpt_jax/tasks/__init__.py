"""Training objectives, one file each, behind the :class:`Task` interface the training engine runs.

    task = tasks.task_for(model_cfg, tasks.PretrainingData(dataset=store_dir))  # BERT MLM+NSP or causal LM
    result = training.run(train_cfg, task)
    task = tasks.SequenceClassification(model_cfg, num_labels, max_seq_length, train_features)  # fine-tuning
"""

from bertgpt_jax import lazy_exports

_EXPORTS = {
    "Task": "base",
    "BertPretraining": "bert_pretraining",
    "CausalLM": "causal_lm",
    "FinetuneTask": "finetuning",
    "SequenceClassification": "classification",
    "SpanExtraction": "spans",
    "TokenClassification": "tagging",
    "PretrainingData": "pretraining",
    "fit_vocab": "pretraining",
    "task_for": "pretraining",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
