"""Fill in the blanks with BERT: ``python -m bertgpt_jax.fill_mask --init_checkpoint=DIR "The [MASK] statement ..."``.

Prints the top-k tokens and probabilities for each [MASK] and, where consecutive [MASK]s cover one word's
pieces, the top-k whole words. Loads a pretraining run's output_dir or an HF BertForMaskedLM /
BertForPreTraining directory (a BertModel has no masked-LM head: an error).
"""

from __future__ import annotations

from absl import flags, logging

from bertgpt_jax import cli
from bertgpt_jax.inference.fill_mask import FillMaskConfig
from bertgpt_jax.inference.loading import ModelSource

F = flags.FLAGS
cli.define_flags(ModelSource, FillMaskConfig)


def main(argv) -> None:
    if not F["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
    from bertgpt_jax.inference import fill_mask

    records = fill_mask.run(cli.from_flags(ModelSource), cli.from_flags(FillMaskConfig), argv[1:])
    for r in records:
        print(r["text"])
        for word in r["masks"]:
            where = ",".join(str(p) for p in word["positions"])
            if len(word["positions"]) == 1:
                cands = word["per_mask"][0]
            else:
                cands = word["words"]
            print(f"  [MASK] at {where}: " + " | ".join(f"{c['text']} {c['probability']:.3g}" for c in cands),
                  flush=True)


if __name__ == "__main__":
    cli.run(main, user_errors=(ValueError, FileNotFoundError))
