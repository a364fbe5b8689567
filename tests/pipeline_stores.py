"""Small synthetic token stores for the pipeline tests, written with the real store format and tokenizer."""

from __future__ import annotations

import os

import numpy as np

from bertgpt_jax.data import token_store

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
NUM_WORDS = 100  # ids 5..104 start words, 105..204 are "##" continuation pieces
FIRST_WORD, FIRST_PIECE = len(SPECIALS), len(SPECIALS) + NUM_WORDS
VOCAB_SIZE = len(SPECIALS) + 2 * NUM_WORDS


def random_documents(rng: np.random.Generator, num_docs: int, sentences: tuple[int, int],
                     sentence_len: tuple[int, int], max_pieces: int = 2) -> list[list[np.ndarray]]:
    """Documents as lists of sentences; each word is a word-start id followed by 0..max_pieces pieces."""
    docs = []
    for _ in range(num_docs):
        doc = []
        for _ in range(int(rng.integers(sentences[0], sentences[1] + 1))):
            n = int(rng.integers(sentence_len[0], sentence_len[1] + 1))
            is_piece = rng.random(n) < max_pieces / (max_pieces + 2)
            is_piece[0] = False
            ids = np.where(is_piece, rng.integers(FIRST_PIECE, VOCAB_SIZE, n), rng.integers(FIRST_WORD, FIRST_PIECE, n))
            doc.append(ids.astype(np.int64))
        docs.append(doc)
    return docs


def write_wordpiece_store(store_dir: str, splits: dict[str, list[list[np.ndarray]]], num_shards: int = 2) -> str:
    """A token store of ``splits`` (name -> documents) with a real WordPiece tokenizer directory."""
    from bertgpt_jax import tokenization

    tok_dir = os.path.join(store_dir, token_store.TOKENIZER_DIR)
    os.makedirs(tok_dir, exist_ok=True)
    words = [f"w{i}" for i in range(NUM_WORDS)] + [f"##p{i}" for i in range(NUM_WORDS)]
    with open(os.path.join(tok_dir, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(SPECIALS + words) + "\n")
    tokenizer = tokenization.from_file(tok_dir)
    _write(store_dir, splits, tokenizer.info(), num_shards)
    return store_dir


def write_gpt_store(store_dir: str, splits: dict[str, list[np.ndarray]], vocab_size: int, eos_id: int,
                    num_shards: int = 2) -> str:
    """A token store of flat documents (one sentence each) for GPT windows; ``eos_id`` ends documents."""
    info = {"kind": "bpe", "vocab_size": vocab_size, "fingerprint": "synthetic-bpe", "eos_token_id": eos_id,
            **{f"{n}_token_id": None for n in ("cls", "sep", "mask", "pad", "unk")}}
    _write(store_dir, {k: [[d] for d in docs] for k, docs in splits.items()}, info, num_shards)
    return store_dir


def _write(store_dir: str, splits: dict, tokenizer_info: dict, num_shards: int) -> None:
    os.makedirs(store_dir, exist_ok=True)
    dtype = token_store.token_dtype(tokenizer_info["vocab_size"])
    manifest_splits = {}
    for split, docs in splits.items():
        shards = []
        for k in range(num_shards):
            name = token_store.shard_name(split, k, num_shards)
            records = []
            for doc in docs[k::num_shards]:
                tokens = np.concatenate(doc) if doc else np.zeros(0, np.int64)
                records.append(token_store.encode_document(tokens, np.cumsum([len(s) for s in doc]), dtype))
            token_store.write_shard(os.path.join(store_dir, name), records)
            shards.append(name)
        manifest_splits[split] = {"shards": shards, "documents": len(docs),
                                  "sentences": sum(len(d) for d in docs),
                                  "tokens": int(sum(sum(len(s) for s in d) for d in docs))}
    token_store.write_manifest(store_dir, {"dtype": dtype.str, "splits": manifest_splits,
                                           "tokenizer": tokenizer_info})
