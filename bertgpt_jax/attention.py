"""Attention heat maps: ``python -m bertgpt_jax.attention --init_checkpoint=DIR --text="..." --output=attention.png``.

Draws one panel per layer and head (``--layers``, ``--heads``; default all) with the tokens on both axes,
and writes every layer's and head's weights to .npz (``weights`` [L, H, T, T], ``tokens``, ``token_ids``).
``--html=heads.html`` adds an offline head view (layer and head selectors, token-to-token lines).
BERT takes ``--text_b`` for a sentence pair; GPT-2's maps are zero above the diagonal.
"""

from __future__ import annotations

from absl import flags, logging

from bertgpt_jax import cli
from bertgpt_jax.inference.attention import AttentionConfig
from bertgpt_jax.inference.loading import ModelSource

F = flags.FLAGS
cli.define_flags(ModelSource, AttentionConfig)


def main(argv) -> None:
    if not F["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}; pass the text with --text")
    from bertgpt_jax.inference import attention

    cfg = cli.from_flags(AttentionConfig)
    maps = attention.run(cli.from_flags(ModelSource), cfg)
    L, H, T, _ = maps.weights.shape
    print(f"[attention] {L} layers x {H} heads over {T} tokens -> {cfg.output}", flush=True)


if __name__ == "__main__":
    cli.run(main, user_errors=(ValueError, FileNotFoundError))
