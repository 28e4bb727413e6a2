"""Chapter 01's baseline: bigram models, on the same corpora and tokenizers as the GPT.

A bigram predicts the next token from the current one only: P(b | a). Two of them:

  - **count-based** (no training): count the (a, b) pairs of the train split and normalize,
    with add-k smoothing so a pair never seen still gets probability k / (count(a) + k V):
        P(b | a) = (count(a, b) + k) / (count(a) + k V).
    `count_bigram` keeps the counts sparse, so it works for any vocabulary (GPT-2's 50257 too).
  - **learned**: a flax module holding a V x V table of next-token logits (row a = the logits
    after token a), trained by the shared train step in the shared loop like the GPT:
    `python train.py --model=bigram`. Its best val loss approaches the count-based one (the
    count-based bigram with a small k is the maximum-likelihood answer it is learning).

`BigramConfig` stands where a GPTConfig stands in the loop, the checkpoints and the samplers;
`generate` samples from a table with the GPT sampler's order of filters and keys. Importing this
module registers the "bigram" model family (jaxgpt.model.families), through which the core builds,
trains, loads and samples it without importing the course (and refuses an --init_from: a table
starts from nothing). `python -m jaxgpt.course.bigram --dataset=...` prints the count-based
bigram's val loss (see --help).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
from typing import Any, ClassVar, Dict, Iterator, List, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.cli import ConfigError, main_guard, parse_args
from jaxgpt.model.families import DEFAULT_FAMILY, ModelFamily, family_for, register_family
from jaxgpt.model.pretrained import HUB_NAMES
from jaxgpt.sample.decode import PAD_ID, as_key, as_rows, check_ids, top_k_filter, top_k_top_p_filter, top_p_filter
from jaxgpt.train.config import OPTIONS as TRAIN_OPTIONS, config_from_sources
from jaxgpt.train.loop import prepare_data
from jaxgpt.train.metrics import perplexity
from jaxgpt.train.run_dir import RUN_CONFIG_FILE, RunDir
from jaxgpt.train.tasks import LMBatches, Task, lm_loss

__all__ = ["BigramConfig", "Bigram", "BigramCounts", "count_bigram", "table_nll", "config_from_dict", "module_for",
           "config_from_options", "language_modeling", "pretraining_task", "count_baseline_line", "generate",
           "generate_stream", "MAX_TABLE_ENTRIES", "BIGRAM_FAMILY", "check_init_from", "describe_init_source", "main"]

# A learned table above 2^27 entries (0.5 GiB of float32, x3 with Adam's moments) is refused: GPT-2's
# 50257 tokens would need 2.5e9. The count-based bigram has no such limit (it stays sparse).
MAX_TABLE_ENTRIES = 2 ** 27


@dataclasses.dataclass(frozen=True)
class BigramConfig:
    """The learned bigram's shape. block_size is only the length of the training windows: the
    model itself reads one token."""
    vocab_size: int
    block_size: int = 128

    model: ClassVar[str] = "bigram"
    # What the shared loop and optimizer ask of a model config: no muP, no z-loss, no dropout.
    mup: ClassVar[bool] = False
    z_loss: ClassVar[float] = 0.0

    def __post_init__(self):
        for key in ("vocab_size", "block_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"BigramConfig.{key} must be an integer >= 1, got {value!r}")
        if self.vocab_size ** 2 > MAX_TABLE_ENTRIES:
            side = math.isqrt(MAX_TABLE_ENTRIES)
            raise ConfigError(f"a learned bigram over {self.vocab_size:,} tokens is a {self.vocab_size:,}^2 = "
                              f"{self.vocab_size ** 2:.2g}-entry table (the limit is {MAX_TABLE_ENTRIES:.2g}): use "
                              f"--tokenizer=char, or --tokenizer=bpe with --bpe_vocab_size <= {side}")

    def replace(self, **changes) -> "BigramConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        return {"model": self.model, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "BigramConfig":
        values = dict(values)
        if values.pop("model", None) != cls.model:
            raise ValueError("not a bigram model config (no \"model\": \"bigram\")")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"BigramConfig has no field(s) {unknown}")
        return cls(**values)

    def num_params(self, non_embedding: bool = True) -> int:
        return self.vocab_size ** 2

    def flops_per_token(self, seq_len: Optional[int] = None) -> float:
        """0: a table lookup has no matmul (MFU is not a measure of a bigram)."""
        return 0.0


class Bigram(nn.Module):
    """logits_BTV = table_VV[idx_BT]: row a of the table is the logits of the token after a.

    An nn.Embed of width V (makemore's bigram), zero-initialized so training starts from the
    uniform distribution (loss ln V). Its "embedding" leaf gets the loop's weight decay, which
    pulls unseen pairs back towards uniform: the learned counterpart of add-k smoothing."""
    config: BigramConfig

    @nn.compact
    def __call__(self, idx_BT: jax.Array, deterministic: bool = True) -> jax.Array:
        V = self.config.vocab_size
        table = nn.Embed(V, V, embedding_init=nn.initializers.zeros, name="table")
        return table(idx_BT).astype(jnp.float32)


def config_from_dict(values: Dict[str, Any]):
    """A checkpoint's model config: a BigramConfig when it says "model": "bigram", else a GPTConfig
    (the family its "model" key names)."""
    return family_for(values).config_from_dict(values)


def module_for(config) -> nn.Module:
    """The flax module of a model config: Bigram for a BigramConfig, GPT for a GPTConfig."""
    return family_for(config).module_for(config)


def config_from_options(options, vocab_size: int) -> BigramConfig:
    """--model=bigram's config from a run's options: only the vocabulary and the window length matter."""
    return BigramConfig(vocab_size=vocab_size, block_size=options.block_size)


def language_modeling(config: BigramConfig, data, seed: int):
    """The pretraining task with the bigram as its model: the same loss (next-token cross-entropy),
    the same batches (random windows), so the same train step and loop train it."""
    model = Bigram(config)
    init = lambda rng: model.init(rng, jnp.zeros((1, 1), jnp.int32))["params"]
    return Task("language_modeling", config, init, lm_loss(model), LMBatches(data, seed, config.block_size))


# ------------------------------------------------------------------------------ count-based

def _pieces(tokens) -> Sequence[np.ndarray]:
    """The contiguous pieces of a split (a sharded store's shards; else the one array): pairs
    never cross a piece's end."""
    return list(getattr(tokens, "shards", [tokens]))


def _pair_codes(tokens, vocab_size: int, chunk: int = 1 << 24) -> Iterator[np.ndarray]:
    """a * V + b for every adjacent pair (a, b), int64, a chunk at a time (flat memory)."""
    for piece in _pieces(tokens):
        for start in range(0, max(len(piece) - 1, 0), chunk):
            window = np.asarray(piece[start:start + chunk + 1], dtype=np.int64)
            yield window[:-1] * vocab_size + window[1:]


@dataclasses.dataclass(frozen=True)
class BigramCounts:
    """Pair counts of a token stream, sparse: the distinct codes a*V+b (sorted) and their counts,
    plus count(a) = sum over b."""
    vocab_size: int
    codes: np.ndarray  # (P,) int64, sorted
    counts: np.ndarray  # (P,) int64
    row_totals: np.ndarray  # (V,) int64

    def pair_count(self, codes: np.ndarray) -> np.ndarray:
        """count(a, b) for each code a*V+b (0 for pairs never seen)."""
        at = np.clip(np.searchsorted(self.codes, codes), 0, max(len(self.codes) - 1, 0))
        if not len(self.codes):
            return np.zeros(codes.shape, np.int64)
        return np.where(self.codes[at] == codes, self.counts[at], 0)

    def log_probs(self, k: float) -> np.ndarray:
        """The dense (V, V) float32 table log P(b | a) with add-k smoothing (small vocabularies)."""
        V = self.vocab_size
        if V * V > MAX_TABLE_ENTRIES:
            raise ConfigError(f"a dense {V} x {V} table is too large; use nll() for this vocabulary")
        dense = np.zeros(V * V, np.float64)
        dense[self.codes] = self.counts
        dense = dense.reshape(V, V) + k
        totals = dense.sum(axis=1, keepdims=True)
        with np.errstate(divide="ignore"):  # k = 0: unseen pairs are log 0 = -inf
            return (np.log(dense) - np.log(totals)).astype(np.float32)

    def nll(self, tokens, k: float) -> float:
        """Mean -log P(b | a) over every adjacent pair of `tokens`, add-k smoothed (nats/token).
        k = 0 gives inf when a pair never seen in the counts occurs."""
        if k < 0:
            raise ValueError(f"add-k smoothing needs k >= 0, got {k}")
        total, n = 0.0, 0
        V = self.vocab_size
        for codes in _pair_codes(tokens, V):
            a = codes // V
            num = self.pair_count(codes) + k
            den = self.row_totals[a] + k * V
            with np.errstate(divide="ignore", invalid="ignore"):
                total -= float(np.sum(np.log(num) - np.log(den)))
            n += len(codes)
        if n == 0:
            raise ValueError("no adjacent token pairs to score")
        return total / n if math.isfinite(total) else math.inf


def count_bigram(tokens, vocab_size: int) -> BigramCounts:
    """Count every adjacent pair of `tokens` (an array, or a sharded split's pieces)."""
    parts = [np.unique(codes, return_counts=True) for codes in _pair_codes(tokens, vocab_size)]
    if parts:
        all_codes = np.concatenate([c for c, _ in parts])
        all_counts = np.concatenate([n for _, n in parts])
        codes, inverse = np.unique(all_codes, return_inverse=True)
        counts = np.bincount(inverse, weights=all_counts, minlength=len(codes)).astype(np.int64)
    else:
        codes, counts = np.zeros(0, np.int64), np.zeros(0, np.int64)
    row_totals = np.bincount(codes // vocab_size, weights=counts, minlength=vocab_size).astype(np.int64)
    return BigramCounts(vocab_size, codes, counts, row_totals)


def table_nll(table_VV, tokens) -> float:
    """Mean -log softmax(table_VV[a])[b] over every adjacent pair (a, b) of `tokens`: a learned
    bigram's exact val loss (the loop's eval estimates it from eval_iters random windows)."""
    logits = np.asarray(table_VV, np.float64)
    top = logits.max(axis=1, keepdims=True)
    log_probs = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
    V = log_probs.shape[0]
    total, n = 0.0, 0
    for codes in _pair_codes(tokens, V):
        total -= float(log_probs.flat[codes].sum())
        n += len(codes)
    if n == 0:
        raise ValueError("no adjacent token pairs to score")
    return total / n


def count_baseline_line(data, k: float) -> Tuple[float, str]:
    """(val loss, the line the loop prints) of the count-based bigram counted on data's train
    split and scored on every pair of its val split."""
    counts = count_bigram(data.train, data.tokenizer.vocab_size)
    val = counts.nll(data.val, k)
    return val, (f"count-based bigram (add-{k:g} smoothing, counted on train): val loss {val:.4f} "
                 f"(ppl {perplexity(val):.2f}), every val pair")


# ------------------------------------------------------------------------------ sampling

@functools.partial(jax.jit, static_argnames=("max_new", "greedy", "top_k", "use_top_p", "use_eos", "return_logits"))
def _decode(table_VV, last_B, rng, temperature, top_p, eos_id, *, max_new, greedy, top_k, use_top_p, use_eos,
            return_logits):
    def step(carry, j):
        tok_B, done_B = carry
        logits_BV = table_VV[tok_B]
        if greedy:
            new_B = jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
        else:  # nanoGPT's order, as jaxgpt.sample.decode: / temperature, top-k, top-p, a draw with key fold_in(rng, j)
            scaled = logits_BV / temperature
            if top_k is not None and use_top_p:
                scaled = top_k_top_p_filter(scaled, top_k, top_p)
            elif top_k is not None:
                scaled = top_k_filter(scaled, top_k)
            elif use_top_p:
                scaled = top_p_filter(scaled, top_p)
            new_B = jax.random.categorical(jax.random.fold_in(rng, j), scaled, axis=-1).astype(jnp.int32)
        if use_eos:
            new_B = jnp.where(done_B, eos_id, new_B)
            done_B = done_B | (new_B == eos_id)
        return (new_B, done_B), (new_B, logits_BV if return_logits else jnp.zeros((0,), jnp.float32))

    init = (last_B, jnp.zeros(last_B.shape, bool))
    _, (new_NB, logits_NBV) = jax.lax.scan(step, init, jnp.arange(max_new, dtype=jnp.int32))
    return new_NB.T, (jnp.swapaxes(logits_NBV, 0, 1) if return_logits else None)


def generate(config: BigramConfig, params, prompt_ids, max_new_tokens: int, *, rng=None, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, eos_id: Optional[int] = None,
             return_logits: bool = False, window_stride: int = 1):
    """jaxgpt.sample.decode.generate for a bigram: the same arguments, output layout and keys (token j
    drawn with fold_in(rng, j)). Only each prompt's last token matters; window_stride has nothing
    to do (the model has no window)."""
    if isinstance(params, dict) and set(params) == {"params"}:
        params = params["params"]
    try:
        table_VV = jnp.asarray(params["table"]["embedding"])
    except (KeyError, TypeError):
        raise ValueError("params must be a bigram params tree with table/embedding") from None
    V = config.vocab_size
    if table_VV.shape != (V, V):
        raise ValueError(f"params do not match the config: table is {tuple(table_VV.shape)}, config wants ({V}, {V})")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, numbers.Integral) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
    if not (isinstance(temperature, numbers.Real) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    if top_p is not None and not (isinstance(top_p, numbers.Real) and 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be None or in (0, 1], got {top_p!r}")
    if eos_id is not None and not (isinstance(eos_id, numbers.Integral) and 0 <= eos_id < V):
        raise ValueError(f"eos_id must be None or a token id in [0, {V}), got {eos_id!r}")
    greedy = temperature == 0
    if not greedy and rng is None:
        raise ValueError("rng is required when temperature > 0 (pass jax.random.key(seed), or temperature=0)")
    key = jax.random.key(0) if greedy else as_key(rng)
    rows = as_rows(prompt_ids)
    check_ids(rows, V)
    N = int(max_new_tokens)
    new_BN, logits_BNV = _decode(
        table_VV, jnp.asarray([int(r[-1]) for r in rows], jnp.int32), key,
        jnp.float32(1.0 if greedy else temperature), jnp.float32(1.0 if top_p is None else top_p),
        jnp.int32(0 if eos_id is None else eos_id), max_new=N, greedy=greedy,
        top_k=None if greedy or top_k is None else min(int(top_k), V),
        use_top_p=not greedy and top_p is not None and top_p < 1.0, use_eos=eos_id is not None,
        return_logits=bool(return_logits))
    T0 = max(len(r) for r in rows)
    out = np.full((len(rows), T0 + N), PAD_ID, np.int32)
    for i, row in enumerate(rows):
        out[i, T0 - len(row):T0] = row
    out[:, T0:] = np.asarray(new_BN)
    return (out, np.asarray(logits_BNV)) if return_logits else out


def generate_stream(config: BigramConfig, params, prompt_ids, max_new_tokens: int, *, chunk_size: int = 8,
                    **kwargs) -> Iterator[np.ndarray]:
    """jaxgpt.sample.decode.generate_stream for a bigram: one (B,) array per new token, the same tokens
    as generate; stops once every row has emitted eos_id. (A table lookup per token is so cheap
    that the whole sequence is drawn in one call and then handed out.)"""
    out = generate(config, params, prompt_ids, max_new_tokens, **kwargs)  # validates before the first next()
    T0 = out.shape[1] - int(max_new_tokens)
    eos_id = kwargs.get("eos_id")

    def tokens() -> Iterator[np.ndarray]:
        for j in range(T0, out.shape[1]):
            yield out[:, j]
            if eos_id is not None and bool(np.all(out[:, j] == eos_id)):
                return

    return tokens()


# ------------------------------------------------------------------------------ the "bigram" model family

def pretraining_task(options, config: BigramConfig, data, pretrained: bool) -> Tuple[Task, List[str]]:
    """The loop's pretraining for --model=bigram: the same loop and step train the table, and the
    count-based bigram's val loss is printed beside it. (task, the lines the loop prints first)."""
    if pretrained:
        raise ConfigError(f"--model=bigram trains a table from scratch; --init_from={options.init_from} is a GPT")
    task = language_modeling(config, data, options.seed)
    return task, [count_baseline_line(data, options.bigram_smoothing)[1]]


def describe_init_source(init_from: str) -> str:
    """What an --init_from names, in words: a GPT-2 hub name, a jaxgpt run (of which model), a GPT-2
    checkpoint directory, or a directory with none of these."""
    if init_from in HUB_NAMES:
        return f"the GPT-2 checkpoint {init_from!r}"
    run = RunDir(init_from)
    if os.path.isfile(run.run_config_path):
        try:
            options = run.read_run_config()
        except ConfigError:
            return f"a run directory whose {RUN_CONFIG_FILE} cannot be read"
        model = options.get("model", DEFAULT_FAMILY)
        shape = ", ".join(f"{k}={options[k]}" for k in ("n_layer", "n_head", "n_embd") if k in options)
        return "a bigram run" if model == BigramConfig.model else f"a {model.upper()} run ({shape})"
    if os.path.isfile(os.path.join(init_from, "config.json")):
        return "a Hugging Face GPT-2 checkpoint directory"
    return f"a directory with no run in it (no {RUN_CONFIG_FILE}, no config.json)"


def check_init_from(init_from: str) -> None:
    """--model=bigram starts from no weights: any --init_from but scratch and resume is refused,
    saying what it names (the loop asks before reading any weights)."""
    what = describe_init_source(init_from)
    if what == "a bigram run":
        raise ConfigError(f"--init_from={init_from} is a bigram run, but --model=bigram trains its table from scratch: "
                          f"to continue that run, pass --out_dir={init_from} --init_from=resume")
    raise ConfigError(f"--init_from={init_from} is {what}, not a bigram run: --model=bigram trains its table from "
                      "scratch (--init_from=scratch), or continues a bigram run in --out_dir (--init_from=resume)")


BIGRAM_FAMILY = ModelFamily(config_from_dict=BigramConfig.from_dict, module_for=Bigram,
                            config_from_options=config_from_options, language_modeling=pretraining_task,
                            generate=generate, generate_stream=generate_stream, check_init_from=check_init_from)
register_family(BigramConfig.model, BIGRAM_FAMILY)


# ------------------------------------------------------------------------------ the command line

CLI_KEYS = ("dataset", "tokenizer", "bpe_vocab_size", "val_fraction", "data_dir", "bigram_smoothing")
CLI_SUMMARY = ("The count-based bigram's val loss on a dataset: chapter 01's baseline, counted on the train split, "
               "scored on every val pair. The learned bigram trains with train.py: python train.py configs/bigram.py")


def main(argv: Sequence[str]) -> None:
    """python -m jaxgpt.course.bigram [--dataset=...] [--tokenizer=char] [--bigram_smoothing=1.0] ..."""
    opts = parse_args({key: TRAIN_OPTIONS[key] for key in CLI_KEYS}, argv, "-m jaxgpt.course.bigram", CLI_SUMMARY)
    cfg = config_from_sources({**opts, "model": BigramConfig.model})
    _, data = prepare_data(cfg)
    print(count_baseline_line(data, cfg.bigram_smoothing)[1])


if __name__ == "__main__":
    main_guard(main)
