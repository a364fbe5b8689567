"""Fill-in-the-blank with the masked-LM head: the top-k tokens for each [MASK], and held-out sentences to try.

    blanks = held_out_blanks(store_dir, num_sentences=4)          # validation sentences, a few words masked
    preds = predict_blanks(model, params, blanks, top_k=5)  # per sentence, per [MASK]: (token, prob) x k
    print(format_predictions(blanks, preds, tokenizer))
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

MIN_TOKENS, MAX_TOKENS = 8, 40  # sentences short enough to read, long enough to give context


def held_out_blanks(store_dir: str, num_sentences: int = 4, mask_fraction: float = 0.15, seed: int = 0,
                    split: str = "validation") -> list[dict]:
    """Sentences from ``split`` of the token store (one from each of ``num_sentences`` documents spread over the
    split), with about ``mask_fraction`` of their one-piece words replaced by [MASK] (at least one). Each item:
    ``input_ids`` ([CLS] sentence [SEP], masked), ``positions`` and ``answers`` (the original ids)."""
    from bertgpt_jax.data import flat_tokens, token_store

    store = token_store.TokenStore(store_dir)
    info = store.tokenizer_info
    cls_id, sep_id, mask_id = (int(info[f"{n}_token_id"]) for n in ("cls", "sep", "mask"))
    specials = {int(v) for k, v in info.items() if k.endswith("_token_id") and v is not None}
    word_start = store.tokenizer().word_start_table()
    flat = flat_tokens.load(store, split)
    rng = np.random.default_rng(seed)
    ends, docs = flat.sentence_ends, flat.doc_sentences
    out = []
    for d in np.linspace(0, flat.num_documents - 1, num=min(num_sentences, flat.num_documents)).astype(int):
        for s in range(int(docs[d]), int(docs[d + 1])):
            lo = int(ends[s - 1]) if s > 0 else 0
            ids = np.asarray(flat.tokens[lo:int(ends[s])], np.int64)
            if not MIN_TOKENS <= len(ids) <= MAX_TOKENS:
                continue
            nxt = np.append(ids[1:], cls_id)
            # A blank is a whole word of one piece: it starts a word and the next token starts one too.
            ok = np.flatnonzero(word_start[ids] & word_start[nxt] & ~np.isin(ids, list(specials)))
            if len(ok) == 0:
                continue
            k = max(1, int(round(len(ids) * mask_fraction)))
            chosen = np.sort(rng.choice(ok, size=min(k, len(ok)), replace=False))
            masked = ids.copy()
            masked[chosen] = mask_id
            out.append({"input_ids": np.concatenate([[cls_id], masked, [sep_id]]).astype(np.int32),
                        "positions": (chosen + 1).astype(np.int32), "answers": ids[chosen].astype(np.int32)})
            break
    return out


def predict_blanks(model: Any, params: Any, blanks: Sequence[dict], top_k: int = 5) -> list[list[list[tuple[int, float]]]]:
    """For each item of ``blanks`` and each of its ``positions``: the ``top_k`` (token id, probability) pairs."""
    import jax
    import jax.numpy as jnp

    T = max(len(b["input_ids"]) for b in blanks)
    P = max(len(b["positions"]) for b in blanks)
    ids_BxT = np.zeros((len(blanks), T), np.int32)
    mask_BxT = np.zeros_like(ids_BxT)
    pos_BxP = np.zeros((len(blanks), P), np.int32)
    for i, b in enumerate(blanks):
        ids_BxT[i, :len(b["input_ids"])] = b["input_ids"]
        mask_BxT[i, :len(b["input_ids"])] = 1
        pos_BxP[i, :len(b["positions"])] = b["positions"]
    out = jax.jit(model.apply, static_argnames=("deterministic",))({"params": params}, jnp.asarray(ids_BxT), attention_mask=jnp.asarray(mask_BxT),
                      token_type_ids=jnp.zeros_like(ids_BxT), masked_lm_positions=jnp.asarray(pos_BxP),
                      deterministic=True)
    probs_BxPxV = np.asarray(jax.nn.softmax(out.mlm_logits.astype(jnp.float32), axis=-1))
    result = []
    for i, b in enumerate(blanks):
        rows = []
        for p in range(len(b["positions"])):
            top = np.argsort(-probs_BxPxV[i, p], kind="stable")[:top_k]
            rows.append([(int(t), float(probs_BxPxV[i, p, t])) for t in top])
        result.append(rows)
    return result


def format_predictions(blanks: Sequence[dict], predictions, tokenizer) -> str:
    """The masked sentences and, under each, every blank's answer and top-k guesses with probabilities."""
    lines = []
    for b, rows in zip(blanks, predictions):
        lines.append("  " + tokenizer.decode(b["input_ids"][1:-1]))
        for answer, row in zip(b["answers"], rows):
            guesses = ", ".join(f"{tokenizer.id_to_token(t)} {p:.2f}" for t, p in row)
            hit = "*" if row and row[0][0] == int(answer) else " "
            lines.append(f"   {hit} [MASK] = {tokenizer.id_to_token(int(answer))!r:14} top-{len(row)}: {guesses}")
    return "\n".join(lines)
