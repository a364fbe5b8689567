"""Run metrics: console lines, ``metrics.jsonl``, TensorBoard events, a loss-curve PNG, MFU."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from absl import logging

import jax
import jax.numpy as jnp
import numpy as np

# Dense bf16 peak FLOP/s per chip (vendor figures); other devices are measured with a matmul.
PEAK_FLOPS = {
    "TPU v2": 45e12, "TPU v3": 123e12, "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12,
    "TPU v5p": 459e12, "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA A100": 312e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA L4": 121e12,
}


def measured_matmul_flops(n: int = 1024, repeats: int = 5, dtype=jnp.float32) -> float:
    """FLOP/s of a plain jitted n x n matmul on the first device: the reference rate for CPU MFU."""
    device = jax.local_devices()[0]
    a = jax.device_put(jnp.ones((n, n), dtype), device)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def peak_flops_per_device() -> tuple[float, str]:
    """(peak FLOP/s of one device, where the figure comes from)."""
    kind = jax.local_devices()[0].device_kind
    for name, flops in PEAK_FLOPS.items():
        if kind.startswith(name):
            return flops, f"{kind} datasheet"
    # Simulated CPU devices share the host's cores, so the host rate is the peak of all of them.
    rate = measured_matmul_flops()
    if jax.local_devices()[0].platform == "cpu":
        rate /= jax.local_device_count()
    return rate, f"measured f32 matmul on {kind}"


def bytes_of(tree: Any) -> int:
    return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def bytes_per_device(tree: Any) -> int:
    """Bytes of ``tree`` held by the most loaded addressable device."""
    per: dict = {}
    for x in jax.tree.leaves(tree):
        for shard in x.addressable_shards:
            per[shard.device] = per.get(shard.device, 0) + shard.data.size * shard.data.dtype.itemsize
    return max(per.values()) if per else 0


class MetricsWriter:
    """Writes records to ``metrics.jsonl`` and TensorBoard (process 0 only) and console lines.

    A resumed run calls :meth:`supersede_after` with the step it resumed from: the records of steps after it
    (logged before the interruption, and now redone) are dropped, so every step has one record. A torn last
    line (a crash mid-write) is ended before the next record is appended.
    """

    def __init__(self, output_dir: str, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled and jax.process_index() == 0
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self._file = None
        self._tb = None
        if self.enabled:
            os.makedirs(output_dir, exist_ok=True)
            _end_torn_line(self.path)
            self._file = open(self.path, "a", encoding="utf-8")
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(output_dir, "tensorboard"))

    def write(self, step: int, record: dict) -> None:
        if not self.enabled:
            return
        clean = {"step": int(step)}
        for k, v in record.items():
            v = float(v) if isinstance(v, (np.floating, np.integer, float, int, jax.Array, np.ndarray)) else v
            clean[k] = v
        self._file.write(json.dumps(clean) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in clean.items():
                if k != "step" and isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def supersede_after(self, step: int) -> int:
        """Drops the records of steps after ``step`` (work a resumed run redoes). Returns how many."""
        if not self.enabled or not os.path.exists(self.path):
            return 0
        records = read_jsonl(self.path)
        kept = [r for r in records if isinstance(r.get("step"), int) and r["step"] <= step]
        if len(kept) == len(records) and _ends_with_newline(self.path):
            return 0
        from bertgpt_jax import atomic_files

        self._file.close()
        with atomic_files.atomic_open(self.path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        self._file = open(self.path, "a", encoding="utf-8")
        if len(records) > len(kept):
            logging.info("%s: dropped %d records after step %d (redone by this run)", self.path,
                         len(records) - len(kept), step)
        return len(records) - len(kept)

    def recorded(self, step: int, prefix: str) -> dict:
        """The figures named ``prefix...`` recorded for ``step`` (empty when there are none)."""
        if not self.enabled or not os.path.exists(self.path):
            return {}
        out = {}
        for r in read_jsonl(self.path):
            if r.get("step") == step:
                out.update({k: v for k, v in r.items() if k.startswith(prefix)})
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _ends_with_newline(path: str) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() == 0:
            return True
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _end_torn_line(path: str) -> None:
    """Ends a last line that a crash left without its newline, so the next record starts on its own line."""
    if os.path.exists(path) and not _ends_with_newline(path):
        logging.warning("%s: the last line is incomplete (a crash mid-write?); it is ended and skipped", path)
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n")


def read_jsonl(path: str) -> list[dict]:
    """The records of a ``metrics.jsonl``; a line that is not JSON (a record torn by a crash) is skipped
    with a warning that names the file and line."""
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except ValueError as e:
                logging.warning("%s line %d is not a complete JSON record (%s); skipped", path, n, e)
    return out


def format_line(step: int, record: dict) -> str:
    parts = [f"step {step}"]
    for key, fmt in (("train/loss", "loss {:.4f}"), ("train/learning_rate", "lr {:.2e}"),
                     ("train/grad_norm", "gnorm {:.3f}"), ("train/tokens_per_sec", "{:.0f} tok/s"),
                     ("train/step_time", "{:.3f} s/step"), ("train/mfu", "MFU {:.1%}")):
        if key in record:
            parts.append(fmt.format(record[key]))
    evals = [f"{k} {v:.4f}" for k, v in record.items() if k.startswith("eval/")]
    return " | ".join(parts + evals)


def smoothed(values, weight: float = 0.8) -> list[float]:
    """Exponential moving average with TensorBoard's debiasing: ``ema_t / (1 - weight^t)``."""
    out, ema = [], 0.0
    for t, v in enumerate(values, 1):
        ema = weight * ema + (1.0 - weight) * v
        out.append(ema / (1.0 - weight ** t))
    return out


