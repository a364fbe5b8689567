"""Pretrain BERT (MLM + NSP) or GPT-2 (causal LM): ``python -m bertgpt_jax.pretrain --flagfile=...``.

Flag names follow the original ``run_pretraining.py`` where the meaning is the same. A run resumes by
itself from the latest checkpoint in ``--output_dir``; SIGTERM saves a checkpoint and exits cleanly.
Examples: ``experiments/bert_demo.flags`` (CPU, minutes), ``experiments/bert_base_*.flags`` (TPU pods).
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

F = flags.FLAGS

# What to train on.
flags.DEFINE_string("model", None, "Preset name (bert-tiny ... bert-large, gpt2, gpt2-medium, ...) or a path to "
                    "a bert_config.json / HF config.json. Alias: --bert_config_file.")
flags.DEFINE_string("bert_config_file", None, "Alias of --model (the original flag name).")
flags.DEFINE_string("dataset", None, "A token store directory (python -m bertgpt_jax.create_pretraining_data), or "
                    "'synthetic' for random learnable tokens. Alias: --input_file.")
flags.DEFINE_string("input_file", None, "Alias of --dataset (the original flag name).")
flags.DEFINE_string("build_store_from", None, "If --dataset does not exist yet, build it first from this corpus "
                    "('default' = the embedded default corpus; a WordPiece/BPE vocabulary is trained when no "
                    "--vocab_file is given).")
flags.DEFINE_string("vocab_file", None, "Tokenizer for --build_store_from (vocab.txt, tokenizer.json, ...).")
flags.DEFINE_integer("store_vocab_size", 4096, "Vocabulary size to train for --build_store_from without --vocab_file.")
flags.DEFINE_enum("store_tokenizer", "wordpiece", ["wordpiece", "bpe", "sentencepiece"],
                  "Tokenizer to train for --build_store_from without --vocab_file (GPT needs one with an EOS: bpe).")
flags.DEFINE_string("output_dir", None, "Where checkpoints, metrics.jsonl, TensorBoard events and the loss curve "
                    "go. An existing run there is resumed.")
flags.DEFINE_string("init_checkpoint", None, "Start from these parameters: an earlier run's output_dir (or its "
                    "checkpoints/ or best_checkpoint/ folder), or an HF directory (config.json + weights). "
                    "Used only when --output_dir holds no checkpoint yet.")
# Shapes and steps.
flags.DEFINE_integer("max_seq_length", 128, "Tokens per example.")
flags.DEFINE_integer("max_predictions_per_seq", 20, "Masked LM predictions per example (BERT).")
flags.DEFINE_integer("train_batch_size", 32, "Global batch size (all devices, all processes).")
flags.DEFINE_integer("eval_batch_size", 8, "Global eval batch size.")
flags.DEFINE_integer("num_train_steps", 100000, "Optimizer steps.")
flags.DEFINE_integer("num_warmup_steps", 10000, "Linear warmup steps.")
flags.DEFINE_integer("grad_accum_steps", 1, "Split each batch into this many microbatches (same result, less memory).")
# Optimizer.
flags.DEFINE_float("learning_rate", 5e-5, "Peak learning rate.")
flags.DEFINE_enum("optimizer", "adamw", ["adamw", "lamb"], "AdamW (original BERT; no decay on LayerNorm and "
                  "biases) or LAMB (large-batch BERT).")
flags.DEFINE_enum("schedule", "linear", ["linear", "polynomial", "constant"], "Decay after warmup.")
flags.DEFINE_float("schedule_power", 1.0, "Exponent of --schedule=polynomial.")
flags.DEFINE_float("weight_decay", 0.01, "Decoupled weight decay.")
flags.DEFINE_float("adam_beta1", 0.9, "First-moment decay.")
flags.DEFINE_float("adam_beta2", 0.999, "Second-moment decay.")
flags.DEFINE_float("adam_epsilon", 1e-6, "Adam/LAMB epsilon.")
flags.DEFINE_float("clip_grad_norm", 1.0, "Clip gradients to this global norm (0: off).")
flags.DEFINE_enum("nonfinite", "stop", ["stop", "skip"], "On a non-finite loss or gradient the update is never "
                  "applied; 'stop' ends the run with an error, 'skip' carries on.")
# Phases.
flags.DEFINE_bool("do_train", True, "Train.")
flags.DEFINE_bool("do_eval", True, "Evaluate on the validation split (every --eval_every_steps and at the end).")
flags.DEFINE_integer("eval_every_steps", 0, "Evaluate every N steps (0: only at the end).")
flags.DEFINE_integer("max_eval_steps", 20, "Validation batches per evaluation.")
flags.DEFINE_integer("log_every_steps", 100, "Write a metrics record every N steps.")
flags.DEFINE_integer("save_checkpoints_steps", 1000, "Checkpoint every N steps (and at the end).")
flags.DEFINE_integer("keep_checkpoint_max", 3, "Checkpoints kept (oldest deleted).")
flags.DEFINE_string("best_metric", None, "Keep the parameters with the best value of this eval metric in "
                    "output_dir/best_checkpoint, e.g. eval/loss or eval/masked_lm_accuracy.")
flags.DEFINE_enum("best_mode", "min", ["min", "max"], "Whether --best_metric is better when lower or higher.")
# Parallelism and precision.
flags.DEFINE_list("mesh_shape", ["-1", "1", "1"], "Device mesh (data, fsdp, tensor); one entry may be -1 (the rest).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"], "Compute dtype (bfloat16 on TPU/GPU).")
flags.DEFINE_enum("param_dtype", "float32", ["float32", "bfloat16"], "Parameter (master weight) dtype.")
flags.DEFINE_enum("remat", "none", ["none", "full", "dots"], "Recompute activations in the backward pass.")
flags.DEFINE_float("dropout", None, "Override the model's hidden and attention dropout (0 disables).")
flags.DEFINE_integer("seed", 0, "Seed of initialisation, dropout and data order.")
# Multi-host.
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (auto-detected on TPU pods, SLURM, "
                  "Open MPI); implied by --coordinator_address.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
# Output.
flags.DEFINE_bool("progress_bar", True, "Show a tqdm progress bar.")
flags.DEFINE_bool("tensorboard", True, "Write TensorBoard event files to output_dir/tensorboard.")


def _pick(primary: str, alias: str):
    a, b = getattr(F, primary), getattr(F, alias)
    if a is not None and b is not None and a != b:
        raise app.UsageError(f"--{primary}={a} and its alias --{alias}={b} disagree; pass one of them")
    return a if a is not None else b


def _mesh_shape() -> tuple[int, int, int]:
    try:
        shape = tuple(int(x) for x in F.mesh_shape)
    except ValueError:
        raise app.UsageError(f"--mesh_shape={','.join(F.mesh_shape)} must be three integers, e.g. -1,1,1") from None
    if len(shape) != 3:
        raise app.UsageError(f"--mesh_shape={','.join(F.mesh_shape)} must have 3 entries (data, fsdp, tensor)")
    return shape


def _init_distributed() -> None:
    import jax

    if F.coordinator_address:
        if F.num_processes is None or F.process_id is None:
            raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
        jax.distributed.initialize(coordinator_address=F.coordinator_address, num_processes=F.num_processes,
                                   process_id=F.process_id)
    elif F.distributed:
        jax.distributed.initialize()


def _build_store(dataset: str) -> None:
    from bertgpt_jax import create_pretraining_data

    print(f"[pretrain] token store {dataset} not found: building it from {F.build_store_from}", flush=True)
    create_pretraining_data.create_token_store(input_file=F.build_store_from, output_dir=dataset,
                                               vocab_file=F.vocab_file, train_tokenizer=F.store_tokenizer,
                                               vocab_size=F.store_vocab_size)


def config_from_flags():
    """A ``TrainConfig`` from the parsed flags; raises ``app.UsageError`` on a missing or bad flag."""
    from bertgpt_jax.training.loop import TrainConfig

    model = _pick("model", "bert_config_file")
    dataset = _pick("dataset", "input_file")
    for name, value in (("model (or --bert_config_file)", model), ("dataset (or --input_file)", dataset),
                        ("output_dir", F.output_dir)):
        if not value:
            raise app.UsageError(f"--{name} is required")
    return TrainConfig(
        output_dir=F.output_dir, model=model, dataset=dataset, init_checkpoint=F.init_checkpoint,
        max_seq_length=F.max_seq_length, max_predictions_per_seq=F.max_predictions_per_seq,
        train_batch_size=F.train_batch_size, eval_batch_size=F.eval_batch_size, learning_rate=F.learning_rate,
        num_train_steps=F.num_train_steps, num_warmup_steps=F.num_warmup_steps, schedule=F.schedule,
        schedule_power=F.schedule_power, optimizer=F.optimizer, weight_decay=F.weight_decay,
        adam_b1=F.adam_beta1, adam_b2=F.adam_beta2, adam_eps=F.adam_epsilon, clip_grad_norm=F.clip_grad_norm,
        grad_accum_steps=F.grad_accum_steps, do_train=F.do_train, do_eval=F.do_eval,
        eval_every_steps=F.eval_every_steps, max_eval_steps=F.max_eval_steps, log_every_steps=F.log_every_steps,
        save_checkpoints_steps=F.save_checkpoints_steps, keep_checkpoints=F.keep_checkpoint_max,
        best_metric=F.best_metric, best_mode=F.best_mode, mesh_shape=_mesh_shape(), dtype=F.dtype,
        param_dtype=F.param_dtype, remat=F.remat, dropout=F.dropout, seed=F.seed, nonfinite=F.nonfinite,
        progress_bar=F.progress_bar, tensorboard=F.tensorboard)


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; every setting is a --flag")
    if not F["verbosity"].present:
        # Orbax and absl log every checkpoint step at INFO; the run prints its own progress.
        logging.set_verbosity(logging.WARNING)
    cfg = config_from_flags()
    _init_distributed()
    local = "://" not in cfg.dataset  # gs:// and other remote stores are checked when opened
    if cfg.dataset != "synthetic" and local and not os.path.exists(os.path.join(cfg.dataset, "manifest.json")):
        if not F.build_store_from:
            raise app.UsageError(f"--dataset {cfg.dataset} is not a token store (no manifest.json); build one with "
                                 "python -m bertgpt_jax.create_pretraining_data, or pass --build_store_from")
        _build_store(cfg.dataset)
    from bertgpt_jax.training import loop

    try:
        result = loop.run(cfg)
    except (ValueError, FileNotFoundError, loop.NonFiniteError) as e:
        print(f"[pretrain] error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    if result["stopped_by"] == "sigterm":
        return
    if "eval/masked_lm_accuracy" in result:
        print(f"[pretrain] final masked LM accuracy {result['eval/masked_lm_accuracy']:.1%}, next-sentence accuracy "
              f"{result['eval/next_sentence_accuracy']:.1%} (step {result['final_step']})", flush=True)
    elif "eval/perplexity" in result:
        print(f"[pretrain] final eval loss {result['eval/loss']:.4f}, perplexity {result['eval/perplexity']:.2f} "
              f"(step {result['final_step']})", flush=True)


if __name__ == "__main__":
    from bertgpt_jax import host_memory

    host_memory.reexec_with_huge_pages()  # XLA's per-step buffers on 2 MB pages (see host_memory)
    app.run(main)
