"""What every fine-tuning task shares: features held in memory, a checkpointable shuffled training stream, padded
evaluation batches that cover every example, prediction over a whole split, and initialisation from a
pretraining run's ``output_dir`` or an HF directory with the output layer freshly initialised.

Subclasses (classification, tagging, spans) give the model, the features' names and shapes, the loss sums
and the outputs read at prediction (``outputs``).
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from bertgpt_jax import configs, models, sharding
from bertgpt_jax.models.finetune import PRETRAINING_HEADS, strip_pretraining_heads
from bertgpt_jax.tasks.base import Batch, Task

Features = dict[str, np.ndarray]


class ArrayBatches:
    """Endless batches of in-memory features, reshuffled every epoch; ``get_state``/``set_state`` resume it
    exactly. Global batch ``k`` takes positions ``k*B .. (k+1)*B`` of the stream of epoch permutations
    (epoch ``e`` shuffled by ``(seed, e)``); process ``p`` of ``P`` gets its ``p``-th block of rows."""

    def __init__(self, features: Features, global_batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 process_index: int | None = None, process_count: int | None = None):
        self.features = features
        self.n = len(next(iter(features.values())))
        if self.n == 0:
            raise ValueError("no training examples")
        self.process_index = jax.process_index() if process_index is None else process_index
        self.process_count = jax.process_count() if process_count is None else process_count
        if global_batch_size % self.process_count:
            raise ValueError(f"global batch {global_batch_size} is not divisible by {self.process_count} processes")
        self.global_batch_size, self.seed, self.shuffle = global_batch_size, seed, shuffle
        self.position = 0
        self._perm_epoch, self._perm = -1, None

    def _order(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = (np.random.default_rng([self.seed, epoch]).permutation(self.n) if self.shuffle
                          else np.arange(self.n))
            self._perm_epoch = epoch
        return self._perm

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        positions = self.position + np.arange(self.global_batch_size)
        self.position += self.global_batch_size
        local = self.global_batch_size // self.process_count
        positions = positions[self.process_index * local:(self.process_index + 1) * local]
        rows = np.empty(local, np.int64)
        for epoch in np.unique(positions // self.n):
            sel = positions // self.n == epoch
            rows[sel] = self._order(int(epoch))[positions[sel] % self.n]
        return {k: v[rows] for k, v in self.features.items()}

    def get_state(self) -> dict:
        return {"position": int(self.position), "seed": int(self.seed)}

    def set_state(self, state: dict) -> None:
        self.position, self.seed = int(state["position"]), int(state["seed"])


def padded_batches(features: Features, global_batch_size: int, process_index: int | None = None,
                   process_count: int | None = None) -> Iterator[Batch]:
    """One ordered pass over every example; the last batch is padded with copies of row 0 marked
    ``is_real_example = 0``, never dropped. Yields this process's block of each global batch."""
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    n = len(next(iter(features.values())))
    local = global_batch_size // pc
    real = features.get("is_real_example", np.ones((n,), np.int32))
    for start in range(0, n, global_batch_size):
        idx = np.arange(start, start + global_batch_size)
        is_real = (idx < n).astype(np.int32)
        idx = np.where(idx < n, idx, 0)
        idx, is_real = idx[pi * local:(pi + 1) * local], is_real[pi * local:(pi + 1) * local]
        batch = {k: v[idx] for k, v in features.items() if k != "is_real_example"}
        batch["is_real_example"] = is_real * real[idx]
        yield batch


def num_train_steps(num_examples: int, batch_size: int, epochs: float) -> int:
    """The original's ``int(len(train_examples) / train_batch_size * num_train_epochs)``."""
    return int(num_examples / batch_size * epochs)


