"""``python -m bertgpt_jax.tokenization train --input_file=... --output_dir=... --kind=wordpiece --vocab_size=...``

Trains a vocabulary on a corpus (any ``input_file`` the corpus readers take, ``default`` included) and saves
it where ``tokenization.from_file`` loads it. ``encode --vocab_file=... --text=...`` prints ids, to check one.
"""

from __future__ import annotations

from absl import app, flags

flags.DEFINE_string("input_file", "default",
                    "Corpus: files, globs, comma lists, gs://, tfds:NAME[:SPLIT], or 'default'.")
flags.DEFINE_string("output_dir", None, "Where the trained tokenizer is saved.")
flags.DEFINE_enum("kind", "wordpiece", ["wordpiece", "bpe", "sentencepiece"], "Tokenizer kind to train.")
flags.DEFINE_integer("vocab_size", 8192, "Vocabulary size (SentencePiece and BPE may end slightly below).")
flags.DEFINE_bool("do_lower_case", True, "Lower-case (and for WordPiece strip accents) before tokenizing.")
flags.DEFINE_list("special_tokens", None,
                  "Special tokens; default per kind ([PAD],[UNK],[CLS],[SEP],[MASK] for WordPiece).")
flags.DEFINE_integer("min_frequency", 2, "WordPiece/BPE: the fewest occurrences a merge needs.")
flags.DEFINE_enum("sentencepiece_model_type", "unigram", ["unigram", "bpe"], "SentencePiece algorithm.")
flags.DEFINE_string("text_field", "text", "JSONL/TFDS field holding the text.")
flags.DEFINE_string("vocab_file", None, "encode: the tokenizer to load.")
flags.DEFINE_string("text", None, "encode: the text to encode.")
FLAGS = flags.FLAGS


def main(argv):
    command = argv[1] if len(argv) > 1 else None
    if command == "train":
        from bertgpt_jax.tokenization.corpus import CorpusStats, iter_sentences
        from bertgpt_jax.tokenization.train import train_tokenizer

        if not FLAGS.output_dir:
            raise app.UsageError("train needs --output_dir")
        stats = CorpusStats()
        tok = train_tokenizer(iter_sentences(FLAGS.input_file, stats, FLAGS.text_field), kind=FLAGS.kind,
                              vocab_size=FLAGS.vocab_size, do_lower_case=FLAGS.do_lower_case,
                              special_tokens=FLAGS.special_tokens, min_frequency=FLAGS.min_frequency,
                              sentencepiece_model_type=FLAGS.sentencepiece_model_type)
        tok.save(FLAGS.output_dir)
        print(f"trained {tok.kind} vocabulary of {tok.vocab_size} tokens on {stats.sentences} sentences "
              f"({stats.bytes / 1e6:.1f} MB) -> {FLAGS.output_dir} (fingerprint {tok.fingerprint})")
    elif command == "encode":
        from bertgpt_jax import tokenization

        if not FLAGS.vocab_file or FLAGS.text is None:
            raise app.UsageError("encode needs --vocab_file and --text")
        tok = tokenization.from_file(FLAGS.vocab_file)
        print(tok.tokenize(FLAGS.text))
        print(tok.encode(FLAGS.text))
    else:
        raise app.UsageError("usage: python -m bertgpt_jax.tokenization train|encode [flags]")


if __name__ == "__main__":
    from bertgpt_jax import cli

    cli.run(main, user_errors=(ValueError, FileNotFoundError, NotADirectoryError))
