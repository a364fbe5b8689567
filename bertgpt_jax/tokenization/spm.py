"""SentencePiece models (BPE or unigram) through the ``sentencepiece`` package; suits text without spaces."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from bertgpt_jax import atomic_files
from bertgpt_jax.tokenization.base import Tokenizer, special_table, write_meta

MODEL_FILE = "spm.model"
WORD_START = "\u2581"  # SentencePiece's visible space: a piece beginning with it starts a word
_NAMED = {"cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}


class SentencePieceTokenizer(Tokenizer):
    """Wraps a serialized SentencePiece model; its own normaliser (lower-casing included) is in the model."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes, source: str = "<bytes>"):
        import sentencepiece

        super().__init__()
        self.model_proto = bytes(model_proto)
        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.LoadFromSerializedProto(self.model_proto)
        except (RuntimeError, OSError) as e:
            raise ValueError(f"{source} is not a SentencePiece model: {e}") from e
        n = self.sp.get_piece_size()
        ids = {"pad": self.sp.pad_id(), "unk": self.sp.unk_id(), "eos": self.sp.eos_id()}
        self.special.update({k: (v if 0 <= v < n else None) for k, v in ids.items()})
        for name, piece in _NAMED.items():
            i = self.sp.piece_to_id(piece)
            if 0 <= i < n and self.sp.id_to_piece(i) == piece:
                self.special[name] = i
        if self.special["cls"] is None and 0 <= self.sp.bos_id() < n:
            self.special["cls"] = self.sp.bos_id()

    @classmethod
    def from_model_file(cls, path: str) -> "SentencePieceTokenizer":
        with open(path, "rb") as f:
            return cls(f.read(), source=path)

    @classmethod
    def from_meta(cls, directory: str, meta: dict) -> "SentencePieceTokenizer":
        return cls.from_model_file(os.path.join(directory, meta["model_file"]))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def tokenize(self, text: str) -> list[str]:
        return self.sp.encode(text, out_type=str)

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        return self.sp.encode(list(texts), out_type=int, num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def id_to_token(self, index: int) -> str:
        return self.sp.id_to_piece(int(index))

    def word_start_table(self) -> np.ndarray:
        sp = self.sp
        table = np.array([sp.id_to_piece(i).startswith(WORD_START) or sp.is_control(i) or sp.is_unknown(i)
                          or sp.is_unused(i) for i in range(self.vocab_size)], dtype=bool)
        for name in _NAMED:  # user-defined symbols like [MASK] stand alone
            if self.special[name] is not None:
                table[self.special[name]] = True
        return special_table(table, self.special)

    def save(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, MODEL_FILE)
        with atomic_files.atomic_open(path, "wb") as f:
            f.write(self.model_proto)
        write_meta(directory, {"kind": self.kind, "model_file": MODEL_FILE})
        return directory

    def _vocab_digest_items(self):
        yield self.model_proto  # holds the pieces, scores and the normalisation rules
