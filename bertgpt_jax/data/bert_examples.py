"""BERT pretraining examples (masked LM + next sentence), built as the original ``create_pretraining_data.py``.

``bert_dataset(store_dir, ...)`` returns a Grain ``MapDataset`` whose item ``i`` is one example, a dict of
fixed-shape numpy arrays with the original feature names::

    input_ids            int32 [T]   [CLS] A [SEP] B [SEP] then padding, with masked tokens replaced
    input_mask           int32 [T]   1 on real tokens, 0 on padding
    segment_ids          int32 [T]   0 on [CLS] A [SEP], 1 on B [SEP], 0 on padding
    masked_lm_positions  int32 [P]   ascending, padded with 0
    masked_lm_ids        int32 [P]   the original tokens at those positions, padded with 0
    masked_lm_weights    float32 [P] 1.0 for real predictions, 0.0 for padding
    next_sentence_labels int32 []    the original's convention: 1 = B is a random next, 0 = actual next

How instances are cut (per document, as the original): a target length of ``max_seq_length - 3``,
drawn once per document as a random length in [2, target] with probability ``short_seq_prob``; sentences
gather into a chunk until it reaches the target; A is a random number of the chunk's whole sentences; B
is the rest of the chunk, or, with probability 0.5 and always when the chunk has one sentence, a span of
a random other document (and the unused sentences of the chunk go back for the next chunk); the pair is
truncated one token at a time from the longer side (B on ties), front or back at random. ``dupe_factor``
passes over the documents give ``dupe_factor`` differently cut copies.

The cut (where A and B lie in the flat token array) is computed once and cached beside the store; masks
are computed on the fly from counter-based random numbers keyed by the example index. With
``dynamic_masking=False`` (static, as the original) an instance keeps the same mask in every epoch; with
``dynamic_masking=True`` (RoBERTa) item ``i + e * len(ds)`` is instance ``i`` masked afresh for epoch
``e``, so ``ds.repeat(n)`` and :func:`pipeline.make_iterator` mask every epoch differently.

:meth:`BertExamples.examples` builds a whole batch with vectorised numpy; that is what the pipeline calls.
"""

from __future__ import annotations

import array
import hashlib
import json
import os
import random
import uuid

import numpy as np

from bertgpt_jax import atomic_files, configs
from bertgpt_jax.data import (
    batched_source,
    counter_random,
    flat_tokens,
    masking,
    store_checks,
    token_store,
)

INSTANCE_FIELDS = ("a_start", "a_len", "b_start", "b_len", "is_random_next", "target_len")
_CUT_VERSION = 1  # bump when the cutting algorithm changes, so old caches are not reused


def truncated_counts(len_a: int, len_b: int, max_num_tokens: int) -> tuple[int, int]:
    """How many tokens the original ``truncate_seq_pair`` removes from A and from B, in closed form.

    It removes from the longer side (B when equal) one token at a time: first down to equal lengths,
    then alternately B, A, B, ...
    """
    excess = len_a + len_b - max_num_tokens
    if excess <= 0:
        return 0, 0
    gap = len_a - len_b
    first = min(abs(gap), excess)
    rest = excess - first
    cut_a = (first if gap > 0 else 0) + rest // 2
    cut_b = (first if gap <= 0 else 0) + (rest + 1) // 2
    return cut_a, cut_b


