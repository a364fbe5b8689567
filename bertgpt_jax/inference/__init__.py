"""Using a trained model: generation (KV cache, sampling), fill-mask, features, perplexity, attention maps.

    loaded = inference.load("runs/gpt_demo/output")          # or an HF directory
    [[gen]] = inference.generate(loaded, ["The Python"], max_new_tokens=32, do_sample=True, top_k=40)
    feats = inference.extract_features(bert, ["a sentence", ("a", "pair")]); feats.layers[-1], feats.mean
    words = inference.fill_mask(bert, "The [MASK] statement ends a loop.")
    maps = inference.attention_maps(bert, "text"); inference.draw_attention(maps, "attention.png")
    inference.write_head_view(maps, "heads.html")              # offline, bertviz-style head view
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
    "extract_features": "features",
    "Features": "features",
    "fill_mask": "fill_mask",
    "gpt2_perplexity": "perplexity",
    "bert_pseudo_perplexity": "perplexity",
    "attention_maps": "attention",
    "draw_attention": "attention",
    "write_head_view": "head_view",
    "held_out_blanks": "blanks",
    "predict_blanks": "blanks",
    "format_predictions": "blanks",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