class FinetuneTask(Task):
    """A fine-tuning task over features in memory. ``model`` wraps ``Bert`` under ``bert``."""

    #: the output layer's parameter names (freshly initialised when starting from a pretrained encoder)
    head_names: tuple[str, ...] = ("classifier",)

    def __init__(self, model_cfg: configs.ModelConfig, model: nn.Module, seq_len: int,
                 train_features: Features | None = None, eval_features: Features | None = None):
        if not model_cfg.is_bert:
            raise ValueError(f"fine-tuning needs a BERT model config, got model_type {model_cfg.model_type!r}")
        super().__init__(model_cfg, model, seq_len)
        self.train_features, self.eval_features = train_features, eval_features
        #: the CLI's evaluation (an :class:`Evaluation`): what the engine reports every eval_every_steps
        self.evaluator: Evaluation | None = None

    def check(self) -> None:
        configs.check_positions(self.seq_len, self.model_cfg.max_position_embeddings, "max_seq_length")

    # ---- the model -------------------------------------------------------------------------------------

    def model_inputs(self, batch: Batch) -> dict:
        return dict(attention_mask=batch["input_mask"], token_type_ids=batch["segment_ids"])

    def init_params(self, rng: jax.Array, batch: Batch) -> Any:
        params = self.model.init({"params": rng}, batch["input_ids"], **self.model_inputs(batch),
                                 deterministic=True)["params"]
        return strip_pretraining_heads(params)

    def fresh_params(self, seed: int = 0) -> Any:
        """A fresh initialisation (host arrays), the source of the output layer when loading an encoder."""
        cache = self.__dict__.setdefault("_fresh", {})
        if seed not in cache:
            batch = jax.tree.map(jnp.asarray, self.example_batch(1))
            cache[seed] = jax.tree.map(np.asarray, nn.unbox(jax.jit(self.init_params)(jax.random.PRNGKey(seed),
                                                                                      batch)))
        return cache[seed]

    def load_init_params(self, path: str, abstract_params: Any) -> Any:
        """An encoder from a pretraining run's ``output_dir`` (or checkpoint folder) or an HF directory, with
        the output layer freshly initialised (logged); or a fine-tuning run's parameters as they are."""
        from bertgpt_jax.training import checkpointing

        fresh = self.fresh_params()
        if os.path.exists(os.path.join(path, "config.json")) and not os.path.isdir(os.path.join(path, "checkpoints")):
            encoder, head = self._load_hf(path)
        else:
            try:
                return checkpointing.restore_params(path, abstract_params)  # a fine-tuning run of this task
            except FileNotFoundError:
                raise
            except Exception:  # noqa: BLE001 -- not this task's layout: read it as a pretraining run
                encoder, head = self._restore_pretraining(path, abstract_params), None
        bert = dict(fresh["bert"])
        for k in bert:
            if k in encoder:
                bert[k] = encoder[k]
            else:
                _say(f"init_checkpoint {path} has no {k}: initialised from scratch")
        params = {**fresh, "bert": bert}
        if head is not None:
            params.update(head)
        else:
            _say(f"initialised the encoder from {path}; the output layer ({', '.join(self.head_names)}) is "
                 "freshly initialised (truncated normal, stddev "
                 f"{self.model_cfg.initializer_range})")
        return params

    def _load_hf(self, path: str):
        from bertgpt_jax import convert

        hf_cfg, encoder, head = convert.from_hf_finetuned(path, scan_layers=self.model_cfg.scan_layers)
        for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size"):
            if getattr(hf_cfg, field) != getattr(self.model_cfg, field):
                raise ValueError(f"init_checkpoint {path} has {field}={getattr(hf_cfg, field)}, but the model has "
                                 f"{getattr(self.model_cfg, field)}; pass --bert_config_file={path}/config.json")
        if head is not None:
            fresh = self.fresh_params()
            for name, leaves in head.items():
                if name not in fresh or jax.tree.map(np.shape, leaves) != jax.tree.map(np.shape, fresh[name]):
                    _say(f"init_checkpoint {path} has a {name} layer of another shape than this task's "
                         f"({jax.tree.map(np.shape, leaves)}): the output layer is freshly initialised")
                    head = None
                    break
        if head is not None:
            _say(f"initialised the encoder and the output layer from the fine-tuned checkpoint {path}")
        return encoder, head

    def _restore_pretraining(self, path: str, abstract_params: Any) -> dict:
        """The encoder of a pretraining run (its MLM/NSP heads are read and dropped)."""
        from bertgpt_jax.training import checkpointing

        pre = jax.eval_shape(lambda: nn.unbox(models.Bert(self.model_cfg).init(
            jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32), masked_lm_positions=jnp.zeros((1, 2), jnp.int32))
            ["params"]))
        bert_abstract = abstract_params["bert"]
        any_leaf = jax.tree.leaves(bert_abstract)[0]
        replicated = (sharding.replicated(any_leaf.sharding.mesh) if getattr(any_leaf, "sharding", None) is not None
                      else None)

        def place(tree, like):
            if like is None:
                return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), tree)
            return jax.tree.map(lambda x, y: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(y, "sharding",
                                                                                                  None)), tree, like)

        target = {k: place(v, bert_abstract.get(k)) for k, v in pre.items()}
        try:
            restored = checkpointing.restore_params(path, target)
        except FileNotFoundError:
            raise
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"init_checkpoint {path} is neither a pretraining run of this model ({e.__class__.__name__}: "
                             f"{str(e)[:300]}) nor a fine-tuning run of this task; check --bert_config_file / "
                             "--model") from None
        return {k: v for k, v in restored.items() if k not in PRETRAINING_HEADS}

    # ---- the data --------------------------------------------------------------------------------------

    def train_batches(self, global_batch_size: int, seed: int) -> Iterator[Batch]:
        if self.train_features is None:
            raise ValueError("this task has no training features")
        keys = self.example_batch(1).keys()  # the compiled step's inputs (no is_real_example)
        return ArrayBatches({k: self.train_features[k] for k in keys}, global_batch_size, seed=seed)

    def eval_batches(self, global_batch_size: int, seed: int, max_examples: int | None = None) -> Iterator[Batch]:
        if self.eval_features is None:
            raise ValueError("this task has no evaluation features")
        features = self.eval_features
        n = len(next(iter(features.values())))
        if max_examples is not None and n > max_examples:  # a fixed sample spread over the whole split
            rows = np.unique(np.linspace(0, n - 1, max_examples).round().astype(np.int64))
            features = {k: v[rows] for k, v in features.items()}
        return padded_batches(features, global_batch_size)

    def evaluate(self, params: Any, mesh: jax.sharding.Mesh) -> dict[str, float] | None:
        return None if self.evaluator is None else self.evaluator(params)

    # ---- prediction ------------------------------------------------------------------------------------

    def outputs(self, params: Any, batch: Batch) -> Any:
        """What prediction reads per example (logits), deterministic."""
        return self.model.apply({"params": params}, batch["input_ids"], **self.model_inputs(batch),
                                deterministic=True)

    def predict(self, params: Any, features: Features, batch_size: int, mesh: jax.sharding.Mesh) -> Any:
        """``outputs`` for every example of ``features`` (host arrays, in order; padding rows removed)."""
        from bertgpt_jax.training import inputs

        n = len(next(iter(features.values())))
        if n == 0:
            raise ValueError("no examples to predict")
        # One jitted function per mesh, kept: a fresh jax.jit of the bound method would compile again at
        # every call, i.e. at every evaluation during training.
        fns = self.__dict__.setdefault("_predict_fns", {})
        if mesh not in fns:
            fns[mesh] = jax.jit(self.outputs, out_shardings=sharding.replicated(mesh))
        fn = fns[mesh]
        chunks = []
        from tqdm import tqdm

        batches = padded_batches(features, batch_size)
        for batch in tqdm(batches, total=-(-n // batch_size), unit="batch", desc="predict", leave=False,
                          disable=jax.process_index() != 0 or n <= batch_size * 4):
            with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
                out = fn(params, inputs.place(batch, mesh, batch_size))
            chunks.append(jax.device_get(out))
        return jax.tree.map(lambda *xs: np.concatenate(xs)[:n], *chunks)

    def flops_per_token(self) -> float:
        return models.flops_per_token(self.model_cfg, self.seq_len, 0, heads_only=False)


class Evaluation:
    """A fine-tuning CLI's evaluation: ``fn(params) -> (metrics, outputs)``, the task's own metric set (names
    without a prefix) and what the CLI writes from the predictions. The engine calls it every
    ``--eval_every_steps`` and at the end; the CLI's closing evaluation takes the engine's of the same final
    parameters (:meth:`final`) instead of predicting the split again."""

    def __init__(self, fn):
        self.fn = fn
        self.last: tuple[dict, Any] | None = None

    def __call__(self, params: Any) -> dict:
        self.last = self.fn(params)
        return _numeric(self.last[0])

    def final(self, params: Any, loop_result: dict | None) -> tuple[dict, Any]:
        """``(metrics, outputs)`` of the final parameters: the engine's closing evaluation when it made one
        (its ``eval/`` figures are this evaluation's), else computed now."""
        if self.last is not None and loop_result and loop_result.get("stopped_by") == "end":
            engine = {k[len("eval/"):]: v for k, v in loop_result.items() if k.startswith("eval/")}
            if engine and engine == _numeric(self.last[0]):
                return self.last
        return self.fn(params)


def _numeric(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.number))}


