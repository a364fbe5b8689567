"""The training engine's settings: one dataclass, the one source of the CLI flags of the same names.

Defaults follow the original ``run_pretraining.py`` where it has the setting. The execution settings
(``dtype``, ``param_dtype``, ``remat``, ``scan_layers``, ``kernels``) take their defaults and allowed values
from ``ModelConfig``, whose fields they set.
"""

from __future__ import annotations

import dataclasses

from bertgpt_jax import configs
from bertgpt_jax.cli import setting

NONFINITE_MODES = ("stop", "skip")
DEFAULT_WARMUP_STEPS = 10000  # the original run_pretraining.py's
_MODEL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(configs.ModelConfig)}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything the engine needs besides the task: model, optimisation, evaluation, checkpoints, mesh."""

    output_dir: str | None = setting(None, "Where checkpoints, metrics.jsonl, TensorBoard events and the loss "
                                     "curve go. An existing run there is resumed.", required=True)
    model: str | None = setting(None, "Preset name (bert-tiny ... bert-large, gpt2, gpt2-medium, ...) or a path to "
                                "a bert_config.json / HF config.json.", aliases=("bert_config_file",), required=True)
    init_checkpoint: str | None = setting(
        None, "Start from these parameters: an earlier run's output_dir (or its checkpoints/ or best_checkpoint/ "
        "folder), or an HF directory (config.json + weights). Used only when --output_dir holds no checkpoint yet.")
    # Batches and steps.
    train_batch_size: int = setting(32, "Global batch size (all devices, all processes).")
    eval_batch_size: int = setting(8, "Global eval batch size.")
    num_train_steps: int = setting(100000, "Optimizer steps.")
    num_warmup_steps: int | None = setting(None, f"Linear warmup steps (default: {DEFAULT_WARMUP_STEPS}, or "
                                           "num_train_steps when the run is shorter).")
    grad_accum_steps: int = setting(1, "Split each batch into this many microbatches (same result, less memory).")
    # Optimizer.
    learning_rate: float = setting(5e-5, "Peak learning rate.")
    optimizer: str = setting("adamw", "AdamW (original BERT; no decay on LayerNorm and biases) or LAMB "
                             "(large-batch BERT).", choices=("adamw", "lamb"))
    schedule: str = setting(
        "bert", "Learning-rate schedule. bert: the original optimization.py's, init_lr * (1 - step / "
        "num_train_steps) ** schedule_power from step 0, replaced before num_warmup_steps by init_lr * step / "
        "num_warmup_steps. warmup_then_decay: warmup to the peak at step num_warmup_steps - 1, then decay over "
        "the remaining num_train_steps - num_warmup_steps (every later rate T / (T - W) times the original's). "
        "constant: that warmup, then the peak.", choices=("bert", "warmup_then_decay", "constant"))
    schedule_power: float = setting(1.0, "Exponent of the polynomial decay (1: linear, as the published recipes).")
    weight_decay: float = setting(0.01, "Decoupled weight decay.")
    adam_beta1: float = setting(0.9, "First-moment decay.")
    adam_beta2: float = setting(0.999, "Second-moment decay.")
    adam_epsilon: float = setting(1e-6, "Adam/LAMB epsilon.")
    clip_grad_norm: float = setting(1.0, "Clip gradients to this global norm (0: off).")
    nonfinite: str = setting("stop", "On a non-finite loss or gradient the update is never applied; 'stop' ends "
                             "the run with an error, 'skip' carries on.", choices=NONFINITE_MODES)
    # Phases, evaluation, logging, checkpoints.
    do_train: bool = setting(True, "Train.")
    do_eval: bool = setting(True, "Evaluate (every --eval_every_steps and at the end).")
    eval_every_steps: int = setting(0, "Evaluate every N steps (0: only at the end).")
    max_eval_steps: int = setting(100, "Evaluation batches per evaluation.")
    log_every_steps: int = setting(100, "Write a metrics record every N steps.")
    save_checkpoints_steps: int = setting(1000, "Checkpoint every N steps (and at the end).")
    keep_checkpoint_max: int = setting(3, "Checkpoints kept (oldest deleted); 0 keeps all. The newest is never "
                                       "deleted.")
    on_damaged_checkpoint: str = setting("fallback", "When the latest checkpoint fails its checksums or cannot be "
                                         "read: 'fallback' moves it to output_dir/damaged_checkpoints, warns and "
                                         "resumes from the newest intact one; 'stop' ends the run naming the "
                                         "problem.", choices=("fallback", "stop"))
    async_checkpoints: bool = setting(True, "Write checkpoints in the background while training goes on.")
    best_metric: str | None = setting(None, "Keep the parameters with the best value of this eval metric in "
                                      "output_dir/best_checkpoint, e.g. eval/loss or eval/masked_lm_accuracy.")
    best_mode: str = setting("min", "Whether --best_metric is better when lower or higher.", choices=("min", "max"))
    # Parallelism and precision.
    mesh_shape: tuple[int, int, int] = setting((-1, 1, 1), "Device mesh (data, fsdp, tensor); one entry may be "
                                               "-1 (the rest).")
    dtype: str = setting(_MODEL_DEFAULTS["dtype"], "Compute dtype (bfloat16 on TPU/GPU).", choices=configs.DTYPES)
    param_dtype: str = setting(_MODEL_DEFAULTS["param_dtype"], "Parameter (master weight) dtype.",
                               choices=("float32", "bfloat16"))
    remat: str = setting(_MODEL_DEFAULTS["remat"], "Recompute activations in the backward pass: none, full (all of "
                         "each layer) or dots (keep the weight matmuls' outputs).", choices=configs.REMAT_POLICIES)
    scan_layers: bool = setting(_MODEL_DEFAULTS["scan_layers"], "Run the layers as one lax.scan (one layer "
                                "compiled instead of L; parameters stacked on a leading axis).")
    kernels: str = setting(_MODEL_DEFAULTS["kernels"], "Backend-specific implementations "
                           "(bertgpt_jax/models/kernels.py): auto (for the devices the run uses), xla (XLA's own, "
                           "what TPUs run), cpu, cudnn (GPU flash attention).", choices=configs.KERNELS)
    dropout: float | None = setting(None, "Override the model's hidden and attention dropout (0 disables).")
    seed: int = setting(0, "Seed of initialisation, dropout and data order.")
    # Multi-host.
    distributed: bool = setting(False, "Call jax.distributed.initialize() (auto-detected on TPU pods, SLURM, Open "
                                "MPI); implied by --coordinator_address.")
    coordinator_address: str | None = setting(None, "host:port of process 0, for multi-process runs.")
    num_processes: int | None = setting(None, "Number of processes (with --coordinator_address).")
    process_id: int | None = setting(None, "This process's index (with --coordinator_address).")
    # Ahead-of-time compilation (bertgpt_jax/training/aot.py).
    compile_only: bool = setting(False, "Compile the train step for --topology's TPU slice on this host (no TPU "
                                 "needed: the tpu extra's libtpu), print the memory/FLOPs report, and exit "
                                 "without training.")
    topology: str | None = setting(None, "TPU slice for --compile_only: a slice name (v4-32 = 32 TensorCores = 16 "
                                   "chips, v5litepod-16, v5p-64, v6e-8) or a topology (v4:2x2x4, v5e:4x4).")
    # Output.
    progress_bar: bool = setting(True, "Show a tqdm progress bar on a terminal (plain progress lines every "
                                 "30 s when output goes to a file).")
    tensorboard: bool = setting(True, "Write TensorBoard event files to output_dir/tensorboard.")
    plot: bool = setting(True, "Draw output_dir/loss_curve.png at the end.")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    @property
    def warmup_steps(self) -> int:
        """``num_warmup_steps``, or when not given the default capped at the run's length."""
        if self.num_warmup_steps is not None:
            return self.num_warmup_steps
        return min(DEFAULT_WARMUP_STEPS, max(self.num_train_steps, 0))


def model_config(cfg: TrainConfig, platform: str | None = None) -> configs.ModelConfig:
    """The model's config with the run's execution settings and dropout, its kernels chosen for ``platform``
    (default: the devices this process computes on)."""
    from bertgpt_jax import models

    if not cfg.model:
        raise ValueError("TrainConfig.model is required: a preset name or a path to a config.json")
    model_cfg = configs.get(cfg.model).replace(dtype=cfg.dtype, param_dtype=cfg.param_dtype, remat=cfg.remat,
                                               scan_layers=cfg.scan_layers, kernels=cfg.kernels)
    if cfg.dropout is not None:
        model_cfg = model_cfg.replace(hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout)
    return models.resolve_kernels(model_cfg, platform)


def init_distributed(cfg: TrainConfig) -> None:
    """``jax.distributed.initialize`` as the multi-host settings say (before anything asks for devices)."""
    import jax

    if cfg.coordinator_address:
        if cfg.num_processes is None or cfg.process_id is None:
            raise ValueError("--coordinator_address needs --num_processes and --process_id")
        jax.distributed.initialize(coordinator_address=cfg.coordinator_address, num_processes=cfg.num_processes,
                                   process_id=cfg.process_id)
    elif cfg.distributed:
        jax.distributed.initialize()
