"""Contextual features from BERT: ``python -m bertgpt_jax.extract_features --input_file=... --output_file=...``.

The original ``extract_features.py``'s flags and JSONL (``linex_index``, per token ``token`` and ``layers``
with ``index`` and ``values``); ``--output_arrays`` writes the same arrays plus pooled sentence vectors
(``cls``, ``mean``, ``pooler``) as .npz or .safetensors. Loads a pretraining run's output_dir or an HF
directory (e.g. a sentence-transformers BERT).
"""

from __future__ import annotations

from absl import flags, logging

from bertgpt_jax import cli
from bertgpt_jax.inference.features import FeaturesConfig
from bertgpt_jax.inference.loading import ModelSource

F = flags.FLAGS
cli.define_flags(ModelSource, FeaturesConfig)


def main(argv) -> None:
    if not F["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}; every setting is a --flag")
    from bertgpt_jax.inference import features

    cfg = cli.from_flags(FeaturesConfig)
    out = features.run(cli.from_flags(ModelSource), cfg)
    n, t = out.input_ids.shape
    print(f"[extract_features] {n} examples, up to {t} tokens, layers {list(out.layers)} -> "
          + ", ".join(p for p in (cfg.output_file, cfg.output_arrays) if p), flush=True)


if __name__ == "__main__":
    cli.run(main, user_errors=(ValueError, FileNotFoundError))
