"""Train-step throughput of our BERT / GPT-2 vs transformers' PyTorch models (+AdamW), in one process.

    python bench/models_vs_torch.py --model=bert   # BERT-small, B=16, T=128, P=20
    python bench/models_vs_torch.py --model=gpt2   # GPT-2 shape L4/H512, V=50257, B=8, T=256

Timings alternate between the two implementations so machine load affects both alike; the ratio is
the figure to read (fp32, CPU).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _jax_step(cfg, batch, dropout_impl):
    from bertgpt_jax import models
    from tests.model_params import random_params

    model = models.from_config(cfg)
    kw = {"masked_lm_positions": batch["masked_lm_positions"]} if cfg.is_bert else {}
    params = jax.tree.map(jnp.asarray, random_params(model, batch["input_ids"], std=0.02, **kw))
    tx = optax.adamw(1e-4, weight_decay=0.01)
    opt = tx.init(params)

    def loss_fn(p, b, rng):
        if cfg.is_bert:
            out = model.apply({"params": p}, b["input_ids"], attention_mask=b["input_mask"],
                              token_type_ids=b["segment_ids"], masked_lm_positions=b["masked_lm_positions"],
                              deterministic=False, rngs={"dropout": rng})
            mlm = optax.softmax_cross_entropy_with_integer_labels(out.mlm_logits, b["masked_lm_ids"]).mean()
            nsp = optax.softmax_cross_entropy_with_integer_labels(out.nsp_logits, b["next_sentence_labels"]).mean()
            return mlm + nsp
        out = model.apply({"params": p}, b["input_ids"], deterministic=False, rngs={"dropout": rng})
        return optax.softmax_cross_entropy_with_integer_labels(out.logits[:, :-1], b["input_ids"][:, 1:]).mean()

    def step(p, o, b, rng):
        loss, g = jax.value_and_grad(loss_fn)(p, b, rng)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    state = {"p": params, "o": opt, "rng": jax.random.key(0, impl=dropout_impl)}
    b = jax.tree.map(jnp.asarray, batch)

    def run():
        state["rng"], sub = jax.random.split(state["rng"])
        state["p"], state["o"], loss = step(state["p"], state["o"], b, sub)
        return float(loss)

    return run


def _torch_step(cfg, batch):
    import torch
    import transformers

    torch.manual_seed(0)
    if cfg.is_bert:
        model = transformers.BertForPreTraining(transformers.BertConfig(**cfg.to_hf_dict()))
    else:
        model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**cfg.to_hf_dict()))
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    t = {k: torch.tensor(np.asarray(v)).long() for k, v in batch.items()}

    def run():
        opt.zero_grad(set_to_none=True)
        if cfg.is_bert:
            out = model(t["input_ids"], attention_mask=t["input_mask"], token_type_ids=t["segment_ids"])
            # transformers computes logits at every position; the loss reads the masked ones.
            index = t["masked_lm_positions"][:, :, None].expand(-1, -1, cfg.vocab_size)
            logits = out.prediction_logits.gather(1, index)
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, cfg.vocab_size),
                                                     t["masked_lm_ids"].reshape(-1))
            loss = loss + torch.nn.functional.cross_entropy(out.seq_relationship_logits, t["next_sentence_labels"])
        else:
            loss = model(t["input_ids"], labels=t["input_ids"]).loss
        loss.backward()
        opt.step()
        return float(loss.detach())

    return run


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["bert", "gpt2"], default="bert")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dropout_impl", default="threefry2x32",
                    help="PRNG behind dropout: threefry2x32 | rbg | unsafe_rbg")
    ap.add_argument("--no_torch", action="store_true")
    args = ap.parse_args()

    from bertgpt_jax import configs

    rs = np.random.RandomState(0)
    if args.model == "bert":
        cfg = configs.get("bert-small")
        B, T, P = 16, 128, 20
        batch = dict(input_ids=rs.randint(1, cfg.vocab_size, (B, T)), input_mask=np.ones((B, T), np.int32),
                     segment_ids=(np.arange(T) >= T // 2)[None].repeat(B, 0).astype(np.int32),
                     masked_lm_positions=rs.randint(0, T, (B, P)), masked_lm_ids=rs.randint(1, cfg.vocab_size, (B, P)),
                     next_sentence_labels=rs.randint(0, 2, (B,)))
    else:
        cfg = configs.get("gpt2").replace(num_hidden_layers=4, hidden_size=512, num_attention_heads=8,
                                          intermediate_size=2048)
        B, T = 8, 256
        batch = dict(input_ids=rs.randint(0, cfg.vocab_size, (B, T)))
    batch = {k: np.asarray(v, np.int32) for k, v in batch.items()}
    impls = {"jax": _jax_step(cfg, batch, args.dropout_impl)}
    if not args.no_torch:
        import torch

        torch.set_num_threads(2)
        impls["torch"] = _torch_step(cfg, batch)
    for name, run in impls.items():
        t0 = time.perf_counter()
        run()
        run()
        print(f"{name}: warm-up (incl. compile) {time.perf_counter() - t0:.1f}s", flush=True)
    times = {k: [] for k in impls}
    for _ in range(args.rounds):
        for name, run in impls.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                run()
            times[name].append((time.perf_counter() - t0) / args.steps)
    tok = B * T
    for name, ts in times.items():
        print(f"{name}: {min(ts) * 1e3:.0f} ms/step (min of {args.rounds} rounds), {tok / min(ts):.0f} tokens/s")
    if "torch" in times:
        print(f"ratio jax/torch tokens/s: {min(times['torch']) / min(times['jax']):.2f}x")


if __name__ == "__main__":
    main()
