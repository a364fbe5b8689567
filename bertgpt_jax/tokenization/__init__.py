"""Tokenizers behind one interface: WordPiece (BERT), byte-level BPE (GPT-2) and SentencePiece; corpus readers.

``from_file(path)`` picks the kind from what it is given; every tokenizer has ``tokenize``, ``encode``,
``encode_batch``, ``decode``, ``vocab_size``, ``save``, the special-token ids, ``fingerprint`` and
``word_start_table``.
"""

from bertgpt_jax import lazy_exports

_EXPORTS = {
    "from_file": "loading",
    "Tokenizer": "base",
    "WordPieceTokenizer": "wordpiece",
    "KINDS": "train",
    "train_tokenizer": "train",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