def cut_instances(flat: flat_tokens.FlatSplit, *, max_seq_length: int, short_seq_prob: float,
                  dupe_factor: int, seed: int) -> dict[str, np.ndarray]:
    """Where every instance's A and B lie in ``flat.tokens``: the original algorithm, document by document.

    Memory stays flat for corpora of billions of tokens: only the current document's sentence ends
    become Python ints, and instances collect in typed arrays (8 bytes a field, not a Python int).
    """
    rng = random.Random(seed)
    ends_np = flat.sentence_ends
    doc_sents = flat.doc_sentences.tolist()
    n_docs = len(doc_sents) - 1
    max_num_tokens = max_seq_length - 3
    typecodes = {"a_start": "q", "b_start": "q", "a_len": "i", "b_len": "i", "is_random_next": "b",
                 "target_len": "i"}
    out = {name: array.array(code) for name, code in typecodes.items()}

    for _ in range(dupe_factor):
        for d in range(n_docs):
            s_lo, s_hi = doc_sents[d], doc_sents[d + 1]
            # The document's sentence k spans bounds[k]..bounds[k + 1] in the flat token array.
            bounds = [int(ends_np[s_lo - 1]) if s_lo > 0 else 0] + ends_np[s_lo:s_hi].tolist()
            n_sent = s_hi - s_lo
            target = max_num_tokens
            if rng.random() < short_seq_prob:
                target = rng.randint(2, max_num_tokens)
            chunk_lo, chunk_len, i = 0, 0, 0
            while i < n_sent:
                chunk_len += bounds[i + 1] - bounds[i]
                if i == n_sent - 1 or chunk_len >= target:
                    n_chunk = i - chunk_lo + 1
                    a_end = rng.randint(1, n_chunk - 1) if n_chunk >= 2 else 1
                    a_lo, a_hi = bounds[chunk_lo], bounds[chunk_lo + a_end]
                    if n_chunk == 1 or rng.random() < 0.5:
                        is_random_next = 1
                        target_b = target - (a_hi - a_lo)
                        for _ in range(10):
                            r = rng.randint(0, n_docs - 1)
                            if r != d:
                                break
                        r_lo, r_hi = doc_sents[r], doc_sents[r + 1]
                        r_start = rng.randint(r_lo, r_hi - 1)
                        b_lo = int(ends_np[r_start - 1]) if r_start > 0 else 0
                        # Whole sentences from r_start until B reaches target_b (at least one sentence).
                        j = r_start + int(np.searchsorted(ends_np[r_start:r_hi - 1], b_lo + max(target_b, 1)))
                        b_hi = int(ends_np[j])
                        i -= n_chunk - a_end  # the unused sentences go back
                    else:
                        is_random_next = 0
                        b_lo, b_hi = a_hi, bounds[i + 1]
                    cut_a, cut_b = truncated_counts(a_hi - a_lo, b_hi - b_lo, max_num_tokens)
                    # Each removed token comes off the front or the back with probability 1/2.
                    front_a = rng.getrandbits(cut_a).bit_count() if cut_a else 0
                    front_b = rng.getrandbits(cut_b).bit_count() if cut_b else 0
                    out["a_start"].append(a_lo + front_a)
                    out["a_len"].append(a_hi - a_lo - cut_a)
                    out["b_start"].append(b_lo + front_b)
                    out["b_len"].append(b_hi - b_lo - cut_b)
                    out["is_random_next"].append(is_random_next)
                    out["target_len"].append(target)
                    chunk_lo, chunk_len = i + 1, 0
                i += 1
    dtypes = {"a_start": np.int64, "b_start": np.int64, "a_len": np.int32, "b_len": np.int32,
              "is_random_next": np.int8, "target_len": np.int32}
    return {name: np.frombuffer(out[name], dtypes[name]) if len(out[name]) else np.zeros(0, dtypes[name])
            for name in INSTANCE_FIELDS}


def load_instances(flat: flat_tokens.FlatSplit, *, max_seq_length: int, short_seq_prob: float,
                   dupe_factor: int, seed: int) -> str:
    """Cuts the instances once and caches them beside the flat arrays; returns the cache prefix."""
    params = {"v": _CUT_VERSION, "max_seq_length": max_seq_length, "short_seq_prob": short_seq_prob,
              "dupe_factor": dupe_factor, "seed": seed}
    key = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    prefix = f"{flat.prefix}.bert-{key}"
    if not os.path.exists(prefix + ".json"):
        cut = cut_instances(flat, max_seq_length=max_seq_length, short_seq_prob=short_seq_prob,
                            dupe_factor=dupe_factor, seed=seed)
        tmp = f".{uuid.uuid4().hex}.tmp"
        for name, array in cut.items():
            with open(f"{prefix}.{name}.npy{tmp}", "wb") as f:
                np.save(f, array)
            os.replace(f"{prefix}.{name}.npy{tmp}", f"{prefix}.{name}.npy")
        atomic_files.write_json(prefix + ".json", {**params, "instances": len(cut["a_start"])})
    return prefix


