"""Using a trained model: generation (KV cache, sampling), fill-mask, features, perplexity, attention maps.

    loaded = inference.load("runs/gpt_demo/output")          # or an HF directory
    [[gen]] = inference.generate(loaded, ["The Python"], max_new_tokens=32, do_sample=True, top_k=40)
"""

from bertgpt_jax import lazy_exports

_EXPORTS = {
    "LoadedModel": "loading",
    "load": "loading",
    "from_params": "loading",
    "Generator": "generation",
    "Generation": "generation",
    "Sampling": "generation",
    "generate": "generation",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