def _say(line: str) -> None:
    logging.warning(line)
    if jax.process_index() == 0:
        print(f"[finetune] {line}", flush=True)


# ---- what the fine-tuning CLIs share -------------------------------------------------------------------


def tokenizer_for(vocab_file: str | None, init_checkpoint: str | None, do_lower_case: bool):
    """``vocab_file``, or the vocabulary inside an HF ``init_checkpoint`` directory."""
    from bertgpt_jax import tokenization

    vocab = vocab_file
    if vocab is None and init_checkpoint and os.path.isdir(init_checkpoint):
        if any(os.path.exists(os.path.join(init_checkpoint, n)) for n in ("vocab.txt", "tokenizer.json")):
            vocab = init_checkpoint
    if vocab is None:
        raise ValueError("--vocab_file is required (the vocabulary the checkpoint was trained with)")
    return tokenization.from_file(vocab, do_lower_case=do_lower_case)


def fit_model_vocab(model_cfg: configs.ModelConfig, model_name: str, tokenizer) -> configs.ModelConfig:
    """A preset takes the tokenizer's vocabulary size (as pretraining sizes it); a config file must agree."""
    if model_name.lower() in configs.PRESETS or model_name.lower() in configs.ALIASES:
        model_cfg = model_cfg.replace(vocab_size=tokenizer.vocab_size)
    if tokenizer.vocab_size != model_cfg.vocab_size:
        raise ValueError(f"the vocabulary ({tokenizer.vocab_size} tokens) differs from the model's vocab_size "
                         f"{model_cfg.vocab_size} ({model_name}); pass the vocab_file the checkpoint was trained "
                         "with, or the checkpoint's own bert_config_file")
    return model_cfg