class BertExamples(batched_source.BatchedSource):
    """Item ``i``: instance ``i % len`` masked for epoch ``i // len`` (dynamic) or always alike (static)."""

    def __init__(self, flat: flat_tokens.FlatSplit, instances_prefix: str, *, max_seq_length: int,
                 max_predictions_per_seq: int, masked_lm_prob: float, dynamic_masking: bool, seed: int,
                 word_start_table: np.ndarray | None = None):
        super().__init__()
        self._args = (flat, instances_prefix)
        self._kwargs = dict(max_seq_length=max_seq_length, max_predictions_per_seq=max_predictions_per_seq,
                            masked_lm_prob=masked_lm_prob, dynamic_masking=dynamic_masking, seed=seed,
                            word_start_table=word_start_table)
        self.flat = flat
        self.instances = {name: np.load(f"{instances_prefix}.{name}.npy", mmap_mode="r")
                          for name in INSTANCE_FIELDS}
        self.max_seq_length = max_seq_length
        self.max_predictions_per_seq = max_predictions_per_seq
        self.masked_lm_prob = masked_lm_prob
        self.dynamic_masking = dynamic_masking
        self.seed = seed
        self.word_start_table = word_start_table
        info = flat.tokenizer_info
        self.vocab_size = int(info["vocab_size"])
        self.cls_id, self.sep_id = int(info["cls_token_id"]), int(info["sep_token_id"])
        self.mask_id = int(info["mask_token_id"])
        # A vocabulary without a pad token (byte-level BPE with added [CLS]/[SEP]/[MASK]) pads with id 0, which
        # input_mask marks; there 0 is a real token, masked like any other.
        has_pad = info.get("pad_token_id") is not None
        self.pad_id = int(info["pad_token_id"]) if has_pad else 0
        specials = {self.cls_id, self.sep_id, self.mask_id} | ({self.pad_id} if has_pad else set())
        self._specials = np.array(sorted(specials))

    def __reduce__(self):
        # Worker processes reopen the memory-mapped files instead of receiving their bytes.
        return (_rebuild_bert, (self._args, self._kwargs))

    def __len__(self) -> int:
        return len(self.instances["a_start"])

    def __str__(self) -> str:
        return f"BertExamples(instances={len(self)}, max_seq_length={self.max_seq_length})"

    def examples(self, indices_B: np.ndarray) -> dict[str, np.ndarray]:
        """A batch of examples (leading dimension B) for dataset indices ``indices_B``, vectorised."""
        indices_B = np.asarray(indices_B, np.int64)
        n = len(self)
        inst_B, epoch_B = indices_B % n, indices_B // n
        T = self.max_seq_length
        a_start = self.instances["a_start"][inst_B][:, None]
        a_len = self.instances["a_len"][inst_B].astype(np.int64)[:, None]
        b_start = self.instances["b_start"][inst_B][:, None]
        b_len = self.instances["b_len"][inst_B].astype(np.int64)[:, None]
        pos_T = np.arange(T)[None, :]
        in_a = (pos_T >= 1) & (pos_T <= a_len)
        in_b = (pos_T >= a_len + 2) & (pos_T < a_len + 2 + b_len)
        length_B = (a_len + b_len + 3)[:, 0]
        src_BxT = np.where(in_a, a_start + pos_T - 1, np.where(in_b, b_start + pos_T - a_len - 2, 0))
        ids_BxT = np.asarray(self.flat.tokens[src_BxT], np.int32)
        ids_BxT = np.where(in_a | in_b, ids_BxT, self.pad_id).astype(np.int32)
        ids_BxT[:, 0] = self.cls_id
        rows = np.arange(len(indices_B))
        ids_BxT[rows, a_len[:, 0] + 1] = self.sep_id
        ids_BxT[rows, length_B - 1] = self.sep_id
        input_mask = pos_T < length_B[:, None]
        segment_ids = (pos_T >= a_len + 2) & input_mask
        # A text token that happens to carry a special id is never masked either.
        candidates = (in_a | in_b) & ~np.isin(ids_BxT, self._specials)
        keys_B = counter_random.row_keys(self.seed, inst_B, epoch_B if self.dynamic_masking else 0)
        word_start = None if self.word_start_table is None else self.word_start_table[ids_BxT]
        masked = masking.mask_batch(ids_BxT, candidates, length_B, keys_B, masked_lm_prob=self.masked_lm_prob,
                                    max_predictions=self.max_predictions_per_seq, vocab_size=self.vocab_size,
                                    mask_token_id=self.mask_id, word_start_BxT=word_start)
        return {
            "input_ids": masked["input_ids"],
            "input_mask": input_mask.astype(np.int32),
            "segment_ids": segment_ids.astype(np.int32),
            "masked_lm_positions": masked["masked_lm_positions"],
            "masked_lm_ids": masked["masked_lm_ids"],
            "masked_lm_weights": masked["masked_lm_weights"],
            "next_sentence_labels": self.instances["is_random_next"][inst_B].astype(np.int32),
        }


