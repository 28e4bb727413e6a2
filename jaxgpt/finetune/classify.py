"""Text classification as a task of the shared training loop (the course's chapter 6).

A GPT backbone reads the text; a linear head reads one pooled hidden state:
  - pooling="last": the hidden state of the last NON-padding token (the only position that has
    seen the whole text under causal attention), found from the mask whatever side pads;
  - pooling="mean": the mean over the real tokens;
  - pooling="max": the per-feature maximum over the real tokens (a cue anywhere in the text, such
    as a phone number in a spam message, is not averaged away).

Batches are two (A, B, T) int32 arrays like pretraining's: tokens, and targets that hold the
row's label at every real token and -1 at padding. So the mask is `targets >= 0`, the label is the
row's max, and a row of -1 (eval filler) counts nowhere. With --long_text=chunks, where some text
needs several windows (jaxgpt.finetune.windows), a row is a window and a third (A, B, 1) array, `slot`,
says which text of the batch it belongs to; the windows' pooled features are pooled per text
(combine_windows) before the head. Without long texts, chunks batches are the plain two arrays.

Params: {"backbone": GPT params, "head": {"kernel": (D, C), "bias": (C,)}, "lora": adapters
(trainable="lora" only)}. What trains (`trainable`) is a static mask: jaxgpt.train.optim.freeze keeps
frozen leaves out of AdamW, and the loss stops their gradients so XLA skips that backward work.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgpt.cli import ConfigError
from jaxgpt.model import lora as lora_lib
from jaxgpt.data.sampler_state import pcg64_words, restore_pcg64
from jaxgpt.finetune import baseline as baseline_lib
from jaxgpt.finetune.soup import average, greedy_soup, soup_members
from jaxgpt.finetune.classify_data import Splits
from jaxgpt.finetune.windows import MAX_WINDOWS, assemble, pack_in_order, windows_of
from jaxgpt.model.config import GPTConfig
from jaxgpt.model.gpt import GPT, cross_entropy_loss
from jaxgpt.train import sharding
from jaxgpt.train.metrics import read_metrics
from jaxgpt.train.run_dir import RUN_CONFIG_FILE, RunDir, being_written_note, run_task, what_the_run_is
from jaxgpt.train.tasks import Task
from jaxgpt.data.tokenizers import CharTokenizer, Tokenizer
from jaxgpt.viz.figures import plot_confusion_matrix

__all__ = ["TRAINABLE", "POOLINGS", "LONG_TEXTS", "Encoded", "cut_to", "encode_texts", "pool", "combine_windows",
           "classifier_init", "classifier_logits",
           "classification_loss", "next_token_loss", "trainable_mask", "ClassifyBatches", "classification_metrics",
           "classification_task", "SavedClassifier", "load_classifier", "classify_texts"]

TRAINABLE = ("all", "last_block", "head", "lora")
POOLINGS = ("last", "mean", "max")
PAD_ID = 0  # any id: padding is masked out of pooling and never attended to by real tokens (causal)


# ------------------------------------------------------------------------------ tokenization

@dataclasses.dataclass(frozen=True)
class Encoded:
    tokens_NT: np.ndarray  # int32, right-padded with PAD_ID; a row per text (per window with chunks)
    lengths_N: np.ndarray  # real tokens per row (>= 1)
    unknown_chars: int  # characters a char tokenizer lacked, mapped to unknown_id
    truncated: int  # texts longer than T tokens: cut (head, tail, head_tail) or read in windows (chunks)
    windows_N: Optional[np.ndarray] = None  # chunks: rows (windows) per text, in order; None: one each

    @property
    def windowed(self) -> bool:
        """Whether some text has several rows (only then do batches carry a slot array)."""
        return self.windows_N is not None and bool(np.any(self.windows_N > 1))


def unknown_id(tokenizer: Tokenizer) -> Optional[int]:
    """Where a char backbone's unseen characters go: '?' if it knows it, else its first char."""
    if not isinstance(tokenizer, CharTokenizer):
        return None  # byte-level BPEs encode anything
    return tokenizer.chars.index("?") if "?" in tokenizer.chars else 0


LONG_TEXTS = ("head", "tail", "head_tail", "chunks")


