"""Masked-LM predictions for a whole batch at once, as BERT's ``create_masked_lm_predictions`` draws them.

Per example: ``num_to_predict = min(max_predictions, max(1, round(length * masked_lm_prob)))`` where
``length`` counts every real token ([CLS] and [SEP] included, as the original does); candidates are the
non-special tokens; of the chosen ones 80% become [MASK], 10% stay unchanged, 10% become a token drawn
uniformly from the whole vocabulary. Positions come out ascending, padded with 0 and weight 0.

Whole-word masking picks words in random order and skips a word that would overflow ``num_to_predict``
(the original's greedy rule), and takes the 80/10/10 decision once per word, not per piece as the
original does. A word is a word-start token and the continuation pieces after it; a continuation piece
right after [CLS]/[SEP] starts a word of its own.

All randomness comes from :mod:`counter_random` keyed by one uint64 per example.
"""

from __future__ import annotations

import numpy as np

from bertgpt_jax.data import counter_random

# Streams of counter_random: one independent sequence per purpose.
_SELECT, _DECIDE, _REPLACE = 0, 1, 2
MASK_PROB, KEEP_PROB = 0.8, 0.1  # the rest (0.1) is a random token


def num_to_predict(lengths_B: np.ndarray, masked_lm_prob: float, max_predictions: int) -> np.ndarray:
    """The original's count: ``min(max_predictions, max(1, round(length * masked_lm_prob)))``."""
    # np.rint rounds half to even, as Python 3's round() in the original.
    k_B = np.rint(np.asarray(lengths_B, np.float64) * masked_lm_prob).astype(np.int64)
    return np.minimum(max_predictions, np.maximum(1, k_B))


def mask_batch(input_ids_BxT: np.ndarray, candidates_BxT: np.ndarray, lengths_B: np.ndarray,
               keys_B: np.ndarray, *, masked_lm_prob: float, max_predictions: int, vocab_size: int,
               mask_token_id: int, word_start_BxT: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Masks a batch; returns ``input_ids`` (masked), ``masked_lm_positions``/``_ids``/``_weights``.

    ``candidates_BxT`` marks maskable tokens; ``word_start_BxT`` (whole-word masking) marks tokens that
    begin a word; ``keys_B`` are the per-example random keys (see ``counter_random.row_keys``).
    """
    ids_BxT = np.asarray(input_ids_BxT)
    cand_BxT = np.asarray(candidates_BxT, bool)
    B, T = ids_BxT.shape
    k_B = np.minimum(num_to_predict(lengths_B, masked_lm_prob, max_predictions), T)
    u_BxT = counter_random.uniform(keys_B, _SELECT, T)
    if word_start_BxT is None:
        score_BxT = np.where(cand_BxT, u_BxT, 2.0)
        kth_B = np.sort(score_BxT, axis=1)[np.arange(B), k_B - 1]
        chosen_BxT = cand_BxT & (score_BxT <= kth_B[:, None])
        start_BxT = None
    else:
        chosen_BxT, start_BxT = _choose_words(cand_BxT, np.asarray(word_start_BxT, bool), u_BxT, k_B)

    # Chosen positions first, in ascending order (stable sort of "not chosen").
    P = max_predictions
    order_BxT = np.argsort(~chosen_BxT, axis=1, kind="stable")
    if P > T:
        order_BxT = np.pad(order_BxT, ((0, 0), (0, P - T)))
    pos_BxP = order_BxT[:, :P]
    valid_BxP = np.arange(P)[None, :] < chosen_BxT.sum(axis=1)[:, None]
    rows_BxP = np.broadcast_to(np.arange(B)[:, None], (B, P))
    # The 80/10/10 draw sits at the position itself, or at its word's first piece (one decision per word).
    decide_at = pos_BxP if start_BxT is None else start_BxT[rows_BxP, pos_BxP]
    decide_BxP = counter_random.uniform(keys_B, _DECIDE, decide_at)
    replace_BxP = counter_random.integers(keys_B, _REPLACE, pos_BxP, vocab_size)
    original_BxP = ids_BxT[rows_BxP, pos_BxP]
    shown_BxP = np.where(decide_BxP < MASK_PROB, mask_token_id,
                         np.where(decide_BxP < MASK_PROB + KEEP_PROB, original_BxP, replace_BxP))
    out_ids_BxT = ids_BxT.copy()
    out_ids_BxT[rows_BxP[valid_BxP], pos_BxP[valid_BxP]] = shown_BxP[valid_BxP]
    return {
        "input_ids": out_ids_BxT,
        "masked_lm_positions": np.where(valid_BxP, pos_BxP, 0).astype(np.int32),
        "masked_lm_ids": np.where(valid_BxP, original_BxP, 0).astype(np.int32),
        "masked_lm_weights": valid_BxP.astype(np.float32),
    }


def _choose_words(cand_BxT: np.ndarray, word_start_BxT: np.ndarray, u_BxT: np.ndarray,
                  k_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy whole-word choice in random word order; returns (chosen tokens, first piece of each token's word)."""
    B, T = cand_BxT.shape
    pos_T = np.arange(T)
    prev_cand_BxT = np.zeros_like(cand_BxT)
    prev_cand_BxT[:, 1:] = cand_BxT[:, :-1]
    starts_BxT = cand_BxT & (word_start_BxT | ~prev_cand_BxT)
    start_BxT = np.maximum.accumulate(np.where(starts_BxT, pos_T, 0), axis=1)
    rows_BxT = np.broadcast_to(np.arange(B)[:, None] * T, (B, T))
    word_len_BxT = np.bincount((rows_BxT + start_BxT)[cand_BxT], minlength=B * T).reshape(B, T)

    order_BxT = np.argsort(np.where(starts_BxT, u_BxT, 2.0), axis=1)
    len_sorted_BxT = np.take_along_axis(word_len_BxT, order_BxT, axis=1)
    is_word_sorted_BxT = np.take_along_axis(starts_BxT, order_BxT, axis=1)
    count_B = np.zeros(B, np.int64)
    take_sorted_BxT = np.zeros((B, T), bool)
    words_B = starts_BxT.sum(axis=1)
    for r in range(int(words_B.max(initial=0))):
        fits_B = is_word_sorted_BxT[:, r] & (count_B + len_sorted_BxT[:, r] <= k_B)
        count_B += np.where(fits_B, len_sorted_BxT[:, r], 0)
        take_sorted_BxT[:, r] = fits_B
        # Rows that are full (or out of words) take nothing more; stop once all of them are.
        if r % 4 == 3 and np.all((count_B >= k_B) | (words_B <= r + 1)):
            break
    take_start_BxT = np.zeros((B, T), bool)
    np.put_along_axis(take_start_BxT, order_BxT, take_sorted_BxT, axis=1)
    chosen_BxT = cand_BxT & np.take_along_axis(take_start_BxT, start_BxT, axis=1)
    return chosen_BxT, start_BxT
