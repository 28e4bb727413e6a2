"""Instruction fine-tuning (SFT) as a task of the shared training loop.

    data = load_sft_data("embedded", tokenizer=None, template="short", max_length=100)  # all in one, or:
    records, source = instruct_data.resolve_records("embedded")
    splits = instruct_data.split_records(records, seed=123)                    # 85/10/5, by content
    tokenizer = char_tokenizer_for(records, "short")                           # or the backbone's
    data = prepare_sft(splits, tokenizer, template="short", max_length=100, source=source)
    print(describe(data))                                                      # counts, truncations
    save_sft_config(out_dir, data)                                             # sft.json, at the start
    task = build_sft_task(model_config, data, seed=1337)                       # a jaxgpt.train.tasks.Task
    ... the loop trains task.loss on task.batches ...
    metrics = finish(model_config, params, data, out_dir)   # responses.jsonl + test metrics

An example is the token sequence  prompt(template, instruction, input) + output + EOS,  where EOS
is the tokenizer's <|endoftext|> id, or for a char tokenizer (which has none) the character
END_CHAR (U+0003, ASCII "end of text"), which must be in its vocabulary (char_tokenizer_for puts
it there). Sequences longer than max_length + 1 tokens are cut at the end (counted per split).

A batch is (x_ABT, y_ABT) int32 host numpy, y = x shifted by one, right-padded to a length T
from `length_buckets(max_length)` (powers of two from 16, then max_length), so the jitted step
compiles at most len(buckets) times. Targets that do not count are -1 (ignored by
jaxgpt.model.gpt.cross_entropy_loss): padding always, prompt tokens unless mask_prompt=False. So the
loss is the mean cross-entropy over the counted tokens of each micro-batch.

The run directory gets sft.json (SFT_CONFIG_FILE: the template, EOS, options), which sample.py
--instruction reads to ask a fine-tuned model with the same template.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import jax
import numpy as np

from jaxgpt.model.config import GPTConfig
from jaxgpt.data.corpus import DataError
from jaxgpt.data.sampler_state import int_fields, not_a_state
from jaxgpt.files import atomic_write, read_json, write_json_atomic
from jaxgpt.finetune.instruct_data import SPLITS, Record, resolve_records, split_records
from jaxgpt.model.gpt import GPT
from jaxgpt.sample.decode import generate
from jaxgpt.train.run_dir import RESPONSES_FILE, SFT_CONFIG_FILE, RunDir
from jaxgpt.train.tasks import Task, lm_loss, model_init
from jaxgpt.data.tokenizers import CharTokenizer, Tokenizer

__all__ = ["END_CHAR", "SFT_CONFIG_FILE", "RESPONSES_FILE", "Template", "TEMPLATES", "resolve_template",
           "eos_id_for", "char_tokenizer_for", "length_buckets", "EncodedSplit", "encode_split", "SFTData",
           "prepare_sft", "load_sft_data", "describe", "make_batch", "SFTBatches", "SFT_TRAINABLE", "sft_trainable_mask",
           "build_sft_task", "respond", "exact_match", "finish",
           "save_sft_config", "read_sft_config"]

END_CHAR = "\x03"  # the char tokenizer's end-of-response marker (ASCII ETX, "end of text")
# SFT_CONFIG_FILE, RESPONSES_FILE: the run directory's names (jaxgpt.train.run_dir), kept importable from here
IGNORE = -1  # cross_entropy_loss's ignore_index
MIN_BUCKET = 16
_FORMAT, _VERSION = "jaxgpt.sft", 1


# --------------------------------------------------------------------------------- template

@dataclasses.dataclass(frozen=True)
class Template:
    """Alpaca-style prompt. `with_input` / `without_input` hold {instruction} (and {input});
    the response follows the prompt directly, then EOS."""

    name: str
    with_input: str
    without_input: str

    def prompt(self, instruction: str, input: str = "") -> str:
        text = self.with_input if input else self.without_input
        values = {"instruction": instruction, "input": input}
        # One pass, so braces or placeholders inside the data are never expanded.
        return re.sub(r"\{(instruction|input)\}", lambda m: values[m.group(1)], text)

    def to_dict(self) -> Dict[str, str]:
        return dataclasses.asdict(self)


_ALPACA_HEAD = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
TEMPLATES = {
    # Raschka's format_input (LLMs from scratch, ch07): one preamble, an Input section only when given.
    "alpaca": Template("alpaca", _ALPACA_HEAD + "\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
                       _ALPACA_HEAD + "\n\n### Instruction:\n{instruction}\n\n### Response:\n"),
    # The same sections without the preamble: 2x shorter sequences for a char model.
    "short": Template("short", "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
                      "### Instruction:\n{instruction}\n\n### Response:\n"),
    # The same three parts on three lines, "=" before the response: a char model trained from
    # scratch spends most of its compute on the template otherwise (the embedded demo's choice).
    "compact": Template("compact", "{instruction}\n{input}\n=", "{instruction}\n="),
}


def resolve_template(spec: Union[str, Template, Dict[str, str]]) -> Template:
    """A Template from a name in TEMPLATES, a Template or its to_dict(), or a custom format string
    holding {instruction} (and optionally {input}, left empty when a record has none)."""
    if isinstance(spec, Template):
        return spec
    if isinstance(spec, dict):
        try:
            return Template(str(spec["name"]), str(spec["with_input"]), str(spec["without_input"]))
        except KeyError as e:
            raise DataError(f"template description lacks {e.args[0]!r}") from None
    if not isinstance(spec, str) or not spec:
        raise DataError(f"template must be one of {list(TEMPLATES)} or a format string, got {spec!r}")
    if spec in TEMPLATES:
        return TEMPLATES[spec]
    if "{instruction}" not in spec:
        raise DataError(f"template {spec!r} is neither one of {list(TEMPLATES)} nor a format string with "
                        "{instruction}")
    return Template("custom", spec, spec)


# ------------------------------------------------------------------------------ tokens

def eos_id_for(tokenizer: Tokenizer) -> int:
    """<|endoftext|> when the tokenizer has it, else END_CHAR's id (char tokenizers)."""
    if tokenizer.eot_id is not None:
        return int(tokenizer.eot_id)
    if isinstance(tokenizer, CharTokenizer) and END_CHAR in tokenizer.chars:
        return tokenizer.encode(END_CHAR)[0]
    raise DataError(f"the {tokenizer.name} tokenizer has no end-of-text token and no END_CHAR (U+0003) "
                    "to end responses with: build its vocabulary with jaxgpt.finetune.instruct.char_tokenizer_for")


