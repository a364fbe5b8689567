"""What every tokenizer kind shares: special-token ids, the fingerprint, batch encoding, saving metadata."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import numpy as np

from bertgpt_jax import atomic_files

META_FILE = "bertgpt_tokenizer.json"
SPECIAL_NAMES = ("cls", "sep", "mask", "pad", "unk", "eos")


class Tokenizer:
    """Base class: subclasses set ``kind``, fill ``self.special`` (name -> id or None) and implement the rest."""

    kind: str = ""

    def __init__(self) -> None:
        self.special: dict[str, int | None] = {name: None for name in SPECIAL_NAMES}

    # -- the interface -------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def tokenize(self, text: str) -> list[str]:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encodes many texts at once (the native libraries do this faster than a loop)."""
        return [self.encode(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def id_to_token(self, index: int) -> str:
        raise NotImplementedError

    def save(self, directory: str) -> str:
        raise NotImplementedError

    def word_start_table(self) -> np.ndarray:
        """``bool[vocab_size]``: True where a token begins a new word (used for whole-word masking)."""
        raise NotImplementedError

    def _settings(self) -> dict:
        """Everything besides the vocabulary that changes the ids a text gets (part of the fingerprint)."""
        return {}

    def _vocab_digest_items(self):
        """The vocabulary as a deterministic iterable of byte strings (part of the fingerprint)."""
        raise NotImplementedError

    # -- derived -------------------------------------------------------------------------------
    @property
    def cls_token_id(self) -> int | None:
        return self.special["cls"]

    @property
    def sep_token_id(self) -> int | None:
        return self.special["sep"]

    @property
    def mask_token_id(self) -> int | None:
        return self.special["mask"]

    @property
    def pad_token_id(self) -> int | None:
        return self.special["pad"]

    @property
    def unk_token_id(self) -> int | None:
        return self.special["unk"]

    @property
    def eos_token_id(self) -> int | None:
        return self.special["eos"]

    @property
    def fingerprint(self) -> str:
        """A stable hash of the vocabulary, the normalisation settings and the special ids."""
        if getattr(self, "_fingerprint", None) is None:
            h = hashlib.sha256()
            h.update(json.dumps({"kind": self.kind, "settings": self._settings(), "special": self.special},
                                sort_keys=True).encode())
            h.update(b"".join([len(item).to_bytes(4, "little") + item for item in self._vocab_digest_items()]))
            self._fingerprint = h.hexdigest()[:32]
        return self._fingerprint

    def info(self) -> dict:
        """What a token store's manifest records about its tokenizer."""
        return {"kind": self.kind, "vocab_size": self.vocab_size, "fingerprint": self.fingerprint,
                **{f"{name}_token_id": self.special[name] for name in SPECIAL_NAMES}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, fingerprint={self.fingerprint[:12]})"


def write_meta(directory: str, meta: dict) -> None:
    """Writes ``bertgpt_tokenizer.json`` atomically; ``from_file`` reads it to pick the kind and settings."""
    os.makedirs(directory, exist_ok=True)
    atomic_files.write_json(os.path.join(directory, META_FILE), meta, indent=2, sort_keys=True)


def special_table(table: np.ndarray, special: dict[str, int | None]) -> np.ndarray:
    """Marks the special tokens as word starts (a [CLS] or [MASK] never continues a word)."""
    for index in special.values():
        if index is not None and 0 <= index < len(table):
            table[index] = True
    return table
