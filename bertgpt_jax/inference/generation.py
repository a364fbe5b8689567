"""GPT-2 text generation with a KV cache: greedy decoding or seeded sampling (temperature, top-k, top-p).

As the GPT-2 paper samples: each new token is appended to the input for the next step, every position
sees only the past, the distribution over the vocabulary is cut to the k = 40 best (and/or the nucleus
holding ``top_p`` of the mass) and sampled, until the end-of-text token or the length limit.

How it runs: the prompts are left-padded to a length bucket and prefilled in one call that writes every
layer's keys and values into a cache of S = prompt bucket + new-token bucket slots; then one token per
step inside one ``lax.while_loop``, each step attending to the cache. Prefill and loop are one compiled
function per (batch, prompt bucket, new-token bucket, sampling mode), never one per token. Each prompt's
positions count from its first real token and its padding is masked, so a prompt gives in a batch the
tokens it gives alone. A sequence that emits end-of-text is done (later slots hold padding); the loop
stops when every sequence is done or ``max_new_tokens`` are out. Prompt plus new tokens must fit the
position table (``n_positions``, 1024 for GPT-2): a longer request is an error, not a silent slide.

Sampling draws sample ``i`` of every prompt from ``fold_in(seed, i)`` and step ``t`` from a fold-in of
that, so a seed gives the same samples whatever the batch around them. Parameters stay where
``loading.load`` placed them (over fsdp/tensor); the batch is split over the mesh's data axes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bertgpt_jax import models, sharding
from bertgpt_jax.cli import setting
from bertgpt_jax.inference.loading import LoadedModel, ModelSource
from bertgpt_jax.models.gpt2 import GPT2
from bertgpt_jax.models.layers import CACHE


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is chosen. ``do_sample=False`` or ``temperature=0`` is greedy (argmax)."""

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = 40  # None: no cut
    top_p: float = 1.0

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0.0

    def check(self) -> None:
        if self.top_k is not None and (not isinstance(self.top_k, (int, np.integer)) or self.top_k < 1):
            raise ValueError(f"top_k must be an integer >= 1 (40 as GPT-2 sampled; the vocabulary size for no "
                             f"cut), got {self.top_k!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 keeps the whole distribution), got {self.top_p!r}")
        if self.temperature < 0.0 or not np.isfinite(self.temperature):
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature!r}")


@dataclasses.dataclass(frozen=True)
class Generation:
    prompt_ids: list[int]
    token_ids: list[int]  # the new tokens, the end-of-text token included when it was emitted
    finish_reason: str  # "eos" or "length"