def char_tokenizer_for(records: Sequence[Record], template: Union[str, Template], extra_text: str = "") -> CharTokenizer:
    """A char vocabulary covering the template, every record and END_CHAR (plus extra_text)."""
    t = resolve_template(template)
    parts = [t.with_input, t.without_input, END_CHAR, extra_text]
    parts += [s for r in records for s in (r.instruction, r.input, r.output)]
    return CharTokenizer.from_text("".join(parts))


def length_buckets(max_length: int, smallest: int = MIN_BUCKET) -> Tuple[int, ...]:
    """Padded input lengths: powers of two from `smallest` below max_length, then max_length."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise DataError(f"max_length must be an integer >= 2, got {max_length!r}")
    out, b = [], smallest
    while b < max_length:
        out.append(b)
        b *= 2
    return tuple(out) + (max_length,)


@dataclasses.dataclass(frozen=True)
class EncodedSplit:
    """One split as a padded token matrix (no per-example Python when batching).

    tokens_NL: (N, max_length + 1) int32, example i in tokens_NL[i, :lengths_N[i]];
    prompt_N: prompt tokens of each example (targets before them are the prompt's);
    n_truncated: examples cut to max_length + 1 tokens; n_no_response: of those, ones whose
    prompt alone filled the room (nothing of the response is left to learn)."""

    tokens_NL: np.ndarray
    lengths_N: np.ndarray
    prompt_N: np.ndarray
    n_truncated: int
    n_no_response: int

    def __len__(self) -> int:
        return len(self.lengths_N)


def _encode(tokenizer: Tokenizer, text: str, where: str) -> List[int]:
    try:
        return tokenizer.encode(text)
    except ValueError as e:  # a char vocabulary without some character of the data
        raise DataError(f"{where}: {e}") from None


def encode_split(records: Sequence[Record], tokenizer: Tokenizer, template: Template, eos_id: int,
                 max_length: int, split: str = "train") -> EncodedSplit:
    L = max_length + 1
    tokens = np.zeros((len(records), L), np.int32)
    lengths = np.zeros(len(records), np.int32)
    prompts = np.zeros(len(records), np.int32)
    n_trunc = n_none = 0
    for i, r in enumerate(records):
        where = f"{split} record {i}"
        p = _encode(tokenizer, template.prompt(r.instruction, r.input), where)
        seq = p + _encode(tokenizer, r.output, where) + [eos_id]
        if len(seq) > L:
            n_trunc += 1
            n_none += len(p) >= L
            seq = seq[:L]
        tokens[i, :len(seq)] = seq
        lengths[i], prompts[i] = len(seq), min(len(p), len(seq))
    return EncodedSplit(tokens, lengths, prompts, n_trunc, n_none)


@dataclasses.dataclass(frozen=True)
class SFTData:
    """Everything an SFT run needs from its data, validated and encoded."""

    records: Dict[str, List[Record]]
    encoded: Dict[str, EncodedSplit]
    tokenizer: Tokenizer
    template: Template
    eos_id: int
    max_length: int
    mask_prompt: bool
    source: str

    @property
    def buckets(self) -> Tuple[int, ...]:
        return length_buckets(self.max_length)

    def summary(self) -> Dict[str, Any]:
        """Counts for logs and sft.json: examples and truncations per split."""
        return {"source": self.source, "examples": {s: len(self.records[s]) for s in SPLITS},
                "truncated": {s: self.encoded[s].n_truncated for s in SPLITS},
                "no_response_left": {s: self.encoded[s].n_no_response for s in SPLITS},
                "buckets": list(self.buckets)}


def describe(data: "SFTData") -> str:
    """One line for a run's header: the data, the split sizes and the truncations."""
    n = {s: len(data.records[s]) for s in SPLITS}
    cut = {s: data.encoded[s].n_truncated for s in SPLITS}
    return (f"sft: {data.source} | {n['train']}/{n['val']}/{n['test']} train/val/test | template {data.template.name} | "
            f"max_length {data.max_length}: truncated {cut['train']}/{cut['val']}/{cut['test']} | buckets "
            f"{list(data.buckets)} | loss on {'responses' if data.mask_prompt else 'prompts and responses'}")


def prepare_sft(splits: Dict[str, List[Record]], tokenizer: Tokenizer, template: Union[str, Template] = "alpaca",
                max_length: int = 256, mask_prompt: bool = True, source: str = "") -> SFTData:
    """Encode the train/val/test records (see the module docstring for the sequence layout)."""
    missing = [s for s in SPLITS if not splits.get(s)]
    if missing:
        raise DataError(f"SFT needs non-empty {', '.join(missing)} split(s)")
    t = resolve_template(template)
    eos = eos_id_for(tokenizer)
    length_buckets(max_length)  # validates max_length
    encoded = {s: encode_split(splits[s], tokenizer, t, eos, max_length, s) for s in SPLITS}
    if encoded["train"].n_no_response == len(encoded["train"]):  # the loss would count no token: nothing learned
        raise DataError(f"max_length={max_length} (finetune.py's --block_size) leaves no room for a response: the "
                        f"prompt alone fills it in all {len(encoded['train'])} train examples; raise it")
    return SFTData({s: list(splits[s]) for s in SPLITS}, encoded, tokenizer, t, eos, max_length,
                   bool(mask_prompt), source)


def load_sft_data(dataset: str = "embedded", tokenizer: Optional[Tokenizer] = None, *,
                  template: Union[str, Template] = "short", max_length: int = 100, mask_prompt: bool = True,
                  split_seed: int = 123, n_per_kind: int = 1000, cache_dir: Optional[str] = None) -> SFTData:
    """Config values -> SFTData in one call: the records (instruct_data.resolve_records; the
    embedded ones are drawn with split_seed too), the 85/10/5 content split, the encoding.
    tokenizer: the backbone's; None builds a char vocabulary for them (char_tokenizer_for),
    for a model trained from scratch."""
    records, source = resolve_records(dataset, cache_dir, n_per_kind=n_per_kind, seed=split_seed)
    if tokenizer is None:
        tokenizer = char_tokenizer_for(records, template)
    return prepare_sft(split_records(records, seed=split_seed), tokenizer, template, max_length, mask_prompt, source)


# ------------------------------------------------------------------------------ batches

def _bucket(buckets: Tuple[int, ...], n: int) -> int:
    return next(b for b in buckets if b >= n)


def make_batch(split: EncodedSplit, idx: np.ndarray, buckets: Tuple[int, ...], mask_prompt: bool,
               pad_id: int, T: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """(x, y) of shape idx.shape + (T,); T defaults to the smallest bucket holding every chosen
    example (a process's rows take the global batch's T, so all processes agree)."""
    lengths = split.lengths_N[idx][..., None]  # (..., 1)
    prompt = split.prompt_N[idx][..., None]
    if T is None:
        T = _bucket(buckets, int(lengths.max()) - 1)
    t = split.tokens_NL[idx]
    j = np.arange(T)
    real = j < lengths - 1  # input position j predicts token j + 1
    counted = real & ((j >= prompt - 1) | (not mask_prompt))  # target j + 1 is a response token
    x = np.where(real, t[..., :T], pad_id).astype(np.int32)
    y = np.where(counted, t[..., 1:T + 1], IGNORE).astype(np.int32)
    return x, y


class SFTBatches:
    """BatchSource of an SFT run. Train: epochs of a permutation seeded by (seed, epoch), drawn
    in order, so the state is two integers and a resume is exact. Eval: every call scores the
    same examples of the split, the first n_batches * batch_size of a seeded order (wrapping
    around a smaller split), so eval losses compare across the run."""

    def __init__(self, data: SFTData, seed: int):
        self.data, self.seed = data, int(seed)
        self.epoch, self.pos = 0, 0
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        n = len(self.data.encoded["train"])
        return np.random.Generator(np.random.PCG64([self.seed, epoch])).permutation(n)

    def _take(self, count: int) -> np.ndarray:
        out = []
        while count:
            if self.pos == len(self._perm):
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
            k = min(count, len(self._perm) - self.pos)
            out.append(self._perm[self.pos:self.pos + k])
            self.pos, count = self.pos + k, count - k
        return np.concatenate(out)

    def _batch(self, split: str, idx_AB: np.ndarray, rows: slice):
        # The global batch is drawn whole, then this process keeps its rows with the global T.
        d = self.data
        T = _bucket(d.buckets, int(d.encoded[split].lengths_N[idx_AB].max()) - 1)
        return make_batch(d.encoded[split], idx_AB[:, rows], d.buckets, d.mask_prompt, d.eos_id, T)

    def train_batch(self, accum_steps: int, batch_size: int, rows: slice):
        return self._batch("train", self._take(accum_steps * batch_size).reshape(accum_steps, batch_size), rows)

    def eval_batch(self, split: str, n_batches: int, batch_size: int, rows: slice):
        n = len(self.data.encoded[split])
        order = np.random.Generator(np.random.PCG64([self.seed, 1 + SPLITS.index(split)])).permutation(n)
        return self._batch(split, np.resize(order, n_batches * batch_size).reshape(n_batches, batch_size), rows)

    def state_dict(self) -> Dict[str, Any]:  # the position's layout: jaxgpt.data.sampler_state
        return {"sft_batches": {"seed": self.seed, "epoch": self.epoch, "pos": self.pos}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        try:
            seed, epoch, pos = int_fields(state["sft_batches"], ("seed", "epoch", "pos"))
        except (KeyError, TypeError, ValueError) as e:
            raise not_a_state("an SFT batch state", e) from None
        self.seed, self.epoch, self.pos = seed, epoch, pos
        self._perm = self._permutation(epoch)


SFT_TRAINABLE = ("all", "last_block")  # --trainable values an SFT run honours (head and LoRA are classification's)


def sft_trainable_mask(params, trainable: str, n_layer: int):
    """A bool per leaf of a GPT's params: everything, or (last_block) the last block, ln_f and an
    untied lm_head; frozen leaves get no update and no AdamW moments (jaxgpt.train.optim.freeze)."""
    if trainable not in SFT_TRAINABLE:
        raise ValueError(f"SFT trains one of {SFT_TRAINABLE}, got {trainable!r}")
    last = {f"h_{n_layer - 1}", "ln_f", "lm_head"}
    return jax.tree_util.tree_map_with_path(
        lambda path, _leaf: trainable == "all" or str(getattr(path[0], "key", path[0])) in last, params)


def build_sft_task(model_config: GPTConfig, data: SFTData, seed: int, trainable: str = "all") -> Task:
    """The SFT Task of the shared loop.

    model_config: the backbone's GPTConfig (a train.py run, GPT-2 or scratch); its block_size
        must be >= data.max_length and its vocab_size >= the tokenizer's.
    data: from prepare_sft, with the backbone's tokenizer (or char_tokenizer_for for scratch),
        config values template, max_length, mask_prompt, and the dataset/split seeds upstream.
    seed: the batch order's seed (cfg.seed).
    The loss is jaxgpt.train.tasks.lm_loss on (x, y): next-token cross-entropy over the counted targets.
    init_params initializes a fresh GPT; pretrained backbone params go to the loop as usual.
    Eval splits: train and val (the loop's train_loss / val_loss); test is finish()'s.
    """
    if data.max_length > model_config.block_size:
        raise DataError(f"max_length={data.max_length} exceeds the model's block_size={model_config.block_size}")
    if data.tokenizer.vocab_size > model_config.vocab_size:
        raise DataError(f"the tokenizer has {data.tokenizer.vocab_size} ids but the model only "
                        f"{model_config.vocab_size}: they do not fit together")
    model = GPT(model_config)
    mask = None if trainable == "all" else (lambda params: sft_trainable_mask(params, trainable, model_config.n_layer))
    return Task("sft", model_config, model_init(model), lm_loss(model), SFTBatches(data, seed), ("train", "val"),
                trainable=mask)


# -------------------------------------------------------------------- responses and scoring

def respond(model_config: GPTConfig, params, tokenizer: Tokenizer, template: Template, eos_id: int,
            prompts: Sequence[Tuple[str, str]], max_new_tokens: int, *, batch_size: int = 64,
            temperature: float = 0.0, top_k: Optional[int] = None, rng: Optional[jax.Array] = None) -> List[str]:
    """Responses to (instruction, input) pairs: the template applied, generated in batches of
    batch_size by jaxgpt.sample.decode.generate (one compiled loop per batch, stopping at eos), cut
    at the first eos. Greedy by default. The last batch is filled up with copies so every batch
    has the same shape."""
    ids = [tokenizer.encode(template.prompt(i, x)) for i, x in prompts]
    bs = max(1, min(batch_size, len(ids)))
    out: List[str] = []
    for start in range(0, len(ids), bs):
        chunk = ids[start:start + bs]
        n = len(chunk)
        chunk = chunk + [chunk[0]] * (bs - n)
        key = None if rng is None else jax.random.fold_in(rng, start)
        toks = generate(model_config, params, chunk, max_new_tokens, rng=key, temperature=temperature,
                        top_k=top_k, eos_id=eos_id)
        T0 = max(len(c) for c in chunk)
        for row in np.asarray(toks)[:n, T0:]:
            stop = np.flatnonzero(row == eos_id)
            row = row[:stop[0]] if stop.size else row
            out.append(tokenizer.decode([int(t) for t in row if 0 <= t < tokenizer.vocab_size]))
    return out


def exact_match(expected: Sequence[str], generated: Sequence[str], kinds: Sequence[Optional[str]]) -> Dict[str, float]:
    """test_exact_match overall and test_exact_match_<kind> per kind (surrounding whitespace
    ignored). Kinds None are counted overall only."""
    hits = np.array([e.strip() == g.strip() for e, g in zip(expected, generated)], bool)
    out = {"test_exact_match": float(hits.mean()) if hits.size else float("nan")}
    for kind in sorted({k for k in kinds if k is not None}):
        sel = np.array([k == kind for k in kinds])
        out[f"test_exact_match_{kind}"] = float(hits[sel].mean())
    return out


def _test_loss(model_config: GPTConfig, params, data: SFTData, batch_size: int) -> float:
    """Mean cross-entropy over every counted token of the test split."""
    loss = jax.jit(lm_loss(GPT(model_config)), static_argnums=2)
    enc = data.encoded["test"]
    total = count = 0.0
    for start in range(0, len(enc), batch_size):
        idx = np.arange(start, min(start + batch_size, len(enc)))
        x, y = make_batch(enc, idx, data.buckets, data.mask_prompt, data.eos_id)
        n = float((y != IGNORE).sum())
        total += float(loss(params, (x, y), None)[0]) * n
        count += n
    return total / max(count, 1.0)


def _write_jsonl(path: str, rows: Sequence[Dict[str, Any]]) -> None:
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def finish(model_config: GPTConfig, params, data: SFTData, out_dir: str, *, batch_size: int = 64,
           max_new_tokens: Optional[int] = None) -> Dict[str, Any]:
    """End of an SFT run: greedy responses to every test record into out_dir/responses.jsonl
    (instruction, input, expected, generated, and kind for the embedded task), and the test
    metrics: test_loss (over counted tokens), test_examples, test_truncated and, when the records
    have kinds, test_exact_match overall and per kind. Returns them (the loop's final event).
    max_new_tokens: default the longest response of any split plus one (with EOS), so an answer
    that runs on is seen as wrong; at most block_size."""
    params = jax.device_get(params)
    if max_new_tokens is None:
        longest = max(int((e.lengths_N - e.prompt_N).max()) for e in data.encoded.values())
        max_new_tokens = min(model_config.block_size, longest + 1)
    test = data.records["test"]
    generated = respond(model_config, params, data.tokenizer, data.template, data.eos_id,
                        [(r.instruction, r.input) for r in test], max_new_tokens, batch_size=batch_size)
    rows = [{"instruction": r.instruction, "input": r.input, "expected": r.output, "generated": g,
             **({"kind": r.kind} if r.kind is not None else {})} for r, g in zip(test, generated)]
    os.makedirs(out_dir, exist_ok=True)
    _write_jsonl(RunDir(out_dir).responses_path, rows)
    metrics: Dict[str, Any] = {"test_loss": _test_loss(model_config, params, data, batch_size),
                               "test_examples": len(test), "test_truncated": data.encoded["test"].n_truncated}
    if any(r.kind is not None for r in test):
        metrics.update(exact_match([r.output for r in test], generated, [r.kind for r in test]))
    return metrics


# ------------------------------------------------------------------------------ sft.json

def save_sft_config(out_dir: str, data: SFTData) -> None:
    """out_dir/sft.json: what asking the model later needs (template, EOS) and the data counts."""
    d = {"format": _FORMAT, "version": _VERSION, "template": data.template.to_dict(), "eos_id": data.eos_id,
         "max_length": data.max_length, "mask_prompt": data.mask_prompt, **data.summary()}
    write_json_atomic(RunDir(out_dir).sft_config_path, d, indent=1, sort_keys=False)


def read_sft_config(out_dir: str) -> Tuple[Template, int, Dict[str, Any]]:
    """(template, eos_id, the whole sft.json) of an SFT run directory; DataError when absent."""
    path = RunDir(out_dir).sft_config_path
    d = read_json(path, error=DataError, unreadable=lambda reason: f"{path} is missing ({reason}): is {out_dir} an "
                                                                   "instruction fine-tuning run?")
    if not isinstance(d, dict) or d.get("format") != _FORMAT or d.get("version") != _VERSION:
        raise DataError(f"{path} is not a jaxgpt SFT description (format {_FORMAT!r} version {_VERSION})")
    try:
        return resolve_template(d["template"]), int(d["eos_id"]), d
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path} is malformed ({type(e).__name__}: {e})") from None