def curves(records: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """What the loss-curve figure draws: raw and smoothed train loss, eval loss, and every eval accuracy (or
    perplexity when there is none), each as (step, value) pairs."""
    train = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
    out = {"train loss": train,
           "train loss (smoothed)": list(zip([s for s, _ in train], smoothed([v for _, v in train]))),
           "eval loss": [(r["step"], r["eval/loss"]) for r in records if "eval/loss" in r]}
    keys = sorted({k for r in records for k in r if k.startswith("eval/") and k.endswith("accuracy")})
    if not keys and any("eval/perplexity" in r for r in records):
        keys = ["eval/perplexity"]
    for k in keys:
        out[k] = [(r["step"], r[k]) for r in records if k in r]
    return out


def plot_loss_curve(metrics_path: str, png_path: str) -> bool:
    """Loss against step (raw and smoothed train, eval) beside the eval metrics, written with the Agg backend.
    False when nothing to plot."""
    records = read_jsonl(metrics_path) if os.path.exists(metrics_path) else []
    c = curves(records)
    if not c["train loss"] and not c["eval loss"]:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_eval) = plt.subplots(1, 2, figsize=(12, 4))
    if c["train loss"]:
        ax.plot(*zip(*c["train loss"]), alpha=0.35, label="train loss")
        ax.plot(*zip(*c["train loss (smoothed)"]), label="train loss (smoothed)")
    if c["eval loss"]:
        ax.plot(*zip(*c["eval loss"]), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    metric_keys = [k for k in c if k.startswith("eval/")]
    for k in metric_keys:
        ax_eval.plot(*zip(*c[k]), "o-", label=k)
    ax_eval.set_xlabel("step")
    ax_eval.set_ylabel("perplexity" if metric_keys == ["eval/perplexity"] else "accuracy")
    ax_eval.set_title("evaluation" if metric_keys else "evaluation (none yet)")
    ax_eval.grid(alpha=0.3)
    if metric_keys:
        ax_eval.legend()
    fig.tight_layout()
    tmp = png_path + ".tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, png_path)
    return True