def bucket(n: int, minimum: int = 8) -> int:
    """The next power of two >= n (at least ``minimum``): lengths that share a compiled function."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def filter_logits(logits_BxV: jax.Array, top_k: int | None, top_p: float | jax.Array,
                  use_top_p: bool) -> tuple[jax.Array, jax.Array]:
    """``(candidate logits [B, C], their token ids [B, C])``: the k best (C = k) or every token, with
    those outside the nucleus set to -inf. The nucleus is the smallest set of best tokens whose
    probability reaches ``top_p`` (the best token is always in it)."""
    B, V = logits_BxV.shape
    if top_k is not None and top_k < V:
        vals_BxC, ids_BxC = jax.lax.top_k(logits_BxV, top_k)
    elif use_top_p:
        ids_BxC = jnp.argsort(-logits_BxV, axis=-1)
        vals_BxC = jnp.take_along_axis(logits_BxV, ids_BxC, axis=-1)
    else:
        return logits_BxV, jnp.broadcast_to(jnp.arange(V, dtype=jnp.int32), (B, V))
    if use_top_p:
        probs_BxC = jax.nn.softmax(vals_BxC, axis=-1)
        mass_before_BxC = jnp.cumsum(probs_BxC, axis=-1) - probs_BxC  # sorted best first
        vals_BxC = jnp.where(mass_before_BxC < top_p, vals_BxC, -jnp.inf)
    return vals_BxC, ids_BxC.astype(jnp.int32)


def choose(logits_BxV: jax.Array, mode: Sampling, temperature: jax.Array, top_p: jax.Array,
           keys_B: jax.Array) -> jax.Array:
    """The next token of each row [B]: argmax, or a draw from the filtered, tempered distribution."""
    if mode.greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    vals_BxC, ids_BxC = filter_logits(logits_BxV / temperature, mode.top_k, top_p, mode.top_p < 1.0)
    pick_B = jax.vmap(jax.random.categorical)(keys_B, vals_BxC)
    return jnp.take_along_axis(ids_BxC, pick_B[:, None], axis=1)[:, 0]


class Generator:
    """Generation with one loaded GPT-2; compiled functions are kept per shape bucket and sampling mode."""

    def __init__(self, loaded: LoadedModel, eos_token_id: int | None = None):
        if not loaded.cfg.is_gpt:
            raise ValueError(f"{loaded.source} is a {loaded.cfg.model_type} model; generation needs GPT-2")
        self.loaded = loaded
        self.cfg = loaded.cfg
        tok_eos = loaded.tokenizer.eos_token_id if loaded.tokenizer is not None else None
        self.eos_token_id = next((e for e in (eos_token_id, tok_eos, self.cfg.eos_token_id) if e is not None), None)
        self.traces = 0  # how often the decoding function was traced (a compile each): tests guard it
        self._compiled: dict[tuple, Any] = {}
        # On CPU a batch's decoding steps read the dense kernels transposed (models/kernels.py, cpu_decoding):
        # the same parameters and outputs, the weights streamed at close to memory bandwidth. One row at a
        # time (batch 1) XLA's own matrix-vector product is faster.
        platform = loaded.mesh.devices.flat[0].platform
        self.batch_model = loaded.model if platform != "cpu" else models.from_config(
            self.cfg.replace(kernels="cpu_decoding"))

    # ---- the compiled function ----------------------------------------------------------------

    def _decode_fn(self, new_bucket: int, mode: Sampling):
        eos = -1 if self.eos_token_id is None else self.eos_token_id
        pad = max(eos, 0)  # what a finished sequence's later slots hold

        def decode(params, ids_BxP, mask_BxP, sample_B, max_new, temperature, top_p, seed_key):
            self.traces += 1
            B, P = ids_BxP.shape
            model = self.batch_model if B > 1 else self.loaded.model
            S = P + new_bucket
            lengths_B = jnp.sum(mask_BxP, axis=1).astype(jnp.int32)
            positions_BxP = jnp.maximum(jnp.cumsum(mask_BxP, axis=1) - 1, 0).astype(jnp.int32)
            slots_BxS = jnp.concatenate([mask_BxP.astype(jnp.int32), jnp.ones((B, new_bucket), jnp.int32)], 1)
            shapes = jax.eval_shape(lambda: model.apply(
                {"params": params}, jnp.zeros((B, S), jnp.int32), attention_mask=slots_BxS,
                position_ids=jnp.zeros((B, S), jnp.int32), return_logits=False, mutable=[CACHE])[1][CACHE])
            cache = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            row_keys_B = jax.vmap(lambda i: jax.random.fold_in(seed_key, i))(sample_B)

            def forward(cache, ids_BxT, positions_BxT):
                out, updated = model.apply({"params": params, CACHE: cache}, ids_BxT, attention_mask=slots_BxS,
                                           position_ids=positions_BxT, return_logits=False, mutable=[CACHE])
                logits_BxV = model.apply({"params": params}, out.last_hidden_state[:, -1], method=GPT2.logits)
                return logits_BxV, updated[CACHE]

            def pick(logits_BxV, t):
                keys_B = jax.vmap(lambda k: jax.random.fold_in(k, t))(row_keys_B)
                return choose(logits_BxV, mode, temperature, top_p, keys_B)

            logits_BxV, cache = forward(cache, ids_BxP, positions_BxP)
            token_B = pick(logits_BxV, 0)
            out_BxN = jnp.full((B, new_bucket), pad, jnp.int32).at[:, 0].set(token_B)
            done_B = token_B == eos

            def cond(carry):
                t, _, _, done_B, _ = carry
                return jnp.logical_and(t < max_new, jnp.logical_not(jnp.all(done_B)))

            def body(carry):
                t, token_B, cache, done_B, out_BxN = carry
                logits_BxV, cache = forward(cache, token_B[:, None], (lengths_B + t - 1)[:, None])
                new_B = jnp.where(done_B, pad, pick(logits_BxV, t))
                out_BxN = jax.lax.dynamic_update_slice(out_BxN, new_B[:, None], (0, t))
                return t + 1, new_B, cache, jnp.logical_or(done_B, new_B == eos), out_BxN

            carry = (jnp.int32(1), token_B, cache, done_B, out_BxN)
            t, _, _, done_B, out_BxN = jax.lax.while_loop(cond, body, carry)
            return out_BxN, t

        return decode

    def _compiled_fn(self, new_bucket: int, sampling: Sampling):
        # Temperature and top_p are arguments; what changes the program is part of the key.
        mode = Sampling(do_sample=not sampling.greedy, top_k=sampling.top_k,
                        top_p=0.5 if sampling.top_p < 1.0 else 1.0)
        key = (new_bucket, mode)
        if key not in self._compiled:
            mesh = self.loaded.mesh
            batch = sharding.batch_sharding(mesh, 2)
            vector = sharding.batch_sharding(mesh, 1)
            rep = sharding.replicated(mesh)
            params_sh = jax.tree.map(lambda p: p.sharding, self.loaded.params)
            self._compiled[key] = jax.jit(self._decode_fn(new_bucket, mode),
                                          in_shardings=(params_sh, batch, batch, vector, rep, rep, rep, rep),
                                          out_shardings=(batch, rep))
        return self._compiled[key]

    # ---- the API ------------------------------------------------------------------------------

    def check_request(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> None:
        limit = self.cfg.max_position_embeddings
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if not prompts:
            raise ValueError("no prompt to generate from")
        for i, p in enumerate(prompts):
            if len(p) == 0:
                raise ValueError(f"prompt {i} is empty; GPT-2 needs at least one token to start from (e.g. the "
                                 "end-of-text token)")
            if len(p) + max_new_tokens > limit:
                raise ValueError(f"prompt {i} has {len(p)} tokens; with max_new_tokens {max_new_tokens} that is "
                                 f"{len(p) + max_new_tokens} positions, beyond the model's context of {limit} "
                                 f"(n_positions): shorten the prompt to <= {max(limit - max_new_tokens, 0)} tokens or "
                                 "ask for fewer new tokens")
            bad = [t for t in p if not 0 <= int(t) < self.cfg.vocab_size]
            if bad:
                raise ValueError(f"prompt {i} has token ids {bad[:5]} outside the vocabulary "
                                 f"[0, {self.cfg.vocab_size})")

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int = 64, sampling: Sampling = Sampling(),
                 seed: int = 0, sample_ids: Sequence[int] | None = None) -> list[Generation]:
        """One :class:`Generation` per prompt (lists of token ids). ``sample_ids`` numbers each row's random
        stream (default 0 for every row: sample ``i`` of a prompt is row ``i`` of its repeats)."""
        sampling.check()
        self.check_request(prompts, max_new_tokens)
        mesh = self.loaded.mesh
        dp = sharding.data_parallel_size(mesh)
        n = len(prompts)
        rows = list(prompts) + [prompts[0]] * ((-n) % dp)  # whole shards: filler rows repeat the first
        samples = list(sample_ids) if sample_ids is not None else [0] * n
        samples += [samples[0]] * (len(rows) - n)
        P = bucket(max(len(p) for p in rows))
        N = bucket(max_new_tokens)
        ids = np.zeros((len(rows), P), np.int32)
        mask = np.zeros((len(rows), P), np.int32)
        for r, p in enumerate(rows):  # left padding: every row's last prompt token is at P - 1
            ids[r, P - len(p):] = np.asarray(p, np.int32)
            mask[r, P - len(p):] = 1
        fn = self._compiled_fn(N, sampling)
        with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.RULES):
            out, steps = fn(self.loaded.params, ids, mask, np.asarray(samples, np.int32), np.int32(max_new_tokens),
                            np.float32(sampling.temperature or 1.0), np.float32(sampling.top_p),
                            jax.random.key(seed))
        out = np.asarray(jax.device_get(out))[:n, :max_new_tokens]
        results = []
        for r in range(n):
            tokens = [int(t) for t in out[r]]
            if self.eos_token_id is not None and self.eos_token_id in tokens:
                tokens = tokens[:tokens.index(self.eos_token_id) + 1]
                reason = "eos"
            else:
                reason = "length"
            results.append(Generation(prompt_ids=[int(t) for t in prompts[r]], token_ids=tokens, finish_reason=reason))
        return results


def prompts_from_padded(input_ids_BxT: np.ndarray, attention_mask_BxT: np.ndarray) -> list[list[int]]:
    """The prompts of a padded batch (left or right padding, 1 = real token)."""
    ids, mask = np.asarray(input_ids_BxT), np.asarray(attention_mask_BxT).astype(bool)
    return [[int(t) for t in row[m]] for row, m in zip(ids, mask)]


def generate(loaded: LoadedModel, prompts: Sequence[Sequence[int]] | Sequence[str], max_new_tokens: int = 64, *,
             do_sample: bool = False, temperature: float = 1.0, top_k: int | None = 40, top_p: float = 1.0,
             seed: int = 0, num_samples: int = 1) -> list[list[Generation]]:
    """For each prompt (token ids, or text when the model has a tokenizer) ``num_samples`` generations."""
    prompt_ids = [loaded.require_tokenizer().encode(p) if isinstance(p, str) else list(p) for p in prompts]
    rows = [p for p in prompt_ids for _ in range(num_samples)]
    sample_ids = [i for _ in prompt_ids for i in range(num_samples)]
    gens = Generator(loaded).generate(rows, max_new_tokens, Sampling(do_sample, temperature, top_k, top_p), seed,
                                      sample_ids)
    return [gens[i * num_samples:(i + 1) * num_samples] for i in range(len(prompt_ids))]


@dataclasses.dataclass(frozen=True)
class GenerateConfig:
    """The settings of ``python -m bertgpt_jax.generate`` (besides the model's :class:`ModelSource`)."""

    prompt: str | None = setting(None, "The text to continue (or --prompt_file).")
    prompt_file: str | None = setting(None, "A text file with one prompt per line (blank lines are skipped).")
    max_new_tokens: int = setting(64, "Tokens to generate after each prompt (prompt + new tokens must fit the "
                                  "model's n_positions).")
    do_sample: bool = setting(True, "Sample (as GPT-2 did, with --top_k); --nodo_sample decodes greedily.")
    temperature: float = setting(1.0, "Divide the logits by this before sampling (0 = greedy).")
    top_k: int = setting(40, "Sample among the k most likely tokens (>= 1; the vocabulary size for no cut).")
    top_p: float = setting(1.0, "Sample within the nucleus: the fewest best tokens holding this probability mass, "
                           "in (0, 1] (1 = no cut).")
    seed: int = setting(0, "Sampling seed: the same seed gives the same samples.")
    num_samples: int = setting(1, "Samples per prompt.")
    batch_size: int = setting(8, "Sequences decoded together.")
    output_file: str | None = setting(None, "JSONL output, one record per sample: prompt, sample, token_ids (the "
                                      "new tokens), text, finish_reason.")

    def prompts(self) -> list[str]:
        if bool(self.prompt) == bool(self.prompt_file):
            raise ValueError("give exactly one of --prompt and --prompt_file")
        if self.prompt:
            return [self.prompt]
        if not os.path.exists(self.prompt_file):
            raise FileNotFoundError(f"--prompt_file {self.prompt_file} does not exist")
        with open(self.prompt_file, encoding="utf-8") as f:
            lines = [line.rstrip("\n") for line in f if line.strip()]
        if not lines:
            raise ValueError(f"--prompt_file {self.prompt_file} holds no prompt (it is empty or blank); write one "
                             "prompt per line")
        return lines


def run(source: ModelSource, cfg: GenerateConfig) -> list[dict]:
    """The records ``generate`` prints and writes, one per sample."""
    from tqdm import tqdm

    sampling = Sampling(cfg.do_sample, cfg.temperature, cfg.top_k, cfg.top_p)
    sampling.check()
    if cfg.num_samples < 1 or cfg.batch_size < 1:
        raise ValueError(f"num_samples ({cfg.num_samples}) and batch_size ({cfg.batch_size}) must be >= 1")
    texts = cfg.prompts()
    loaded = source.load(model_type="gpt2", purpose="generation")
    tokenizer = loaded.require_tokenizer()
    prompt_ids = [tokenizer.encode(t) for t in texts]
    generator = Generator(loaded)
    rows = [(i, s) for i in range(len(texts)) for s in range(cfg.num_samples)]
    generator.check_request([prompt_ids[i] for i, _ in rows], cfg.max_new_tokens)
    records = []
    for start in tqdm(range(0, len(rows), cfg.batch_size), unit="batch", disable=len(rows) <= cfg.batch_size):
        chunk = rows[start:start + cfg.batch_size]
        gens = generator.generate([prompt_ids[i] for i, _ in chunk], cfg.max_new_tokens, sampling, cfg.seed,
                                  [s for _, s in chunk])
        for (i, s), g in zip(chunk, gens):
            text_ids = g.token_ids[:-1] if g.finish_reason == "eos" else g.token_ids
            records.append({"prompt": texts[i], "sample": s, "token_ids": g.token_ids,
                            "text": tokenizer.decode(text_ids), "finish_reason": g.finish_reason})
    if cfg.output_file:
        from bertgpt_jax import atomic_files

        os.makedirs(os.path.dirname(os.path.abspath(cfg.output_file)), exist_ok=True)
        with atomic_files.atomic_open(cfg.output_file, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return records
