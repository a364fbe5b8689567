"""bertgpt_jax: pretrain, fine-tune and serve BERT and GPT-2 with JAX/Flax on TPU, GPU and CPU."""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("configs", "convert", "data", "models", "sharding", "tokenization", "training")


def __getattr__(name):
    # Submodules load on first use, so `import bertgpt_jax` stays cheap and free of cycles.
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
