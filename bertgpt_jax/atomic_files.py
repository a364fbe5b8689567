"""Files that appear complete or not at all: write beside the target under a unique name, then rename.

A crash mid-write leaves no half-written file that looks complete, and concurrent writers of the same
file (worker processes filling one cache) never interleave.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path beside ``path``; renames it over ``path`` when the block succeeds."""
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **open_kwargs: Any):
    """``open(path, mode)`` whose content replaces ``path`` only once the file is closed."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as f:
        yield f


def write_json(path: str, obj: Any, **dump_kwargs: Any) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, **dump_kwargs)


def write_text(path: str, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
