"""Pretrain BERT (MLM + NSP) or GPT-2 (causal LM): ``python -m bertgpt_jax.pretrain --flagfile=...``.

Flag names follow the original ``run_pretraining.py`` where the meaning is the same. A run resumes by
itself from the latest checkpoint in ``--output_dir``; SIGTERM saves a checkpoint and exits cleanly.
Examples: ``experiments/bert_demo.flags`` (CPU, minutes), ``experiments/bert_base_*.flags`` (TPU pods).
``--compile_only --topology=v4-32`` compiles the step for that TPU slice on this host and prints its memory
and FLOPs report instead of training (``bertgpt_jax/training/aot.py``).
On a CPU-only host the process restarts itself once with glibc's huge-page tunable for XLA's buffers
(``bertgpt_jax/host_memory.py``; ``BERTGPT_JAX_NO_HUGE_PAGES=1`` turns it off); never on TPU or GPU hosts.
"""

from __future__ import annotations

if __name__ == "__main__":  # before anything heavy is imported: the process may restart itself
    from bertgpt_jax import host_memory

    host_memory.reexec_with_huge_pages()  # XLA's per-step buffers on 2 MB pages, CPU runs only (see host_memory)

import os  # noqa: E402

from absl import flags, logging  # noqa: E402

from bertgpt_jax import cli  # noqa: E402
from bertgpt_jax.tasks.pretraining import PretrainingData  # noqa: E402
from bertgpt_jax.training.config import TrainConfig  # noqa: E402

F = flags.FLAGS
cli.define_flags(TrainConfig, PretrainingData)


def build_store(data: PretrainingData) -> None:
    """Builds the token store ``data.dataset`` from ``data.build_store_from`` when it does not exist yet."""
    if data.synthetic or "://" in data.dataset:  # gs:// and other remote stores are checked when opened
        return
    if os.path.exists(os.path.join(data.dataset, "manifest.json")):
        return
    if not data.build_store_from:
        raise ValueError(f"--dataset {data.dataset} is not a token store (no manifest.json); build one with "
                         "python -m bertgpt_jax.create_pretraining_data, or pass --build_store_from")
    from bertgpt_jax import create_pretraining_data

    print(f"[pretrain] token store {data.dataset} not found: building it from {data.build_store_from}", flush=True)
    create_pretraining_data.create_token_store(input_file=data.build_store_from, output_dir=data.dataset,
                                               vocab_file=data.vocab_file, train_tokenizer=data.store_tokenizer,
                                               vocab_size=data.store_vocab_size)


RECIPE_FILE = "data_recipe.json"


def record_recipe(output_dir: str, recipe: dict) -> None:
    """Writes the data recipe to ``output_dir/data_recipe.json``, or checks it against the one recorded there:
    a resumed or re-run job that would read other examples than it started with is an error."""
    import json

    import jax

    from bertgpt_jax import atomic_files

    path = os.path.join(output_dir, RECIPE_FILE)
    if "://" not in output_dir and os.path.exists(path):
        with open(path) as f:
            recorded = json.load(f)
        changed = {k: (recorded.get(k), v) for k, v in recipe.items() if recorded.get(k) != v}
        if changed:
            what = ", ".join(f"{k}={old!r} there but {new!r} now" for k, (old, new) in changed.items())
            raise ValueError(f"{output_dir} holds a run made with another data recipe ({path}): {what}. "
                             "Pass the recorded settings to resume it, or use a new --output_dir")
        return
    if jax.process_index() == 0 and "://" not in output_dir:
        os.makedirs(output_dir, exist_ok=True)
        atomic_files.write_json(path, recipe)


def run(train: TrainConfig, data: PretrainingData) -> dict:
    """The pretraining run the CLI starts: the store built if asked, the task for the model, the data recipe
    recorded (or checked, on resume), the engine."""
    from bertgpt_jax import tasks
    from bertgpt_jax.training import config, loop

    if train.compile_only:  # the TPU's step, compiled here: no data read, nothing trained
        from bertgpt_jax.training import aot

        model_cfg = config.model_config(train, platform="tpu")
        if data.synthetic or os.path.exists(os.path.join(data.dataset, "manifest.json")):
            model_cfg = tasks.fit_vocab(model_cfg, train.model, data)  # a remote store keeps the preset's vocab
        return aot.compile_only(train, tasks.task_for(model_cfg, data))
    build_store(data)
    model_cfg = tasks.fit_vocab(config.model_config(train), train.model, data)
    task = tasks.task_for(model_cfg, data)

    def on_start() -> None:  # settings checked, output_dir locked
        record_recipe(train.output_dir, data.recipe(model_cfg.is_bert))
        describe_run(train, data, model_cfg)

    result = loop.run(train, task, on_start=on_start if train.output_dir else None)
    if data.fill_mask_examples > 0 and model_cfg.is_bert and not data.synthetic and result["stopped_by"] == "end":
        import jax

        from bertgpt_jax import inference
        from bertgpt_jax.data import token_store

        blanks = inference.held_out_blanks(data.dataset, data.fill_mask_examples)
        if blanks and jax.process_index() == 0:
            preds = inference.predict_blanks(task.model, jax.device_get(result["params"]), blanks)
            result["fill_mask"] = preds
            text = inference.format_predictions(blanks, preds, token_store.TokenStore(data.dataset).tokenizer())
            print(f"[pretrain] fill in the blanks (held-out validation sentences; * = top-1 right):\n{text}",
                  flush=True)
    return result


def describe_run(train: TrainConfig, data: PretrainingData, model_cfg) -> None:
    """``output_dir/model_config.json`` and ``output_dir/tokenizer/``: what the inference tools
    (``generate``, ``fill_mask``, ...) load beside the checkpoint."""
    import jax

    from bertgpt_jax.data.token_store import TOKENIZER_DIR
    from bertgpt_jax.inference import loading

    if jax.process_index() == 0 and "://" not in train.output_dir:
        tokenizer_dir = None if data.synthetic or "://" in data.dataset else os.path.join(data.dataset, TOKENIZER_DIR)
        loading.save_run_description(train.output_dir, model_cfg, tokenizer_dir)


def main(argv) -> None:
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}; every setting is a --flag")
    if not F["verbosity"].present:
        # Orbax and absl log every checkpoint step at INFO; the run prints its own progress.
        logging.set_verbosity(logging.WARNING)
    train = cli.from_flags(TrainConfig)
    data = cli.from_flags(PretrainingData)
    from bertgpt_jax.training import config

    config.init_distributed(train)
    result = run(train, data)
    if result["stopped_by"] == "sigterm":
        return
    evals = [f"{name} {result['eval/' + name]:.4f}" for name in result["headline_metrics"] if "eval/" + name in result]
    if evals:
        print(f"[pretrain] final eval (step {result['final_step']}): " + ", ".join(evals), flush=True)


if __name__ == "__main__":
    from bertgpt_jax.training.loop import NonFiniteError

    cli.run(main, user_errors=(ValueError, FileNotFoundError, NonFiniteError))
