"""Compiles every TPU recipe in experiments/ for the slice its header states and writes the per-chip table.

    python bench/bench_compile_recipes.py [--recipes bert_base_adamw,gpt2_124m] [--out bench/compile_recipes.md]

Each recipe's train step is compiled exactly as ``--compile_only`` compiles it (libtpu on this host, no TPU),
one after another; the table is rewritten after each recipe, so a partial run keeps what it finished, and
``--out``'s ``.jsonl`` twin keeps every report's figures. BERT-base takes ~5-20 minutes per recipe on 2 CPU
cores, BERT-large and GPT-2 XL longer: run it at low priority (``nice -n 19``) when the host is shared.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # libtpu compiles; it is not this process's backend
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Smallest first, so a run cut short still covers the most recipes.
ORDER = ("bert_base_adamw", "bert_base_phase2_lamb", "bert_base_phase1_lamb", "gpt2_124m",
         "bert_large_phase1_lamb", "gpt2_medium", "bert_large_phase2_lamb", "gpt2_xl")
SLICE_RE = re.compile(r"^# Hardware: TPU (v[0-9a-z]+-\d+)", re.MULTILINE)


def stated_slice(path: str) -> str | None:
    """The TPU slice a recipe's ``# Hardware:`` line names, or None for CPU demos."""
    m = SLICE_RE.search(open(path, encoding="utf-8").read())
    return m.group(1) if m else None


def load_recipe(path: str):
    """``(TrainConfig, PretrainingData)`` of a flagfile, parsed by pretrain's own flags."""
    from bertgpt_jax import cli, pretrain
    from bertgpt_jax.tasks.pretraining import PretrainingData
    from bertgpt_jax.training.config import TrainConfig

    pretrain.F.unparse_flags()
    cwd = os.getcwd()
    os.chdir(ROOT)  # flagfiles name paths relative to the repository root
    try:
        pretrain.F(["pretrain", f"--flagfile={path}"])
        return cli.from_flags(TrainConfig, pretrain.F), cli.from_flags(PretrainingData, pretrain.F)
    finally:
        os.chdir(cwd)
        pretrain.F.unparse_flags()


def compile_recipe(path: str):
    from bertgpt_jax import tasks
    from bertgpt_jax.training import aot, config

    train, data = load_recipe(path)
    task = tasks.task_for(config.model_config(train, platform="tpu"), data)
    return aot.compile_train_step(train, task, stated_slice(path), check_fit=False)


def table(rows: list[dict]) -> str:
    g = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
    lines = ["| recipe | slice (chips) | mesh data x fsdp x tensor | params | state GiB/chip | activations GiB/chip "
             "| peak / HBM GiB | TFLOP per step | bound s/step (compute, HBM) | compile s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        mesh = " x ".join(str(v) for v in r["mesh"].values())
        lines.append(
            f"| {r['recipe']} | {r['slice']} ({r['chips']}) | {mesh} | {r['params'] / 1e6:.0f}M "
            f"| {g(r['param_bytes'] + r['opt_state_bytes'])} | {g(r['temp_bytes'])} "
            f"| {g(r['peak_bytes'])} / {g(r['hbm_bytes'])}{'' if r['fits'] else ' (does not fit)'} "
            f"| {r['flops_per_step'] / 1e12:,.0f} | {r['roofline_seconds']:.3f} ({r['compute_seconds']:.3f}, "
            f"{r['memory_seconds']:.3f}) | {r['compile_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", default="", help="Comma-separated recipe names (default: every TPU recipe).")
    parser.add_argument("--from_jsonl", default="", help="Only render the table from an earlier run's .jsonl.")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "compile_recipes.md"),
                        help="Markdown table to write (rewritten after each recipe).")
    args = parser.parse_args()
    if args.from_jsonl:
        from bertgpt_jax import accelerators

        rows = [json.loads(line) for line in open(args.from_jsonl, encoding="utf-8")]
        for r in rows:  # records written before the two bounds were recorded
            chip = accelerators.parse_slice(r["slice"]).chip
            r.setdefault("compute_seconds", r["flops_per_step"] / r["chips"] / chip.peak_bf16_flops)
            r.setdefault("memory_seconds", r["bytes_accessed_per_chip"] * r["grad_accum_steps"] / chip.hbm_bandwidth)
        print(table(rows), end="")
        return
    paths = {os.path.basename(p)[:-len(".flags")]: p for p in glob.glob(os.path.join(ROOT, "experiments", "*.flags"))}
    names = [n for n in args.recipes.split(",") if n] or \
        sorted((n for n in paths if stated_slice(paths[n])), key=lambda n: ORDER.index(n) if n in ORDER else 99)
    unknown = [n for n in names if n not in paths or not stated_slice(paths[n])]
    if unknown:
        sys.exit(f"bench_compile_recipes: not TPU recipes in experiments/: {unknown}; known: "
                 f"{sorted(n for n in paths if stated_slice(paths[n]))}")
    import jax

    from bertgpt_jax.training import aot

    rows, failed = [], []
    jsonl = os.path.splitext(args.out)[0] + ".jsonl"
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name} on {stated_slice(paths[name])} ...", flush=True)
        t0 = time.perf_counter()
        try:
            report = compile_recipe(paths[name])
        except aot.DoesNotFit as e:  # XLA's own out-of-memory: the recipe as stated cannot run on its slice
            print(f"  DOES NOT FIT ({time.perf_counter() - t0:.0f} s): {e}", flush=True)
            failed.append((name, str(e)))
            continue
        print(report.format(), f"\n  ({time.perf_counter() - t0:.0f} s in all)", flush=True)
        rows.append({"recipe": name, **report.as_dict()})
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table(rows))
        with open(jsonl, "a", encoding="utf-8") as f:
            f.write(json.dumps({"recipe": name, **{k: v for k, v in report.as_dict().items()}}) + "\n")
        jax.clear_caches()
    print(table(rows))
    for name, why in failed:
        print(f"{name}: does not fit its stated slice: {why}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
