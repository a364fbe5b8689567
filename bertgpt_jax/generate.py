"""Generate text with a trained GPT-2: ``python -m bertgpt_jax.generate --init_checkpoint=DIR --prompt=...``.

Loads a pretraining run's output_dir (Orbax checkpoint, its model_config.json and tokenizer) or an HF
directory; prefills each prompt, then decodes with a KV cache in one compiled loop, greedily
(``--nodo_sample``) or sampling with ``--temperature``, ``--top_k`` (default 40) and ``--top_p``. Prints each
sample and, with ``--output_file``, writes JSONL (prompt, sample, token_ids, text, finish_reason).
"""

from __future__ import annotations

from absl import flags, logging

from bertgpt_jax import cli
from bertgpt_jax.inference.generation import GenerateConfig
from bertgpt_jax.inference.loading import ModelSource

F = flags.FLAGS
cli.define_flags(ModelSource, GenerateConfig)


def main(argv) -> None:
    if not F["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}; pass the text with --prompt or --prompt_file")
    from bertgpt_jax.inference import generation

    records = generation.run(cli.from_flags(ModelSource), cli.from_flags(GenerateConfig))
    for r in records:
        print(f"=== prompt {r['prompt']!r}, sample {r['sample']} ({len(r['token_ids'])} tokens, {r['finish_reason']})")
        print(r["prompt"] + r["text"], flush=True)


if __name__ == "__main__":
    cli.run(main, user_errors=(ValueError, FileNotFoundError))
