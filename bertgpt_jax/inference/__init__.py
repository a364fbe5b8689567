"""Using a trained model: fill-in-the-blank predictions of the masked-LM head."""

from bertgpt_jax import lazy_exports

_EXPORTS = {
    "fill_mask": "blanks",
    "held_out_blanks": "blanks",
    "format_predictions": "blanks",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
