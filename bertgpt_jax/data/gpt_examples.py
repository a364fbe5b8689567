"""GPT causal-LM windows: the split's documents joined by the end-of-text token, cut into fixed windows.

The stream is ``EOS doc_0 EOS doc_1 EOS doc_2 ...`` (the end-of-text token in front of every document, so
it also serves as the beginning-of-text a model conditions on). Window ``i`` is
``stream[i*T : i*T + T + 1]``: ``input_ids`` its first T tokens, ``targets`` its last T (shifted by one).

``gpt_dataset(store_dir, split, seq_len=T, document_boundaries=True)`` adds per window:

    segment_ids   int32 [T]  1-based document number inside the window; it steps up at each EOS, so
                             a document's last token (predicting EOS) and EOS (predicting the next
                             document's first token) each stay inside one segment
    position_ids  int32 [T]  0 at the window start and at each EOS, counting up within the document

Build an attention mask from ``segment_ids`` (equal ids attend, causally) so packed documents do not
see each other. The stream is cached as a flat memory-mapped file beside the store; a batch is one
strided-view gather, which is why windows come fast.
"""

from __future__ import annotations

import os

import numpy as np

from bertgpt_jax import atomic_files, configs
from bertgpt_jax.data import batched_source, flat_tokens, store_checks, token_store


def load_stream(flat: flat_tokens.FlatSplit, eos_id: int) -> str:
    """Writes ``EOS doc EOS doc ...`` once beside the flat arrays; returns its path."""
    path = f"{flat.prefix}.gpt-eos{eos_id}.stream"
    if not os.path.exists(path):
        doc_token_starts = np.concatenate([[0], flat.sentence_ends])[flat.doc_sentences]
        eos = np.array([eos_id], flat.tokens.dtype).tobytes()
        with atomic_files.atomic_open(path, "wb") as f:
            for lo, hi in zip(doc_token_starts[:-1].tolist(), doc_token_starts[1:].tolist()):
                f.write(eos)
                f.write(np.asarray(flat.tokens[lo:hi]).tobytes())
    return path


class GptWindows(batched_source.BatchedSource):
    """Item ``i``: window ``i % len`` of the stream (windows are the same in every epoch)."""

    def __init__(self, stream_path: str, dtype: str, *, seq_len: int, eos_id: int,
                 document_boundaries: bool = False):
        super().__init__()
        self._args = (stream_path, dtype)
        self._kwargs = dict(seq_len=seq_len, eos_id=eos_id, document_boundaries=document_boundaries)
        self.stream = np.memmap(stream_path, dtype=np.dtype(dtype), mode="r")
        self.seq_len, self.eos_id, self.document_boundaries = seq_len, eos_id, document_boundaries
        n = (len(self.stream) - 1) // seq_len
        # Overlapping rows of T + 1 tokens, one per window: a batch gather copies whole rows.
        self.windows = np.lib.stride_tricks.as_strided(
            self.stream, shape=(n, seq_len + 1), strides=(seq_len * self.stream.itemsize, self.stream.itemsize),
            writeable=False)

    def __reduce__(self):
        return (_rebuild_gpt, (self._args, self._kwargs))

    def __len__(self) -> int:
        return len(self.windows)

    def __str__(self) -> str:
        return f"GptWindows(windows={len(self)}, seq_len={self.seq_len})"

    def examples(self, indices_B: np.ndarray) -> dict[str, np.ndarray]:
        """A batch of windows (leading dimension B) for dataset indices ``indices_B``."""
        rows_BxT1 = self.windows[np.asarray(indices_B, np.int64) % len(self)].astype(np.int32)
        out = {"input_ids": rows_BxT1[:, :-1], "targets": rows_BxT1[:, 1:]}
        if self.document_boundaries:
            out["segment_ids"], out["position_ids"] = self._documents(out["input_ids"])
        return out

    def _documents(self, ids_BxT: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # EOS is sparse: work per run (a document's piece inside a window), expanded with np.repeat;
        # dense scans (cumsum, maximum.accumulate) over B*T tokens cost several times more.
        B, T = ids_BxT.shape
        opens = (ids_BxT == self.eos_id).reshape(-1)
        opens[::T] = True  # every window opens a run, whether or not it starts with EOS
        run_start = np.flatnonzero(opens)
        run_len = np.diff(run_start, append=B * T)
        row_first_run = np.searchsorted(run_start, np.arange(B) * T)  # each row start opens a run
        runs_per_row = np.diff(row_first_run, append=len(run_start))
        seg_of_run = np.arange(len(run_start)) - np.repeat(row_first_run, runs_per_row) + 1
        seg = np.repeat(seg_of_run.astype(np.int32), run_len).reshape(B, T)
        pos = (np.arange(B * T, dtype=np.int32) - np.repeat(run_start.astype(np.int32), run_len)).reshape(B, T)
        return seg, pos


def _rebuild_gpt(args, kwargs) -> GptWindows:
    return GptWindows(*args, **kwargs)


def gpt_dataset(store_dir: str, split: str = "train", *, seq_len: int = 1024, seed: int = 0,
                document_boundaries: bool = False, max_position_embeddings: int | None = None,
                tokenizer=None, vocab_file: str | None = None, expected_fingerprint: str | None = None,
                cache_dir: str | None = None) -> GptWindows:
    """A Grain MapDataset of GPT windows: ``input_ids``, ``targets`` int32 [seq_len] (plus
    ``segment_ids``, ``position_ids`` with ``document_boundaries``). ``seed`` is accepted for symmetry
    with :func:`bert_dataset`; windows are deterministic and shuffling belongs to the pipeline.
    """
    del seed
    if seq_len < 1:
        raise ValueError(f"seq_len {seq_len} must be >= 1")
    configs.check_positions(seq_len, max_position_embeddings, "seq_len")
    store = token_store.TokenStore(store_dir)
    store_checks.check_tokenizer(store, tokenizer=tokenizer, vocab_file=vocab_file,
                                 expected_fingerprint=expected_fingerprint)
    eos_id = store_checks.special_id(store, "eos", "GPT training (it joins documents)")
    flat = flat_tokens.load(store, split, cache_dir)
    path = load_stream(flat, eos_id)
    ds = GptWindows(path, flat.tokens.dtype.str, seq_len=seq_len, eos_id=eos_id,
                    document_boundaries=document_boundaries)
    if len(ds) == 0:
        raise ValueError(f"split {split!r} of token store {store_dir} holds {len(ds.stream)} tokens with the "
                         f"EOS separators, too few for one window of seq_len {seq_len} (+1 target)")
    return ds
