"""BERT and GPT-2 as Flax linen modules; ``from_config`` picks one from a ``ModelConfig``."""

from bertgpt_jax import lazy_exports

_EXPORTS = {
    "from_config": "factory",
    "resolve_kernels": "factory",
    "Bert": "bert",
    "GPT2": "gpt2",
    "BertOutput": "outputs",
    "GPT2Output": "outputs",
    "ATTENTION_WEIGHTS": "layers",
    "CACHE": "layers",
    "count_params": "accounting",
    "flops_per_token": "accounting",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
