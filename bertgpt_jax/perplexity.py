"""Perplexity of a text: ``python -m bertgpt_jax.perplexity --init_checkpoint=DIR --input_file=text.txt``.

GPT-2: strided sliding windows over the whole file as one token stream (``--max_seq_length`` tokens per
window, default the model's context; ``--stride`` default half of it); each token is scored once. BERT: the
masked-LM pseudo-perplexity of each line (every token masked in turn). The output states the method.
"""

from __future__ import annotations

from absl import flags, logging

from bertgpt_jax import cli
from bertgpt_jax.inference.loading import ModelSource
from bertgpt_jax.inference.perplexity import PerplexityConfig

F = flags.FLAGS
cli.define_flags(ModelSource, PerplexityConfig)


def main(argv) -> None:
    if not F["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}; the text comes from --input_file")
    from bertgpt_jax.inference import perplexity

    result = perplexity.run(cli.from_flags(ModelSource), cli.from_flags(PerplexityConfig))
    print(f"perplexity {result.perplexity:.3f} (mean NLL {result.nll_sum / result.tokens:.4f} over {result.tokens} "
          f"tokens; {result.method})", flush=True)


if __name__ == "__main__":
    cli.run(main, user_errors=(ValueError, FileNotFoundError))