def tokenizer_and_model(train: Any, vocab_file: str | None, do_lower_case: bool,
                        max_seq_length: int) -> tuple[Any, configs.ModelConfig]:
    """The tokenizer and the model config a fine-tuning CLI runs (``train`` its TrainConfig): the vocabulary
    fitted as :func:`fit_model_vocab` does, and ``max_seq_length`` checked against the position table.

    With ``--compile_only`` the kernels are TPU's and the vocabulary is optional: a preset keeps its own
    ``vocab_size`` when none is given (the tokenizer is then None)."""
    from bertgpt_jax.training import config

    platform = "tpu" if train.compile_only else None
    try:
        tokenizer = tokenizer_for(vocab_file, train.init_checkpoint, do_lower_case)
    except ValueError:
        if not train.compile_only:
            raise
        tokenizer = None
    model_cfg = config.model_config(train, platform=platform)
    if tokenizer is not None:
        model_cfg = fit_model_vocab(model_cfg, train.model, tokenizer)
    if max_seq_length > model_cfg.max_position_embeddings:
        raise ValueError(f"max_seq_length {max_seq_length} exceeds the model's max_position_embeddings "
                         f"{model_cfg.max_position_embeddings}")
    return tokenizer, model_cfg


def engine_config(train: Any, steps: int, warmup_proportion: float, evaluate: bool = False) -> Any:
    """The TrainConfig the engine runs for ``steps`` of fine-tuning: what ``loop.run`` trains and what
    ``--compile_only`` compiles. The engine evaluates (every ``--eval_every_steps`` and at the end) only when
    ``evaluate`` and ``--eval_every_steps`` ask for it; else the CLI evaluates once training ends, as the
    original does."""
    return train.replace(do_train=True, do_eval=bool(evaluate and train.eval_every_steps > 0),
                         num_train_steps=steps, num_warmup_steps=int(steps * warmup_proportion))


