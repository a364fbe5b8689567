"""Train-step throughput, side by side: our jitted JAX step vs transformers' PyTorch step (+ AdamW).

    python bench/bench_train_step.py [--steps 8] [--rounds 2] [--output results.json]

Shapes: BERT-small (L4/H512/A8, vocab 30522) at batch 16 x 128 with 20 masked positions, and the same
shape as GPT-2 (vocab 50257) at batch 8 x 256. fp32 on CPU. Each side runs in its own subprocess so its
peak memory (ru_maxrss) is its own; the JAX BERT process also times a plain jitted f32 matmul (2048^3)
after every step, the reference rate for the step's model FLOPs per second (median against median).
Timings on a shared machine drift: read the ratios. The JAX sides run with glibc's huge-page tunable where it
applies, as ``python -m bertgpt_jax.pretrain`` does (bertgpt_jax/host_memory.py); the torch sides run unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

# Runs from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BERT = dict(layers=4, hidden=512, heads=8, vocab=30522, batch=16, seq=128, preds=20)
GPT = dict(layers=4, hidden=512, heads=8, vocab=50257, batch=8, seq=256)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2]


def _time_steps(step, steps: int, warmup: int = 2, reference=None) -> tuple[float, float | None]:
    """Median seconds per step after ``warmup`` steps; ``step()`` must block until its work is done.

    With ``reference`` (a callable), it runs twice after every step and its second run is timed (the
    median comes second): interleaving makes load from other work on the machine hit both alike.
    """
    for _ in range(warmup):
        step()
        if reference is not None:
            reference()
    times, ref_times = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if reference is not None:
            reference()  # untimed: the first matmul after a step runs 20-40% slower (cold caches, idle threads)
            t0 = time.perf_counter()
            reference()
            ref_times.append(time.perf_counter() - t0)
    return _median(times), (_median(ref_times) if ref_times else None)


def run_jax(kind: str, steps: int, kernels: str = "auto") -> dict:
    import jax

    from bertgpt_jax import configs, host_memory, models, sharding, tasks
    from bertgpt_jax.training import optimizers, schedules
    from bertgpt_jax.training import state as state_lib
    from bertgpt_jax.training import step as step_lib
    from bertgpt_jax.training.inputs import place

    shape = BERT if kind == "bert" else GPT
    base = configs.get("bert-small" if kind == "bert" else "gpt2")
    cfg = base.replace(num_hidden_layers=shape["layers"], hidden_size=shape["hidden"],
                       num_attention_heads=shape["heads"], intermediate_size=4 * shape["hidden"],
                       vocab_size=shape["vocab"], kernels=kernels)
    cfg = models.resolve_kernels(cfg)
    preds = shape.get("preds", 1)
    task = tasks.task_for(cfg, tasks.PretrainingData(dataset="synthetic", max_seq_length=shape["seq"],
                                                     max_predictions_per_seq=preds))
    mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
    sched = schedules.warmup_then_decay(1e-4, 10_000, 100)
    opt = optimizers.make_optimizer("adamw", sched)
    _, shardings = state_lib.abstract_state(task, opt, mesh)
    state = state_lib.create_state(task, opt, mesh, 0, shardings=shardings)
    it = task.train_batches(shape["batch"], seed=0)
    batches = [place(next(it), mesh, shape["batch"]) for _ in range(2)]
    bs = step_lib.batch_shardings(mesh, batches[0])
    fn = step_lib.jit_train_step(step_lib.make_train_step(task, opt, sched), mesh, shardings, bs)
    box = {"state": state, "i": 0}

    def step():
        box["state"], m = fn(box["state"], batches[box["i"] % 2])
        box["i"] += 1
        m["loss"].block_until_ready()

    reference, n = None, 2048
    if kind == "bert":  # the reference rate: a plain jitted f32 matmul, timed after every step in this process
        a = jax.device_put(jax.numpy.ones((n, n), jax.numpy.float32), jax.devices()[0])
        matmul = jax.jit(lambda x: x @ x)

        def reference():
            matmul(a).block_until_ready()

    seconds, matmul_seconds = _time_steps(step, steps, reference=reference)
    tokens = shape["batch"] * shape["seq"]
    flops = task.flops_per_token() * tokens  # the work the step needs
    out = {"side": f"jax_{kind}", "kernels": cfg.kernels, "seconds_per_step": seconds, "tokens_per_sec": tokens / seconds,
           "model_gflops_per_sec": flops / seconds / 1e9, "peak_rss_mb": _peak_rss_mb(),
           "huge_pages": host_memory.TUNABLE in os.environ.get("GLIBC_TUNABLES", "")}
    if matmul_seconds is not None:
        out["matmul_gflops_per_sec"] = 2 * n ** 3 / matmul_seconds / 1e9
    return out


def run_torch(kind: str, steps: int) -> dict:
    import numpy as np
    import torch
    import transformers

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    shape = BERT if kind == "bert" else GPT
    B, T = shape["batch"], shape["seq"]
    rng = np.random.default_rng(0)
    if kind == "bert":
        config = transformers.BertConfig(vocab_size=shape["vocab"], hidden_size=shape["hidden"],
                                         num_hidden_layers=shape["layers"], num_attention_heads=shape["heads"],
                                         intermediate_size=4 * shape["hidden"])
        model = transformers.BertForPreTraining(config)
        ids = torch.tensor(rng.integers(5, shape["vocab"], (B, T)))
        labels = torch.full((B, T), -100)
        for b in range(B):
            pos = rng.choice(T, shape["preds"], replace=False)
            labels[b, pos] = ids[b, pos]
        inputs = dict(input_ids=ids, attention_mask=torch.ones(B, T, dtype=torch.long),
                      token_type_ids=torch.zeros(B, T, dtype=torch.long), labels=labels,
                      next_sentence_label=torch.tensor(rng.integers(0, 2, B)))
    else:
        config = transformers.GPT2Config(vocab_size=shape["vocab"], n_embd=shape["hidden"], n_layer=shape["layers"],
                                         n_head=shape["heads"], n_positions=1024)
        model = transformers.GPT2LMHeadModel(config)
        ids = torch.tensor(rng.integers(0, shape["vocab"], (B, T)))
        inputs = dict(input_ids=ids, labels=ids)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    seconds, _ = _time_steps(step, steps)
    return {"side": f"torch_{kind}", "seconds_per_step": seconds, "tokens_per_sec": B * T / seconds,
            "peak_rss_mb": _peak_rss_mb()}


def _subprocess(side: str, steps: int, kernels: str = "auto") -> dict:
    from bertgpt_jax import host_memory

    # Our side runs as the pretraining CLI runs it: with XLA's buffers on huge pages where the host allows it.
    # transformers' side runs as it runs by default.
    env = host_memory.with_huge_pages() if side.startswith("jax") and host_memory.wanted() else None
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--side", side, "--steps", str(steps),
                          "--kernels", kernels],
                         capture_output=True, text=True, check=False, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode != 0:
        raise RuntimeError(f"{side} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side (after 2 warmup steps)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds over the four sides; each keeps its best")
    parser.add_argument("--side", choices=["jax_bert", "torch_bert", "jax_gpt", "torch_gpt"], help=argparse.SUPPRESS)
    parser.add_argument("--output", help="also write the results as JSON here")
    parser.add_argument("--kernels", default="auto", choices=["auto", "xla", "cpu"],
                        help="our side's backend kernels (bertgpt_jax/models/kernels.py): auto picks cpu here; "
                             "xla is XLA's own autodiff, what TPUs run, for what the CPU kernels gain")
    args = parser.parse_args()
    if args.side:
        kind = args.side.split("_")[1]
        result = run_jax(kind, args.steps, args.kernels) if args.side.startswith("jax") else run_torch(kind, args.steps)
        print(json.dumps(result))
        return
    # Rounds alternate the four sides, and each side keeps its fastest round: the host's speed drifts
    # over minutes, and a slow spell during one side's turn would otherwise decide the ratio.
    r = {}
    for _ in range(args.rounds):
        for side in ("jax_bert", "torch_bert", "jax_gpt", "torch_gpt"):
            res = _subprocess(side, args.steps, args.kernels)
            if side not in r or res["tokens_per_sec"] > r[side]["tokens_per_sec"]:
                r[side] = res
    summary = {
        "bert_speedup_vs_torch": r["jax_bert"]["tokens_per_sec"] / r["torch_bert"]["tokens_per_sec"],
        "gpt_speedup_vs_torch": r["jax_gpt"]["tokens_per_sec"] / r["torch_gpt"]["tokens_per_sec"],
        "bert_model_flops_over_matmul": r["jax_bert"]["model_gflops_per_sec"] / r["jax_bert"]["matmul_gflops_per_sec"],
    }
    for side, res in r.items():
        print(f"{side:11s} {res['tokens_per_sec']:8.0f} tokens/s  {res['seconds_per_step'] * 1e3:7.0f} ms/step  "
              f"peak RSS {res['peak_rss_mb']:6.0f} MB"
              + (f"  model {res['model_gflops_per_sec']:.0f} GFLOP/s" if "model_gflops_per_sec" in res else "")
              + (f"  (matmul {res['matmul_gflops_per_sec']:.0f} GFLOP/s)" if "matmul_gflops_per_sec" in res else "")
              + ("  [huge pages]" if res.get("huge_pages") else ""))
    print(f"BERT: {summary['bert_speedup_vs_torch']:.2f}x torch (target >= 2x); model FLOP/s "
          f"{summary['bert_model_flops_over_matmul']:.0%} of a plain f32 matmul (target >= 80%)")
    print(f"GPT:  {summary['gpt_speedup_vs_torch']:.2f}x torch (target >= 1.2x)")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"results": r, "summary": summary}, f, indent=2)


if __name__ == "__main__":
    main()