def _rebuild_bert(args, kwargs) -> BertExamples:
    return BertExamples(*args, **kwargs)


def bert_dataset(store_dir: str, split: str = "train", *, max_seq_length: int = 128,
                 max_predictions_per_seq: int = 20, masked_lm_prob: float = 0.15, short_seq_prob: float = 0.1,
                 whole_word_mask: bool = False, dupe_factor: int = 1, dynamic_masking: bool = True,
                 seed: int = 12345, max_position_embeddings: int | None = None, tokenizer=None,
                 vocab_file: str | None = None, expected_fingerprint: str | None = None,
                 do_lower_case: bool | None = None, cache_dir: str | None = None) -> BertExamples:
    """A Grain MapDataset of BERT MLM+NSP examples from split ``split`` of the token store at ``store_dir``.

    Checks up front (clear ``ValueError``): the store's tokenizer against ``tokenizer``/``vocab_file``/
    ``expected_fingerprint``; ``max_seq_length`` against ``max_position_embeddings``;
    ``max_predictions_per_seq >= round(max_seq_length * masked_lm_prob)``; an empty store or split.
    ``dupe_factor`` (original default 10) makes that many differently cut copies; with static masking
    (``dynamic_masking=False``) they are the original's precomputed duplicates.
    """
    if max_seq_length < 5:
        raise ValueError(f"max_seq_length {max_seq_length} is too small: [CLS] A [SEP] B [SEP] needs >= 5")
    if not 0.0 < masked_lm_prob < 1.0:
        raise ValueError(f"masked_lm_prob {masked_lm_prob} must lie in (0, 1), e.g. 0.15")
    if not 0.0 <= short_seq_prob <= 1.0:
        raise ValueError(f"short_seq_prob {short_seq_prob} must lie in [0, 1], e.g. 0.1")
    if dupe_factor < 1:
        raise ValueError(f"dupe_factor {dupe_factor} must be >= 1")
    needed = int(np.rint(max_seq_length * masked_lm_prob))
    if max_predictions_per_seq < needed:
        raise ValueError(f"max_predictions_per_seq {max_predictions_per_seq} is too small for masked_lm_prob "
                         f"{masked_lm_prob} at max_seq_length {max_seq_length}: full sequences need "
                         f"round({max_seq_length} * {masked_lm_prob}) = {needed}; use >= {needed}")
    configs.check_positions(max_seq_length, max_position_embeddings, "max_seq_length")
    store = token_store.TokenStore(store_dir)
    store_checks.check_tokenizer(store, tokenizer=tokenizer, vocab_file=vocab_file,
                                 expected_fingerprint=expected_fingerprint, do_lower_case=do_lower_case)
    for name in ("cls", "sep", "mask"):
        store_checks.special_id(store, name, "BERT pretraining")
    flat = flat_tokens.load(store, split, cache_dir)
    prefix = load_instances(flat, max_seq_length=max_seq_length, short_seq_prob=short_seq_prob,
                            dupe_factor=dupe_factor, seed=seed)
    table = store_checks.word_start_table(store) if whole_word_mask else None
    return BertExamples(flat, prefix, max_seq_length=max_seq_length, max_predictions_per_seq=max_predictions_per_seq,
                        masked_lm_prob=masked_lm_prob, dynamic_masking=dynamic_masking, seed=seed,
                        word_start_table=table)