def cut_to(ids: List[int], T: int, long_text: str = "head") -> List[int]:
    """At most T ids of a text: its first T (head), its last T (tail), or its first T // 2 followed by
    its last T - T // 2 (head_tail: Sun et al. 2019, "How to Fine-Tune BERT for Text Classification").
    (chunks keeps every part: jaxgpt.finetune.windows.)"""
    if len(ids) <= T:
        return list(ids)
    if long_text == "head":
        return list(ids[:T])
    if long_text == "tail":
        return list(ids[len(ids) - T:])
    if long_text == "head_tail":
        return list(ids[:T // 2]) + list(ids[len(ids) - (T - T // 2):])
    raise ValueError(f"long_text must be one of {LONG_TEXTS[:3]}, got {long_text!r}")


def encode_texts(tokenizer: Tokenizer, texts: Sequence[str], T: int, long_text: str = "head",
                 max_windows: int = MAX_WINDOWS) -> Encoded:
    """Token ids of each text, cut to T (cut_to) or, with chunks, in windows of T (at most max_windows,
    jaxgpt.finetune.windows), right-padded; an empty text becomes one unknown/space token."""
    unk = unknown_id(tokenizer)
    unknown = 0
    if isinstance(tokenizer, CharTokenizer):
        stoi = {c: i for i, c in enumerate(tokenizer.chars)}
        rows = []
        for text in texts:
            ids = [stoi.get(c, -1) for c in text]
            unknown += sum(1 for i in ids if i < 0)
            rows.append([unk if i < 0 else i for i in ids])
    else:
        rows = [list(r) for r in tokenizer.encode_batch(list(texts))]
    windows, truncated = [], 0
    for ids in rows:
        if not ids:
            ids = [unk if unk is not None else tokenizer.encode(" ")[0]]
        truncated += len(ids) > T
        windows.append(windows_of(ids, T, max_windows) if long_text == "chunks" else [cut_to(ids, T, long_text)])
    flat = [w for text in windows for w in text]
    tokens = np.full((len(flat), T), PAD_ID, np.int32)
    lengths = np.zeros(len(flat), np.int32)
    for n, ids in enumerate(flat):
        tokens[n, :len(ids)] = ids
        lengths[n] = len(ids)
    windows_N = np.asarray([len(w) for w in windows], np.int32) if long_text == "chunks" else None
    return Encoded(tokens, lengths, unknown, truncated, windows_N)


def targets_for(lengths_N: np.ndarray, label_ids_N: np.ndarray, T: int) -> np.ndarray:
    """(N, T): the label at every real token, -1 at padding."""
    real_NT = np.arange(T)[None, :] < lengths_N[:, None]
    return np.where(real_NT, label_ids_N[:, None], -1).astype(np.int32)


# ---------------------------------------------------------------------------------- the model

def pool(h_BTD: jax.Array, mask_BT: jax.Array, pooling: str = "last") -> jax.Array:
    """(B, D): the hidden state of the last real token (mask True), or the mean or the per-feature
    max over real tokens. Works for left and right padding alike: the position comes from the
    mask, not from a length. A row with no real token pools to zeros under mean and max."""
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    if pooling == "max":
        any_B1 = jnp.any(mask_BT, axis=1, keepdims=True)
        masked_BTD = jnp.where(mask_BT[:, :, None], h_BTD, jnp.finfo(h_BTD.dtype).min)
        # the max by gathering at its argmax: the gradient goes to that position. jnp.max's own gradient
        # divides by the count of positions equal to the max, and XLA:CPU without optimizations (the
        # suite's flags) can recompute h for the comparison with other rounding: 0 / 0 = nan.
        at_B1D = jnp.argmax(masked_BTD, axis=1)[:, None, :]
        return jnp.where(any_B1, jnp.take_along_axis(h_BTD, at_B1D, axis=1)[:, 0], 0.0)
    if pooling == "mean":
        weights_BT = mask_BT.astype(h_BTD.dtype)
        return jnp.einsum("btd,bt->bd", h_BTD, weights_BT) / jnp.maximum(weights_BT.sum(1, keepdims=True), 1)
    T = mask_BT.shape[1]
    last_B = jnp.max(jnp.where(mask_BT, jnp.arange(T)[None, :], 0), axis=1)
    return jnp.take_along_axis(h_BTD, last_B[:, None, None], axis=1)[:, 0]


def classifier_init(model_config: GPTConfig, num_classes: int, trainable: str, lora_rank: int, rng: jax.Array,
                    backbone=None) -> Dict[str, Any]:
    """Fresh params; `backbone` (pretrained) replaces the random GPT. The head starts at N(0, 0.02)."""
    k_gpt, k_head, k_lora = jax.random.split(rng, 3)
    if backbone is None:
        backbone = GPT(model_config).init(k_gpt, jnp.zeros((1, model_config.block_size), jnp.int32))["params"]
    params = {"backbone": backbone,
              "head": {"kernel": 0.02 * jax.random.normal(k_head, (model_config.n_embd, num_classes), jnp.float32),
                       "bias": jnp.zeros((num_classes,), jnp.float32)}}
    if trainable == "lora":
        params["lora"] = lora_lib.init_adapters(backbone, lora_rank, k_lora)
    return params


def trainable_mask(params, trainable: str, n_layer: int):
    """A bool per leaf: what `trainable` trains. The LM head (unused here) never trains."""
    last_block = f"h_{n_layer - 1}"

    def trains(path, _leaf) -> bool:
        names = [str(getattr(k, "key", k)) for k in path]
        top = names[0]
        if top == "head":
            return True
        if top == "lora":
            return trainable == "lora"
        if "lm_head" in names:
            return False
        if trainable == "all":
            return True
        if trainable == "last_block":
            return names[1] in (last_block, "ln_f")
        return False

    return jax.tree_util.tree_map_with_path(trains, params)


def _backbone_and_features(model: GPT, params, tokens_BT, lora_scale: float, rng: Optional[jax.Array]):
    """(the backbone's params, LoRA merged in; its final hidden states (B, T, D) in float32)."""
    backbone = params["backbone"]
    if "lora" in params:
        backbone = lora_lib.merge(backbone, params["lora"], lora_scale)
    kwargs = {} if rng is None else {"deterministic": False, "rngs": {"dropout": rng}}
    h_BTD = model.apply({"params": backbone}, tokens_BT, method=GPT.features, **kwargs)
    return backbone, h_BTD.astype(jnp.float32)


def combine_windows(pooled_BD: jax.Array, slot_B: jax.Array, pooling: str) -> jax.Array:
    """(S = B, D): the pooled features of each text of the batch from those of its windows (rows whose
    slot is the text's index): their per-feature max under max pooling, else their mean (the module
    docstring of jaxgpt.finetune.windows says why). A slot no row belongs to pools to zeros. The
    windows are pooled by `pool` itself, reading the rows as the positions of each slot's "text"."""
    B = pooled_BD.shape[0]
    member_SB = slot_B[None, :] == jnp.arange(B)[:, None]
    return pool(jnp.broadcast_to(pooled_BD[None], (B,) + pooled_BD.shape), member_SB,
                "max" if pooling == "max" else "mean")


def _text_features(h_BTD, mask_BT, pooling: str, slot_B=None) -> jax.Array:
    """(B, D) pooled features of each text: of each row, or with slot_B of each slot's windows."""
    pooled_BD = pool(h_BTD, mask_BT, pooling)
    return pooled_BD if slot_B is None else combine_windows(pooled_BD, slot_B, pooling)


def _head(params, features_BD) -> jax.Array:
    return features_BD @ params["head"]["kernel"] + params["head"]["bias"]


def classifier_logits(model: GPT, params, tokens_BT, mask_BT, pooling: str, lora_scale: float,
                      rng: Optional[jax.Array] = None, slot_B: Optional[jax.Array] = None) -> jax.Array:
    """(B, C) float32 class logits; rng None: deterministic (no dropout). slot_B (chunks): row b is a
    window of text slot_B[b], and row s of the result is text s's logits (zeros' logits past the last)."""
    _, h_BTD = _backbone_and_features(model, params, tokens_BT, lora_scale, rng)
    return _head(params, _text_features(h_BTD, mask_BT, pooling, slot_B))


def next_token_loss(model: GPT, backbone, h_BTD, tokens_BT, mask_BT) -> jax.Array:
    """Mean next-token cross-entropy of the backbone's own LM head (GPT.readout) over the real
    tokens that follow a real token (GPT-1's auxiliary fine-tuning objective). h_BTD: GPT.features'
    output for tokens_BT."""
    logits_BTV = model.apply({"params": backbone}, h_BTD[:, :-1], method=GPT.readout)
    next_BT = jnp.where(mask_BT[:, :-1] & mask_BT[:, 1:], tokens_BT[:, 1:], -1)  # -1: not counted
    return cross_entropy_loss(logits_BTV, next_BT, ignore_index=-1)


def classification_loss(model: GPT, num_classes: int, pooling: str, lora_scale: float, frozen_mask=None,
                        label_smoothing: float = 0.0, lm_loss_weight: float = 0.0):
    """loss(params, (tokens_BT, targets_BT[, slot_B1]), rng) -> (mean cross-entropy over real texts, aux).
    aux holds sums (rows, loss, confusion counts) so that means over eval batches give exact
    ratios: accuracy = trace(C) / sum(C) whatever the batch sizes. With slot_B (chunks) a row is a
    window and the texts are the slots (combine_windows); "rows" then counts texts.

    Training (rng given) may add to the mean, never to aux's loss_sum (so val loss stays the plain
    cross-entropy that picks the best checkpoint): label smoothing (the targets put
    label_smoothing / C on every class) and lm_loss_weight times the next-token loss of the texts."""

    def loss(params, batch, rng):
        if frozen_mask is not None:  # frozen leaves: no gradient computed at all
            params = jax.tree_util.tree_map(lambda p, t: p if t else jax.lax.stop_gradient(p), params, frozen_mask)
        tokens_BT, targets_BT, *slot = batch
        slot_B = slot[0][:, 0] if slot else None  # (B, 1): jaxgpt.finetune.windows
        mask_BT = targets_BT >= 0
        row_labels_B = jnp.max(targets_BT, axis=1)  # -1: a filler row
        if slot_B is not None:  # each slot's label: its windows' (-1: no window)
            row_labels_B = jnp.max(jnp.where(slot_B[None, :] == jnp.arange(slot_B.shape[0])[:, None],
                                             row_labels_B[None, :], -1), axis=1)
        real_B = row_labels_B >= 0
        labels_B = jnp.maximum(row_labels_B, 0)
        backbone, h_BTD = _backbone_and_features(model, params, tokens_BT, lora_scale, rng)
        logits_BC = _head(params, _text_features(h_BTD, mask_BT, pooling, slot_B))
        losses_B = optax.softmax_cross_entropy_with_integer_labels(logits_BC, labels_B)
        weights_B = real_B.astype(jnp.float32)
        n = jnp.sum(weights_B)
        predicted_B = jnp.argmax(logits_BC, axis=-1)
        confusion_CC = jnp.zeros((num_classes, num_classes), jnp.float32).at[labels_B, predicted_B].add(weights_B)

        def row_mean(values_B):
            return jnp.sum(values_B * weights_B) / jnp.maximum(n, 1.0)

        objective = row_mean(losses_B)
        if rng is not None and label_smoothing > 0:
            smoothed_BC = optax.smooth_labels(jax.nn.one_hot(labels_B, num_classes), label_smoothing)
            objective = row_mean(optax.softmax_cross_entropy(logits_BC, smoothed_BC))
        if rng is not None and lm_loss_weight > 0:
            objective = objective + lm_loss_weight * next_token_loss(model, backbone, h_BTD, tokens_BT, mask_BT)
        # scalars only: the shared steps average each metric over all its axes
        confusion = {f"confusion_{i}_{j}": confusion_CC[i, j] for i in range(num_classes) for j in range(num_classes)}
        return objective, {"rows": n, "loss_sum": jnp.sum(losses_B * weights_B), **confusion}

    return loss


def classification_metrics(confusion) -> Dict[str, float]:
    """accuracy, and precision/recall/F1 of class 1 when binary (the positive one: "spam"),
    else their macro averages over classes."""
    c = np.asarray(confusion, np.float64)
    total = c.sum()
    tp = np.diag(c)
    precision_c = np.divide(tp, c.sum(0), out=np.zeros_like(tp), where=c.sum(0) > 0)
    recall_c = np.divide(tp, c.sum(1), out=np.zeros_like(tp), where=c.sum(1) > 0)
    f1_c = np.divide(2 * precision_c * recall_c, precision_c + recall_c, out=np.zeros_like(tp),
                     where=precision_c + recall_c > 0)
    pick = (lambda v: float(v[1])) if len(c) == 2 else (lambda v: float(np.mean(v)))
    return {"accuracy": float(tp.sum() / total) if total else 0.0, "precision": pick(precision_c),
            "recall": pick(recall_c), "f1": pick(f1_c)}


def confusion_of(result) -> np.ndarray:
    """(C, C) from the step's confusion_i_j scalars (means: a common factor, ratios unchanged)."""
    c = int(round(math.sqrt(sum(1 for k in result if k.startswith("confusion_")))))
    return np.array([[float(result[f"confusion_{i}_{j}"]) for j in range(c)] for i in range(c)])


def eval_summary(result) -> Dict[str, float]:
    """The eval step's means of the sums -> loss, accuracy, precision, recall, f1."""
    rows = float(result["rows"])
    return {"loss": float(result["loss_sum"]) / max(rows, 1e-9), **classification_metrics(confusion_of(result))}


# ------------------------------------------------------------------------------------ batches

class ClassifyBatches:
    """Train batches: seeded epochs of the train split, reshuffled each epoch (no example twice
    before all were seen). Eval batches: the whole split, in order, padded with filler rows
    (targets -1) to whole batches; the train split's is its first eval_iters * batch_size rows.

    windows ({split: windows per text}, chunks with some long text): the rows are windows, a batch
    holds whole texts (as many as fit in batch_size rows, jaxgpt.finetune.windows) and a third
    array, slot; the epochs and the train split's eval batches count texts."""

    def __init__(self, tokens: Dict[str, np.ndarray], targets: Dict[str, np.ndarray], seed: int,
                 windows: Optional[Dict[str, np.ndarray]] = None):
        self.tokens, self.targets = tokens, targets
        self.windows = windows
        self.first_row = None if windows is None else {k: np.cumsum(w) - w for k, w in windows.items()}
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._order = self._rng.permutation(self._texts("train"))
        self._pos = 0

    def _texts(self, split: str) -> int:
        return len(self.tokens[split]) if self.windows is None else len(self.windows[split])

    def _next_rows(self, count: int) -> np.ndarray:
        out = []
        while count > 0:
            if self._pos >= len(self._order):
                self._order, self._pos = self._rng.permutation(len(self._order)), 0
            take = self._order[self._pos:self._pos + count]
            self._pos += len(take)
            count -= len(take)
            out.append(take)
        return np.concatenate(out)

    def _next_texts(self, batch_size: int) -> List[int]:
        """The next texts of the epochs whose windows fit in one batch."""
        out, used, counts = [], 0, self.windows["train"]
        while True:
            if self._pos >= len(self._order):
                self._order, self._pos = self._rng.permutation(len(self._order)), 0
            text = int(self._order[self._pos])
            if used + counts[text] > batch_size:
                if not out:
                    raise ValueError(f"a text has {counts[text]} windows, more than --batch_size={batch_size}")
                return out
            out.append(text)
            used += counts[text]
            self._pos += 1

    def _assembled(self, split: str, batches: Sequence[Sequence[int]], batch_size: int, rows: slice):
        parts = [assemble(texts, self.first_row[split], self.windows[split], self.tokens[split],
                          self.targets[split], batch_size) for texts in batches]
        return tuple(np.stack([p[i] for p in parts])[:, rows] for i in range(3))

    def train_batch(self, accum_steps: int, batch_size: int, rows: slice):
        if self.windows is not None:
            return self._assembled("train", [self._next_texts(batch_size) for _ in range(accum_steps)], batch_size,
                                   rows)
        index = self._next_rows(accum_steps * batch_size).reshape(accum_steps, batch_size)
        return self.tokens["train"][index][:, rows], self.targets["train"][index][:, rows]

    def eval_batch(self, split: str, n_batches: int, batch_size: int, rows: slice):
        if self.windows is not None:
            batches = pack_in_order(self.windows[split], batch_size)
            return self._assembled(split, batches[:n_batches] if split == "train" else batches, batch_size, rows)
        tokens, targets = self.tokens[split], self.targets[split]
        if split == "train":
            tokens, targets = tokens[:n_batches * batch_size], targets[:n_batches * batch_size]
        n = math.ceil(len(tokens) / batch_size)
        fill = n * batch_size - len(tokens)
        tokens = np.concatenate([tokens, np.full((fill, tokens.shape[1]), 0, np.int32)])
        targets = np.concatenate([targets, np.full((fill, targets.shape[1]), -1, np.int32)])
        shape = (n, batch_size, tokens.shape[1])
        return tokens.reshape(shape)[:, rows], targets.reshape(shape)[:, rows]

    def state_dict(self) -> Dict[str, Any]:  # the position's layout: jaxgpt.data.sampler_state
        return {"classify_sampler": {**pcg64_words(self._rng), "order": [int(i) for i in self._order],
                                     "pos": int(self._pos)}}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        d = state["classify_sampler"]
        restore_pcg64(self._rng, d)
        order = np.asarray(d["order"], np.int64)
        if sorted(order.tolist()) != list(range(self._texts("train"))):
            raise ValueError("the sampler's order does not match this train split")
        self._order, self._pos = order, int(d["pos"])


# ------------------------------------------------------------------------------------ the task

@dataclasses.dataclass(frozen=True)
class ClassifyPrepared:
    """What the loop's `prepared` slot needs: the tokenizer and the data's meta (data_meta.json)."""
    tokenizer: Tokenizer
    meta: Dict[str, Any]
    encoded: Dict[str, Encoded]


def prepare_splits(tokenizer: Tokenizer, splits: Splits, T: int, meta: Dict[str, Any],
                   long_text: str = "head", max_windows: int = MAX_WINDOWS) -> ClassifyPrepared:
    """Every split encoded (encode_texts), and data_meta.json's description of them. max_windows: a
    text's windows with chunks (at most the batch's rows)."""
    encoded = {name: encode_texts(tokenizer, splits.split(name).texts, T, long_text, max_windows)
               for name in ("train", "val", "test")}
    meta = {**meta, "labels": list(splits.labels), "balanced": splits.balanced, "counts": splits.counts(),
            "unknown_chars": {k: e.unknown_chars for k, e in encoded.items()},
            "truncated": {k: e.truncated for k, e in encoded.items()}, "max_tokens": T,
            "unknown_char": (tokenizer.chars[unknown_id(tokenizer)] if unknown_id(tokenizer) is not None else None)}
    if long_text == "chunks":
        meta.update(max_windows=max_windows, windows={k: len(e.tokens_NT) for k, e in encoded.items()})
    return ClassifyPrepared(tokenizer, meta, encoded)


def classification_task(model_config: GPTConfig, prepared: ClassifyPrepared, splits: Splits, *, trainable: str,
                        pooling: str, lora_rank: int, lora_alpha: float, seed: int, init_backbone=None,
                        describe: Optional[str] = None, label_smoothing: float = 0.0,
                        lm_loss_weight: float = 0.0, baseline: bool = False, soup: int = 0) -> Tuple[Task, Any]:
    """(Task, initial params or None). init_backbone: pretrained GPT params (host) or None. baseline:
    the end of the run also fits and reports the n-gram baseline (jaxgpt.finetune.baseline); soup > 0:
    the test reads a greedy soup of the best `soup` checkpoints (jaxgpt.finetune.soup)."""
    model = GPT(model_config)
    num_classes = len(splits.labels)
    lora_scale = lora_alpha / lora_rank

    def init_params(rng):
        return classifier_init(model_config, num_classes, trainable, lora_rank, rng)

    abstract = jax.eval_shape(init_params, jax.random.key(0))
    mask = trainable_mask(abstract, trainable, model_config.n_layer)
    T = model_config.block_size
    tokens = {k: e.tokens_NT for k, e in prepared.encoded.items()}
    targets = {k: targets_for(e.lengths_N, _row_labels(splits.split(k).label_ids, e), T)
               for k, e in prepared.encoded.items()}
    windowed = any(e.windowed for e in prepared.encoded.values())
    batches = ClassifyBatches(tokens, targets, seed,
                              {k: e.windows_N for k, e in prepared.encoded.items()} if windowed else None)
    task = Task("classify", model_config, init_params,
                classification_loss(model, num_classes, pooling, lora_scale, frozen_mask=mask,
                                    label_smoothing=label_smoothing, lm_loss_weight=lm_loss_weight), batches,
                eval_splits=("train", "val"), trainable=lambda params: trainable_mask(params, trainable,
                                                                                      model_config.n_layer),
                eval_summary=eval_summary, finish=_finish(splits, baseline, soup), describe=describe)
    initial = None
    if init_backbone is not None:
        initial = jax.device_get(classifier_init(model_config, num_classes, trainable, lora_rank,
                                                 jax.random.fold_in(jax.random.key(seed), 1), backbone=init_backbone))
    return task, initial


def _row_labels(label_ids_N: np.ndarray, encoded: Encoded) -> np.ndarray:
    """The label of each row: its text's (a window's text's, with chunks)."""
    return label_ids_N if encoded.windows_N is None else np.repeat(label_ids_N, encoded.windows_N)


def _tested_params(run, steps, loop, soup: int):
    """(params the test reads, the best-val checkpoint, soup members or None, the soup's val loss or None):
    the best-val checkpoint's params, or with soup > 0 a greedy soup of the `soup` best (jaxgpt.finetune.soup)."""
    from jaxgpt.train.checkpoint import Checkpointer  # orbax takes ~1 s to import; keeps --help fast

    params = loop.train_state.params
    abstract = sharding.with_shardings(jax.eval_shape(run.task.init_params, jax.random.key(0)),
                                       jax.tree_util.tree_map(lambda x: x.sharding, params))
    # keep_best=True: only then does the manager rank steps by val_loss (else best = latest)
    with Checkpointer(run.checkpoint_dir, keep_best=True, read_only=True) as ckpt:
        best = ckpt.best_step()
        if best is not None and best != loop.iter_num:
            params = ckpt.restore_params(abstract, best)
        if not soup or best is None:
            return params, best, None, None
        scored = [(step, ckpt.val_loss(step)) for step in ckpt.all_steps()]
        candidates = sorted((c for c in scored if c[1] is not None), key=lambda c: (c[0] != best, c[1], c[0]))[:soup]
        val = run.task.batches.eval_batch("val", run.cfg.eval_iters, run.cfg.batch_size, run.rows)
        members, params, val_loss = greedy_soup(
            candidates, lambda step: ckpt.restore_params(abstract, step),
            lambda p: eval_summary(steps.eval(p, _global(run, val)))["loss"], first=best)
    return params, best, members, val_loss


def _finish(splits: Splits, baseline: bool, soup: int = 0):
    """End of run: the test metrics (one metrics.jsonl event) of the best-val checkpoint, or of a greedy
    soup of checkpoints (soup > 0), and confusion_matrix.png; with `baseline`, the n-gram baseline's
    beside them."""
    labels = splits.labels

    def finish(run, steps, loop, log_event) -> Dict[str, Any]:
        params, best, members, soup_val = _tested_params(run, steps, loop, soup)
        batch = run.task.batches.eval_batch("test", 0, run.cfg.batch_size, run.rows)
        result = steps.eval(params, _global(run, batch))
        test = eval_summary(result)
        # the step returns means over its batches: times their count, the counts themselves
        confusion = np.rint(confusion_of(result) * batch[0].shape[0]).astype(int)
        if jax.process_index() != 0:  # the report writes on process 0 only
            return {}
        reference = baseline_lib.fit_baseline(splits) if baseline else None
        event = {"iter": loop.iter_num, "checkpoint": best if best is not None else loop.iter_num,
                 **{f"test_{k}": v for k, v in test.items()}, "labels": list(labels),
                 "confusion_matrix": confusion.tolist(), **(reference.metrics() if reference else {})}
        if members is not None:
            event.update(soup=members, soup_val_loss=soup_val)
        log_event(event)
        events = read_metrics(RunDir(run.out_dir).metrics_path)
        before = next((e.get("val_accuracy") for e in events if e.get("iter") == 0 and "val_accuracy" in e), None)
        best_val = next((e.get("val_accuracy") for e in events if e.get("iter") == event["checkpoint"]
                         and "val_accuracy" in e), None)
        beside = f"; n-gram baseline {reference.test_accuracy:.4f}" if reference else ""
        tested = f"checkpoint {event['checkpoint']}" if members is None else f"soup of checkpoints {members}"
        png = plot_confusion_matrix(confusion, list(labels), RunDir(run.out_dir).confusion_png,
                                    title=f"test split, {tested if members is None else f'soup of {len(members)}'} "
                                          f"(accuracy {test['accuracy']:.4f}{beside})")
        print(f"val accuracy: {before if before is None else f'{before:.4f}'} before fine-tuning, "
              f"{best_val if best_val is None else f'{best_val:.4f}'} at checkpoint {event['checkpoint']} (best val loss)")
        if members is not None:
            print(f"soup: checkpoints {members} averaged, val loss {soup_val:.4f} (chosen on val, greedily)")
        print(f"test ({tested}): accuracy {test['accuracy']:.4f}, precision "
              f"{test['precision']:.4f}, recall {test['recall']:.4f}, f1 {test['f1']:.4f} | confusion "
              f"{confusion.tolist()} (rows true {list(labels)}) -> {png}")
        if reference:
            print(baseline_lib.describe_baseline(reference))
        return ({f"test_{k}": v for k, v in test.items()} | {"val_accuracy_before": before}
                | (reference.metrics() if reference else {}))

    return finish


def _global(run, batch):
    return tuple(sharding.global_batch(run.mesh, x) for x in batch)


# ------------------------------------------------------------------------- classifying texts

@dataclasses.dataclass(frozen=True)
class SavedClassifier:
    """A finetune.py classification run's checkpoint, as classify_texts and `jaxgpt export` read it."""
    model_config: GPTConfig
    params: Dict[str, Any]  # {"backbone", "head", and "lora" with trainable="lora"}
    tokenizer: Tokenizer
    labels: List[str]
    options: Dict[str, Any]  # trainable, pooling, long_text, lora_rank, lora_alpha, labels (checked)
    step: int

    @property
    def lora_scale(self) -> float:
        """alpha / r: what the LoRA adapters' product is multiplied by (lora.merge's scale)."""
        return self.options["lora_alpha"] / self.options["lora_rank"]


def _classifier_spec(options: Dict[str, Any], meta: Dict[str, Any], source: str) -> Dict[str, Any]:
    """What classifying needs from a run's options and data meta, each checked (they may come from
    hand-edited run_config.json / data_meta.json when a checkpoint predates its own copy)."""
    spec = {"trainable": options.get("trainable", "all"), "pooling": options.get("pooling", "last"),
            "long_text": options.get("long_text", "head"), "lora_rank": options.get("lora_rank", 8),
            "lora_alpha": options.get("lora_alpha", 16.0), "labels": meta.get("labels"),
            "max_windows": meta.get("max_windows", MAX_WINDOWS)}
    for key, choices in (("trainable", TRAINABLE), ("pooling", POOLINGS), ("long_text", LONG_TEXTS)):
        if spec[key] not in choices:
            raise ConfigError(f"{key!r} in {source} must be one of {list(choices)}, got {spec[key]!r}")
    rank, alpha, labels = spec["lora_rank"], spec["lora_alpha"], spec["labels"]
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ConfigError(f"'lora_rank' in {source} must be an integer >= 1, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ConfigError(f"'lora_alpha' in {source} must be a number, got {alpha!r}")
    if not isinstance(labels, list) or len(labels) < 2 or not all(isinstance(x, str) for x in labels):
        raise ConfigError(f"{source} names no labels (a list of two or more): is it a classification run?")
    return spec


def _reading_notes(tokenizer: Tokenizer, texts: Sequence[str], T: int, long_text: str) -> List[str]:
    """What the model will not see of each text: characters its char vocabulary lacks, tokens past T."""
    notes = []
    unk = unknown_id(tokenizer)
    for n, text in enumerate(texts):
        which = "the text" if len(texts) == 1 else f"text {n + 1}"
        if isinstance(tokenizer, CharTokenizer):
            unknown = sum(1 for c in text if c not in tokenizer.chars)
            if unknown:
                alone = ": the probabilities say nothing about it" if unknown == len(text) else ""
                notes.append(f"note: {unknown} of {len(text)} characters of {which} are unknown to the model's "
                             f"vocabulary (read as {tokenizer.chars[unk]!r}){alone}")
        tokens = len(text) if isinstance(tokenizer, CharTokenizer) else len(tokenizer.encode(text))
        if tokens > T and long_text != "chunks":  # chunks reads it in windows of T
            notes.append(f"note: {which} has {tokens} tokens; the model reads {T} of them (its "
                         f"{long_text.replace('_', ' and ')}, the run's --long_text)")
    return notes


def load_classifier(out_dir: str, which: str = "best") -> SavedClassifier:
    """The classifier of a finetune.py classification run directory: its best-val checkpoint
    (which="best", the latest when no save recorded a val loss) or its latest (which="latest"),
    with the options and labels saved in the checkpoint itself. A run another process is training
    is read as jaxgpt.train.checkpoint.read_newest says."""
    from jaxgpt.train.checkpoint import read_newest  # orbax takes ~1 s to import; keeps --help fast

    run_dir = RunDir(out_dir)
    if not os.path.isdir(out_dir):
        raise ConfigError(f"no run directory at {out_dir}: train a classifier there first (python finetune.py "
                          f"--out_dir={out_dir} --dataset=...)")
    if not run_dir.holds_a_run():
        raise ConfigError(f"{out_dir} does not hold a finetune.py classification run (no checkpoints, no "
                          f"{RUN_CONFIG_FILE})")

    def read(ckpt, step):
        extra = ckpt.restore_extra(step)
        source = f"checkpoint {step} in {run_dir.checkpoint_dir}"
        options = extra.get("run_config") or run_dir.read_run_config()  # the checkpoint's own, when it has them
        if run_task(options) != "classify":
            raise ConfigError(what_the_run_is(out_dir, run_task(options)))
        spec = _classifier_spec(options, extra.get("data_meta") or run_dir.read_data_meta(), source)
        model_config = GPTConfig.from_dict(extra["model_config"])
        abstract = jax.eval_shape(lambda k: classifier_init(model_config, len(spec["labels"]), spec["trainable"],
                                                            spec["lora_rank"], k), jax.random.key(0))
        members = soup_members(read_metrics(run_dir.metrics_path)) if which == "best" else []
        params = (average([ckpt.restore_params(abstract, s) for s in members]) if members  # the run's tested soup
                  else ckpt.restore_params(abstract, step))
        return spec, model_config, params

    tokenizer = run_dir.read_tokenizer()
    step, (spec, model_config, params) = read_newest(out_dir, read, which)
    return SavedClassifier(model_config, params, tokenizer, list(spec["labels"]), spec, step)


def classify_texts(out_dir: str, texts: Sequence[str], which: str = "best",
                   notes: Optional[List[str]] = None) -> List[Dict[str, float]]:
    """Label probabilities for each text, from a finetune.py classification run directory (its
    tokenizer, and the best-val checkpoint, or the soup the run tested, with the labels, pooling and
    options saved in it). `notes` (a list) receives what the model cannot read of the texts, and that
    another process is training the run."""
    saved = load_classifier(out_dir, which)
    model_config, spec = saved.model_config, saved.options
    T = model_config.block_size
    if notes is not None:
        notes.extend(filter(None, [being_written_note(out_dir)]))
        notes.extend(_reading_notes(saved.tokenizer, texts, T, spec["long_text"]))
    encoded = encode_texts(saved.tokenizer, texts, T, spec["long_text"], spec["max_windows"])
    mask = np.arange(T)[None, :] < encoded.lengths_N[:, None]
    slot = None  # chunks: every window with its text
    if encoded.windows_N is not None:
        slot = np.repeat(np.arange(len(texts), dtype=np.int32), encoded.windows_N)
    logits = jax.jit(lambda p, x, m, s: classifier_logits(GPT(model_config), p, x, m, spec["pooling"],
                                                          saved.lora_scale, slot_B=s))(
        saved.params, encoded.tokens_NT, mask, slot)
    probs = np.asarray(jax.nn.softmax(logits[:len(texts)], axis=-1))
    return [{label: float(p) for label, p in zip(saved.labels, row)} for row in probs]
