"""Fine-tuning, side by side: (1) the sequence-classification train step against transformers'
``BertForSequenceClassification`` + AdamW, (2) SQuAD post-processing against the original's Python loop.

    python bench/bench_finetune.py [--part step|squad|both] [--steps 8] [--features 10000]

(1) BERT-small shape (L4/H512/A8, vocab 30522), batch 32 x 128, fp32, each side in its own subprocess so its peak
memory (ru_maxrss) is its own; median seconds per step after warm-up. (2) n-best post-processing (n_best 20,
max_answer_length 30) of ``--features`` windows of 384 tokens with random logits, one window per question:
``data.squad.write_predictions`` against a transcription of the original ``run_squad.py`` loop (sorted() for the
top-n, nested loops over start x end); both must give the same predictions. Read the ratios: absolute times drift
on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPE = dict(layers=4, hidden=512, heads=8, vocab=30522, batch=32, seq=128, labels=2)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _time(step, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return _median(times)


def run_jax(steps: int) -> dict:
    import jax
    import numpy as np

    from bertgpt_jax import configs, models, sharding
    from bertgpt_jax.tasks.classification import SequenceClassification
    from bertgpt_jax.training import optimizers, schedules
    from bertgpt_jax.training import state as state_lib
    from bertgpt_jax.training import step as step_lib
    from bertgpt_jax.training.inputs import place

    s = SHAPE
    cfg = models.resolve_kernels(configs.get("bert-small").replace(
        num_hidden_layers=s["layers"], hidden_size=s["hidden"], num_attention_heads=s["heads"],
        intermediate_size=4 * s["hidden"], vocab_size=s["vocab"]))
    rng = np.random.default_rng(0)
    n = s["batch"] * 2
    feats = {"input_ids": rng.integers(5, s["vocab"], (n, s["seq"])).astype(np.int32),
             "input_mask": np.ones((n, s["seq"]), np.int32), "segment_ids": np.zeros((n, s["seq"]), np.int32),
             "label_ids": rng.integers(0, s["labels"], n).astype(np.int32)}
    task = SequenceClassification(cfg, s["labels"], s["seq"], feats)
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    sched = schedules.warmup_then_decay(5e-5, 10_000, 100)
    opt = optimizers.make_optimizer("adamw", sched)
    _, shardings = state_lib.abstract_state(task, opt, mesh)
    state = state_lib.create_state(task, opt, mesh, 0, shardings=shardings)
    it = task.train_batches(s["batch"], seed=0)
    batches = [place(next(it), mesh, s["batch"]) for _ in range(2)]
    fn = step_lib.jit_train_step(step_lib.make_train_step(task, opt, sched), mesh, shardings,
                                 step_lib.batch_shardings(mesh, batches[0]))
    box = {"state": state, "i": 0}

    def step():
        box["state"], m = fn(box["state"], batches[box["i"] % 2])
        box["i"] += 1
        m["loss"].block_until_ready()

    sec = _time(step, steps)
    return {"side": "jax", "kernels": cfg.kernels, "seconds_per_step": sec,
            "tokens_per_sec": s["batch"] * s["seq"] / sec, "peak_rss_mb": _peak_rss_mb()}


def run_torch(steps: int) -> dict:
    import numpy as np
    import torch
    import transformers

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    s = SHAPE
    config = transformers.BertConfig(vocab_size=s["vocab"], hidden_size=s["hidden"], num_hidden_layers=s["layers"],
                                     num_attention_heads=s["heads"], intermediate_size=4 * s["hidden"],
                                     num_labels=s["labels"])
    model = transformers.BertForSequenceClassification(config).train()
    rng = np.random.default_rng(0)
    B, T = s["batch"], s["seq"]
    inputs = dict(input_ids=torch.tensor(rng.integers(5, s["vocab"], (B, T))),
                  attention_mask=torch.ones(B, T, dtype=torch.long), token_type_ids=torch.zeros(B, T, dtype=torch.long),
                  labels=torch.tensor(rng.integers(0, s["labels"], B)))
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    sec = _time(step, steps)
    return {"side": "torch", "seconds_per_step": sec, "tokens_per_sec": B * T / sec, "peak_rss_mb": _peak_rss_mb()}


# ---- SQuAD post-processing -------------------------------------------------------------------------------


def _basic_tokenize_original(text: str, do_lower_case: bool = True) -> list[str]:
    """The original BasicTokenizer, character by character (what the original's get_final_text runs)."""
    import unicodedata

    from bertgpt_jax.data import squad

    chars = []
    for c in text:
        cp = ord(c)
        if cp == 0 or cp == 0xFFFD or (unicodedata.category(c).startswith("C") and c not in "\t\n\r"):
            continue
        if squad.is_whitespace(c) or unicodedata.category(c) == "Zs":
            chars.append(" ")
        elif squad._is_chinese_char(cp):
            chars.append(f" {c} ")
        else:
            chars.append(c)
    out = []
    for token in "".join(chars).split():
        if do_lower_case:
            token = "".join(ch for ch in unicodedata.normalize("NFD", token.lower()) if unicodedata.category(ch) != "Mn")
        piece = ""
        for ch in token:
            if squad._is_punctuation(ch):
                if piece:
                    out.append(piece)
                out.append(ch)
                piece = ""
            else:
                piece += ch
        if piece:
            out.append(piece)
    return out


def _get_final_text_original(pred_text: str, orig_text: str, do_lower_case: bool) -> str:
    from bertgpt_jax.data import squad

    saved = squad.basic_tokenize
    squad.basic_tokenize = _basic_tokenize_original
    try:
        return squad.get_final_text(pred_text, orig_text, do_lower_case)
    finally:
        squad.basic_tokenize = saved


def original_loop(examples, features, start_logits, end_logits, n_best_size=20, max_answer_length=30):
    """The original run_squad.py's candidate search and n-best selection, transcribed (v1.1, text mapping
    by the same get_final_text)."""
    def best_indexes(logits):
        return [i for i, _ in sorted(enumerate(logits), key=lambda x: x[1], reverse=True)[:n_best_size]]

    by_example = {}
    for f, e in enumerate(features.example_index):
        by_example.setdefault(e, []).append(f)
    out = {}
    for ex_index, ex in enumerate(examples):
        prelim = []
        for f in by_example[ex_index]:
            s_log, e_log = start_logits[f].tolist(), end_logits[f].tolist()
            tokens, to_orig, max_ctx = features.tokens[f], features.token_to_orig_map[f], features.token_is_max_context[f]
            for s in best_indexes(s_log):
                for e in best_indexes(e_log):
                    if s >= len(tokens) or e >= len(tokens) or s not in to_orig or e not in to_orig:
                        continue
                    if not max_ctx.get(s, False) or e < s or e - s + 1 > max_answer_length:
                        continue
                    prelim.append((f, s, e, s_log[s], e_log[e]))
        prelim.sort(key=lambda p: p[3] + p[4], reverse=True)
        seen, nbest = set(), []
        for f, s, e, sl, el in prelim:
            if len(nbest) >= n_best_size:
                break
            to_orig = features.token_to_orig_map[f]
            tok_text = " ".join(features.pieces[f][s:e + 1]).replace(" ##", "").replace("##", "")
            text = _get_final_text_original(" ".join(tok_text.split()),
                                            " ".join(ex.doc_tokens[to_orig[s]:to_orig[e] + 1]), True)
            if text in seen:
                continue
            seen.add(text)
            nbest.append(text)
        out[ex.qas_id] = nbest[0] if nbest else "empty"
    return out


def run_squad_bench(num_features: int) -> dict:
    import numpy as np

    from bertgpt_jax.data import squad

    rng = np.random.default_rng(0)
    T, query = 384, 12
    words = [f"w{i}" for i in range(3000)]
    examples, f = [], squad.SquadFeatures({}, [], [], [], [])
    f.pieces = []
    for i in range(num_features):
        n_ctx = int(rng.integers(200, T - query - 3))
        doc = [words[j] for j in rng.integers(0, len(words), n_ctx)]
        examples.append(squad.SquadExample(f"q{i}", "?", doc))
        ids = list(range(query + 2)) + list(range(100, 100 + n_ctx)) + [1]
        f.example_index.append(i)
        f.tokens.append(ids)
        f.pieces.append(["[CLS]"] + ["q"] * query + ["[SEP]"] + doc + ["[SEP]"])
        f.token_to_orig_map.append({query + 2 + k: k for k in range(n_ctx)})
        f.token_is_max_context.append({query + 2 + k: True for k in range(n_ctx)})
    start = rng.normal(size=(num_features, T)).astype(np.float32)
    end = rng.normal(size=(num_features, T)).astype(np.float32)
    lookup = {}
    for ids, pieces in zip(f.tokens, f.pieces):
        lookup.update(zip(ids, pieces))
    t0 = time.perf_counter()
    ours, _, _ = squad.write_predictions(examples, f, start, end, id_to_token=lambda t: lookup[t])
    t_ours = time.perf_counter() - t0
    mem_ours = _peak_rss_mb()
    t0 = time.perf_counter()
    ref = original_loop(examples, f, start, end)
    t_ref = time.perf_counter() - t0
    same = sum(ours[q] == ref[q] for q in ref)
    return {"features": num_features, "ours_seconds": t_ours, "original_loop_seconds": t_ref,
            "ratio": t_ref / t_ours, "same_predictions": f"{same}/{len(ref)}", "peak_rss_mb": _peak_rss_mb(),
            "peak_rss_mb_after_ours": mem_ours}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=("step", "squad", "both"), default="both")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--features", type=int, default=10000)
    p.add_argument("--side", choices=("jax", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--output", default=None)
    a = p.parse_args()
    if a.side:
        print(json.dumps(run_jax(a.steps) if a.side == "jax" else run_torch(a.steps)))
        return
    results = {}
    if a.part in ("squad", "both"):
        results["squad_postprocessing"] = run_squad_bench(a.features)
        print(json.dumps(results["squad_postprocessing"]), flush=True)
    if a.part in ("step", "both"):
        from bertgpt_jax import host_memory

        sides = {}
        for side in ("jax", "torch"):
            # Our side runs as the fine-tuning CLIs run it: XLA's buffers on huge pages where the host allows it.
            env = host_memory.with_huge_pages() if side == "jax" and host_memory.wanted() else None
            proc = subprocess.run([sys.executable, __file__, f"--side={side}", f"--steps={a.steps}"],
                                  capture_output=True, text=True, check=True, env=env)
            sides[side] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(sides[side]), flush=True)
        sides["ratio"] = sides["jax"]["tokens_per_sec"] / sides["torch"]["tokens_per_sec"]
        results["classifier_step"] = sides
        print(f"classifier step: ours / transformers = {sides['ratio']:.2f}x", flush=True)
    if a.output:
        with open(a.output, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
