"""bertgpt_jax: pretrain, fine-tune and serve BERT and GPT-2 with JAX/Flax on TPU, GPU and CPU.

Every subpackage names its public API in ``__all__`` and loads each name from its module on first use,
so ``import bertgpt_jax.tokenization`` (say) does not import JAX.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("cli", "configs", "convert", "data", "evaluation", "inference", "models", "sharding", "tasks",
               "tokenization", "training")


def lazy_exports(package: str, exports: dict[str, str]):
    """A module ``__getattr__`` for ``package`` that imports ``exports[name]`` (its submodule holding
    ``name``) on first use."""

    def __getattr__(name):
        if name in exports:
            return getattr(importlib.import_module(f"{package}.{exports[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


def __getattr__(name):
    # Submodules load on first use, so `import bertgpt_jax` stays cheap and free of cycles.
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