def check_eval_every_steps(train: Any, do_train: bool, can_evaluate: bool, needs: str) -> None:
    """``--eval_every_steps`` evaluates during training: it needs the data the CLI evaluates on."""
    if train.eval_every_steps < 0:
        raise ValueError(f"--eval_every_steps must be >= 0 (0: evaluate once, after training), got "
                         f"{train.eval_every_steps}")
    if train.eval_every_steps and do_train and not can_evaluate:
        raise ValueError(f"--eval_every_steps={train.eval_every_steps} evaluates during training and needs "
                         f"{needs}; add it, or pass --eval_every_steps=0")


def compile_only(train: Any, task: FinetuneTask, warmup_proportion: float, evaluate: bool = False) -> dict:
    """``--compile_only``: the fine-tuning train step compiled for ``--topology`` and its report printed
    (``training/aot.py``, as pretraining does). Nothing is trained, no checkpoint is read, nothing is written;
    ``--num_train_steps`` stands for the run's length (the schedule's constants change no shape)."""
    from bertgpt_jax.training import aot

    return aot.compile_only(engine_config(train, train.num_train_steps, warmup_proportion, evaluate), task)


def checkpoint_step(output_dir: str) -> int | None:
    """The latest complete checkpoint's step in a run's ``output_dir``, or None."""
    from bertgpt_jax.training import checkpointing

    ckpt_dir = checkpointing.checkpoint_dir(output_dir)
    if not os.path.isdir(ckpt_dir):
        return None
    ckpt = checkpointing.Checkpointer(ckpt_dir)
    try:
        return ckpt.latest_step()
    finally:
        ckpt.close()


def run_params(task: FinetuneTask, output_dir: str, init_checkpoint: str | None, mesh) -> tuple[Any, int]:
    """``(params, step)`` to evaluate or predict with: the run's latest checkpoint in ``output_dir``, else
    ``init_checkpoint`` (step 0), placed on the mesh as training places them."""
    import optax

    from bertgpt_jax.training import checkpointing
    from bertgpt_jax.training import state as state_lib

    abstract = state_lib.abstract_state(task, optax.identity(), mesh)[0].params
    step = checkpoint_step(output_dir)
    if step is not None:
        return checkpointing.restore_params(output_dir, abstract), step
    if init_checkpoint:
        loaded = task.load_init_params(init_checkpoint, abstract)
        return jax.tree.map(lambda p, a: jax.device_put(np.asarray(p, a.dtype), a.sharding), loaded, abstract), 0
    raise ValueError(f"--output_dir {output_dir} holds no checkpoint; train first (--do_train) or pass "
                     "--init_checkpoint")


def write_results(path: str, metrics: dict) -> None:
    """``key = value`` lines sorted by key, as the original writes eval_results.txt."""
    with open(path, "w", encoding="utf-8") as f:
        for key in sorted(metrics):
            f.write(f"{key} = {metrics[key]}\n")


def say(line: str) -> None:
    """Prints on process 0 only: the fine-tuning CLIs' progress lines."""
    if jax.process_index() == 0:
        print(line, flush=True)


def cli_main(argv: list[str], task_config: type, run: Any) -> None:
    """The ``main`` of a fine-tuning CLI: ``run(TrainConfig, task_config)`` from the parsed flags. An HF
    directory given as ``--init_checkpoint`` describes the model when neither ``--model`` nor
    ``--bert_config_file`` does."""
    from absl import flags

    from bertgpt_jax import cli
    from bertgpt_jax.training import TrainConfig, config

    F = flags.FLAGS
    if len(argv) > 1:
        raise cli.UsageError(f"unexpected arguments {argv[1:]}; every setting is a --flag")
    if not F["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    if F.model is None and F.bert_config_file is None and F.init_checkpoint and os.path.exists(
            os.path.join(F.init_checkpoint, "config.json")):
        F.model = os.path.join(F.init_checkpoint, "config.json")
    train = cli.from_flags(TrainConfig)
    settings = cli.from_flags(task_config)
    config.init_distributed(train)
    run(train, settings)
