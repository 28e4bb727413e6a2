"""Figures of a trained model: attention maps, next-token bars, decoding settings side by side,
loss curves over tokens seen, token embeddings by PCA, and a confusion matrix.

Every function works in a notebook on (config, params, tokenizer) and writes a PNG atomically
(jaxgpt.files.save_figure_atomic), drawn on a matplotlib Figure with an Agg canvas of its own: the
process's backend (a notebook's inline one) is never changed. The loss curves are
jaxgpt.train.metrics.plot_loss_curves, the one that also draws a run's loss.png. The command line
makes each figure from any train.py run directory (the confusion matrix from a finetune.py
classification run):

    python -m jaxgpt.viz --out_dir=RUN --what=attention --prompt="ROMEO:" --png=attn.png
    python -m jaxgpt.viz --out_dir=RUN --what=next_token --prompt="The cat"
    python -m jaxgpt.viz --out_dir=RUN --what=decoding --prompt="The" --max_new_tokens=80
    python -m jaxgpt.viz --out_dir=RUN_A,RUN_B --what=loss --png=loss.png
    python -m jaxgpt.viz --out_dir=RUN --what=embeddings --n=80
    python -m jaxgpt.viz --out_dir=FINETUNE_RUN --what=confusion

Attention probabilities come from the model's own attention: the explicit attention path sows
them into flax's "intermediates" collection (a no-op in a normal forward).
"""

from __future__ import annotations

import math
import os
import textwrap
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from jaxgpt.cli import CLIError, Option, parse_args
from jaxgpt.files import check_folder_target, save_figure_atomic
from jaxgpt.model.families import family_for
from jaxgpt.model.gpt import GPT
from jaxgpt.sample.decode import generate
from jaxgpt.train.metrics import plot_loss_curves, read_metrics, tokens_per_iter  # the first and last: re-exported
from jaxgpt.train.run_dir import TOKENIZER_FILE, RunDir, note_if_being_written

__all__ = ["attention_weights", "plot_attention", "next_token_probs", "plot_next_token", "compare_decoding",
           "plot_loss_curves", "plot_embeddings", "plot_confusion_matrix", "token_label", "DEFAULT_SETTINGS"]

# (label, generate keyword arguments): greedy, three temperatures, top-k and top-p.
DEFAULT_SETTINGS: Tuple[Tuple[str, Dict[str, Any]], ...] = (
    ("greedy", {"temperature": 0.0}),
    ("temperature 0.5", {"temperature": 0.5}),
    ("temperature 1.0", {"temperature": 1.0}),
    ("temperature 1.5", {"temperature": 1.5}),
    ("top-k 10 (T=1)", {"temperature": 1.0, "top_k": 10}),
    ("top-p 0.9 (T=1)", {"temperature": 1.0, "top_p": 0.9}),
)


# ----------------------------------------------------------------------------- helpers

def _new_figure(figsize: Tuple[float, float], **figure_kwargs):
    """A Figure on an Agg canvas of its own (dpi 100): no pyplot, so the process's matplotlib backend
    (a notebook's inline one) is never changed and no figure is left open in pyplot's registry."""
    from matplotlib.figure import Figure  # heavy (~0.5 s): imported when a figure is drawn, not when the module is
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # (matplotlib, as above)

    fig = Figure(figsize=figsize, dpi=100, **figure_kwargs)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, png_path) -> str:
    """fig as a PNG at png_path, written atomically (its folder made if missing)."""
    png_path = os.fspath(png_path)
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    return save_figure_atomic(fig, png_path, format="png")


def token_label(tokenizer, token_id: int, max_chars: Optional[int] = None, quotes: bool = True) -> str:
    """A token's text, repr-escaped so whitespace is visible ('\\n', ' '); shortened to max_chars.
    Ids past the tokenizer's vocabulary (a padded model vocab) show as <id>."""
    token_id = int(token_id)
    if tokenizer is None or not 0 <= token_id < tokenizer.vocab_size:
        return f"<{token_id}>"
    text = repr(tokenizer.decode([token_id]))
    if text[0] not in "'\"":  # never happens for str, kept for safety
        text = repr(str(text))
    body = text[1:-1]
    if max_chars is not None and len(body) > max_chars:
        body = body[: max(1, max_chars - 1)] + "\u2026"
    return f"'{body}'" if quotes else body.replace(" ", "\u2423")  # open box: a visible space


def _as_ids(ids) -> np.ndarray:
    """(B, T) int32 from a (T,) or (B, T) sequence of token ids."""
    arr = np.asarray(ids)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] < 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"ids must be a non-empty (T,) or (B, T) integer array, got shape {arr.shape}")
    return arr.astype(np.int32)


# ----------------------------------------------------------------------------- attention

def attention_weights(cfg, params, ids) -> np.ndarray:
    """The model's attention probabilities, float32 (n_layer, B, n_head, T, T).

    Runs the model's explicit attention path (dropout off) with the "intermediates" collection
    mutable, and collects what each block's attention sowed, in layer order. Row t of a map is
    query t's distribution over keys 0..t (exact zeros above the diagonal). ids: (T,) or (B, T),
    T <= block_size.
    """
    if getattr(cfg, "model", "gpt") == "bigram":
        raise ValueError("a bigram has no attention: it reads only the last token")
    idx_BT = _as_ids(ids)
    if idx_BT.shape[1] > cfg.block_size:
        raise ValueError(f"{idx_BT.shape[1]} tokens exceed the model's block_size {cfg.block_size}")
    model = GPT(cfg.replace(attn_impl="explicit", dropout=0.0, remat=False))
    _, state = jax.jit(lambda p, x: model.apply({"params": p}, x, mutable=["intermediates"]))(params, idx_BT)
    inter = state["intermediates"]
    layers = []
    for i in range(cfg.n_layer):
        sown = inter[f"h_{i}"]["attn"]["attn_probs"]
        layers.append(np.asarray(sown[0], dtype=np.float32))
    return np.stack(layers)


def plot_attention(weights, tokens: Sequence[str], png_path, layer: Optional[int] = None,
                   head: Optional[int] = None, batch_index: int = 0, title: str = "") -> str:
    """Heatmaps of attention probabilities, one panel per (layer, head): rows are layers, columns
    heads. weights: (L, B, H, T, T) from attention_weights (or (L, H, T, T)); tokens: T strings
    for the axes (shortened). layer / head pick one row / column (None = all)."""
    w = np.asarray(weights, dtype=np.float32)
    if w.ndim == 5:
        w = w[:, batch_index]
    if w.ndim != 4 or w.shape[-1] != w.shape[-2]:
        raise ValueError(f"weights must be (L, B, H, T, T) or (L, H, T, T), got shape {np.shape(weights)}")
    L, H, T, _ = w.shape
    if len(tokens) != T:
        raise ValueError(f"{len(tokens)} token labels for {T} positions")
    layers = list(range(L)) if layer is None else [layer]
    heads = list(range(H)) if head is None else [head]
    for name, chosen, count in (("layer", layer, L), ("head", head, H)):
        if chosen is not None and not 0 <= chosen < count:
            raise ValueError(f"{name} must be in [0, {count}), got {chosen}")
    labels = [str(t) if len(str(t)) <= 8 else str(t)[:7] + "\u2026" for t in tokens]
    rows, cols = len(layers), len(heads)
    panel = min(4.5, max(2.6, 0.16 * T + 1.0))
    fig = _new_figure((panel * cols + 1.2, panel * rows + 0.8), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    step = max(1, math.ceil(T / 32))  # at most ~32 labels per axis
    fontsize = 8 if T <= 16 else 6
    image = None
    for r, li in enumerate(layers):
        for c, hi in enumerate(heads):
            ax = axes[r][c]
            image = ax.imshow(w[li, hi], cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
            ticks = list(range(0, T, step))
            ax.set_xticks(ticks)
            ax.set_xticklabels([labels[t] for t in ticks], rotation=90, fontsize=fontsize)
            ax.set_yticks(ticks)
            ax.set_yticklabels([labels[t] for t in ticks], fontsize=fontsize)
            ax.set_title(f"layer {li}, head {hi}", fontsize=10)
            if r == rows - 1:
                ax.set_xlabel("key (attended to)", fontsize=9)
            if c == 0:
                ax.set_ylabel("query", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8, label="attention probability")
    if title:
        fig.suptitle(title)
    return _save(fig, png_path)


# ----------------------------------------------------------------------------- next token

def next_token_probs(cfg, params, ids, k: int = 10) -> Tuple[np.ndarray, np.ndarray]:
    """(probs (k,), token ids (k,)): the k most likely next tokens after ids (a (T,) prompt; only
    its last block_size tokens are read), most likely first. Probabilities are over the full vocab."""
    idx_BT = _as_ids(ids)[:1, -cfg.block_size:]
    model = family_for(cfg).module_for(cfg if getattr(cfg, "model", "gpt") == "bigram" else cfg.replace(dropout=0.0))
    logits = jax.jit(model.apply)({"params": params}, idx_BT)  # compiled: cheaper than op-by-op
    probs_V = np.asarray(jax.nn.softmax(logits[0, -1].astype("float32")), dtype=np.float64)
    k = min(int(k), probs_V.shape[0])
    top = np.argsort(-probs_V, kind="stable")[:k]
    return probs_V[top], top


def plot_next_token(probs_ids, tokenizer, png_path, prompt_text: str = "") -> str:
    """Horizontal bars of next-token probabilities (from next_token_probs), most likely on top,
    labelled with the repr-escaped token text."""
    probs, ids = (np.asarray(a) for a in probs_ids)
    labels = [token_label(tokenizer, i, max_chars=20) for i in ids]
    n = len(probs)
    fig = _new_figure((7, 0.38 * n + 1.6))
    ax = fig.subplots()
    y = np.arange(n)
    ax.barh(y, probs, color="tab:blue")
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontfamily="monospace", fontsize=10)
    ax.invert_yaxis()
    for yi, p in zip(y, probs):
        ax.text(p, yi, f" {p:.3f}", va="center", fontsize=9)
    ax.set_xlim(0, min(1.0, max(float(np.max(probs)) * 1.25, 0.05)) if n else 1.0)
    ax.set_xlabel("probability")
    ax.set_ylabel("next token")
    shown = repr(prompt_text if len(prompt_text) <= 60 else "\u2026" + prompt_text[-59:])
    ax.set_title(f"top-{n} next tokens after {shown}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, png_path)


# ----------------------------------------------------------------------------- decoding

def compare_decoding(cfg, params, tokenizer, prompt: str, png_path=None,
                     settings: Sequence[Tuple[str, Dict[str, Any]]] = DEFAULT_SETTINGS,
                     max_new_tokens: int = 60, seed: int = 0, width: int = 90) -> List[Tuple[str, str]]:
    """The same prompt continued under each setting (label, generate kwargs: temperature, top_k,
    top_p), each with the explicit key jax.random.key(seed); returns [(label, continuation)] and,
    with png_path, draws them as a text figure, one row per setting, prompt shown in front."""
    prompt_ids = tokenizer.encode(prompt, allow_special=True)
    if not prompt_ids:
        raise ValueError(f"prompt {prompt!r} encodes to no tokens")
    results = []
    for label, kwargs in settings:
        out = generate(cfg, params, [prompt_ids], max_new_tokens, rng=jax.random.key(seed), **kwargs)
        new = [int(i) for i in np.asarray(out)[0, len(prompt_ids):] if 0 <= int(i) < tokenizer.vocab_size]
        results.append((label, tokenizer.decode(new)))
    if png_path is not None:
        _plot_texts(prompt, results, png_path, width=width)
    return results


def visible_whitespace(text: str) -> str:
    """A continuation that is only whitespace (an undertrained model's greedy output often is)
    with its spaces, tabs and newlines drawn as ·, → and ↵, so its row is not blank."""
    if text.strip():
        return text
    return text.replace(" ", "\u00b7").replace("\t", "\u2192").replace("\n", "\u21b5").replace("\r", "\u21b5")


def _plot_texts(prompt: str, results: Sequence[Tuple[str, str]], png_path, width: int = 90,
                max_lines: int = 8) -> str:
    from matplotlib.lines import Line2D  # (matplotlib: heavy, as in _new_figure)

    def wrapped(text: str) -> List[str]:
        lines = []
        for part in text.split("\n"):
            lines.extend(textwrap.wrap(part, width, replace_whitespace=False, drop_whitespace=False) or [""])
        if len(lines) > max_lines:
            lines = lines[:max_lines - 1] + [lines[max_lines - 1][: width - 1] + "\u2026"]
        return lines

    blocks = [(label, wrapped(prompt + "\u2502" + visible_whitespace(text))) for label, text in results]
    heights = [len(lines) + 1.3 for _, lines in blocks]
    line_h = 0.2
    fig = _new_figure((0.085 * width + 2.2, line_h * sum(heights) + 0.9))
    fig.suptitle(f"one prompt, {len(results)} decoding settings (prompt \u2502 continuation)", fontsize=11)
    total = sum(heights)
    top = 1.0 - 0.6 / fig.get_figheight()
    y = top
    for (label, lines), h in zip(blocks, heights):
        frac = h / total * (top - 0.02)
        fig.text(0.01, y - 0.15 * frac, label, fontsize=10, fontweight="bold", va="top")
        fig.text(0.01, y - 0.15 * frac - line_h / fig.get_figheight(), "\n".join(lines),
                 fontsize=9, fontfamily="monospace", va="top")
        y -= frac
        fig.add_artist(Line2D([0.01, 0.99], [y + 0.004, y + 0.004], color="0.8", lw=0.8))
    return _save(fig, png_path)


# ----------------------------------------------------------------------------- embeddings

def plot_embeddings(params, tokenizer, png_path, n: int = 100, counts=None, title: str = "") -> Tuple[np.ndarray, np.ndarray]:
    """Token embeddings (wte) projected to their first two principal components (numpy SVD over
    the tokenizer's vocabulary, centered); all tokens as faint dots, n annotated with their text:
    the n most frequent by counts (a (V,) array of token counts) or, without counts, the first n.
    Returns (coords (V, 2), annotated ids)."""
    # a GPT's wte, or a bigram's table (row a: the next-token logits after a, its "embedding")
    wte = np.asarray((params["wte"] if "wte" in params else params["table"])["embedding"], dtype=np.float64)
    V = min(wte.shape[0], tokenizer.vocab_size)
    x = wte[:V] - wte[:V].mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    coords = x @ vt[:2].T
    explained = (s[:2] ** 2) / max(float(np.sum(s ** 2)), 1e-30)
    if counts is not None:
        counts = np.asarray(counts)[:V]
        chosen = np.argsort(-counts, kind="stable")[:n]
    else:
        chosen = np.arange(min(n, V))
    fig = _new_figure((9, 8))
    ax = fig.subplots()
    ax.scatter(coords[:, 0], coords[:, 1], s=4, color="0.75", label="all tokens")
    ax.scatter(coords[chosen, 0], coords[chosen, 1], s=10, color="tab:blue",
               label="most frequent" if counts is not None else f"first {len(chosen)}")
    for i in chosen:
        ax.annotate(token_label(tokenizer, i, max_chars=10, quotes=False) or "''", coords[i], fontsize=8,
                    xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel(f"PC 1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.0%} of variance)" if len(explained) > 1 else "PC 2")
    source = "wte" if "wte" in params else "bigram table rows"
    ax.set_title(title or f"token embeddings ({source}, {V} tokens), PCA")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    _save(fig, png_path)
    return coords, chosen


# ----------------------------------------------------------------------------- confusion matrix

def plot_confusion_matrix(matrix, labels: Sequence[str], png_path, title: str = "",
                          normalize: bool = False) -> str:
    """matrix[i, j] = count of true class i predicted as j, annotated in each cell."""
    m = np.asarray(matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(labels):
        raise ValueError(f"matrix must be ({len(labels)}, {len(labels)}) for {len(labels)} labels, got {m.shape}")
    shown = m / np.maximum(m.sum(axis=1, keepdims=True), 1) if normalize else m
    k = len(labels)
    side = max(4.0, 0.7 * k + 2.0)
    fig = _new_figure((side + 1, side))
    ax = fig.subplots()
    image = ax.imshow(shown, cmap="Blues", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="fraction of true class" if normalize else "count")
    ax.set_xticks(range(k))
    ax.set_xticklabels([str(l) for l in labels], rotation=45, ha="right")
    ax.set_yticks(range(k))
    ax.set_yticklabels([str(l) for l in labels])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = (float(np.max(shown)) + float(np.min(shown))) / 2 if shown.size else 0
    for i in range(k):
        for j in range(k):
            text = f"{shown[i, j]:.2f}" if normalize else f"{m[i, j]:g}"
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if shown[i, j] > threshold else "black")
    ax.set_title(title or f"confusion matrix ({m.sum():g} examples)")
    fig.tight_layout()
    return _save(fig, png_path)


# ----------------------------------------------------------------------------- command line

WHATS = ("attention", "next_token", "decoding", "loss", "embeddings", "confusion")

OPTIONS: Dict[str, Option] = {
    "out_dir": Option("out", "train.py run directory (--what=loss: several, separated by commas)"),
    "what": Option("attention", "which figure", choices=WHATS),
    "prompt": Option(None, 'prompt text (default "\\n", or <|endoftext|> for tokenizers that have it)', type=str),
    "png": Option(None, "output PNG (default <out_dir>/<what>.png)", type=str),
    "which": Option("latest", "checkpoint", choices=("latest", "best")),
    "layer": Option(None, "attention: only this layer", type=int),
    "head": Option(None, "attention: only this head", type=int),
    "k": Option(10, "next_token: how many tokens"),
    "max_new_tokens": Option(60, "decoding: tokens per setting"),
    "seed": Option(0, "decoding: rng seed of every sampled setting"),
    "n": Option(100, "embeddings: tokens annotated"),
}


def _load_run(out_dir: str, which: str):
    from jaxgpt.train.checkpoint import load_inference_params  # orbax takes ~1 s to import; keeps --help fast

    run_dir = RunDir(out_dir)
    if not os.path.isfile(run_dir.tokenizer_path):
        raise CLIError(f"{out_dir!r} has no {TOKENIZER_FILE}: is it a train.py run directory?")
    cfg, params = load_inference_params(out_dir, which)  # a classification run: says what to use
    note_if_being_written(out_dir)
    if getattr(cfg, "model", "gpt") == "gpt":
        cfg = cfg.replace(dropout=0.0)
    return cfg, params, run_dir.read_tokenizer()


def _prompt_ids(tokenizer, prompt: Optional[str]) -> List[int]:
    if prompt is None:
        return [tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode("\n")
    ids = tokenizer.encode(prompt, allow_special=True)
    if not ids:
        raise CLIError(f"--prompt={prompt!r} encodes to no tokens")
    return ids


def main(argv: Sequence[str]) -> str:
    opts = parse_args(OPTIONS, argv, prog="-m jaxgpt.viz", summary=__doc__.strip().split("\n\n")[0])
    for key in ("k", "max_new_tokens", "n"):
        if opts[key] < 1:
            raise CLIError(f"--{key} must be >= 1, got {opts[key]}")
    what = opts["what"]
    dirs = [d for d in opts["out_dir"].split(",") if d] if what == "loss" else [opts["out_dir"]]
    if not dirs:
        raise CLIError("--out_dir is empty")
    for d in dirs:
        if os.path.exists(d) and not os.path.isdir(d):
            raise CLIError(f"--out_dir={d} is a file, not a run directory")
        if not os.path.isdir(d):
            raise CLIError(f"no run directory at {d!r} (train one with train.py, or pass --out_dir)")
    png = opts["png"] or os.path.join(dirs[0], f"{what}.png")
    if os.path.isdir(png):  # checked before the model is loaded: the figure would have nowhere to go
        raise CLIError(f"--png={png} is a directory: name a .png file")
    folder = os.path.dirname(os.path.abspath(png))
    check_folder_target(folder, f"--png={png}: the folder {folder}", error=CLIError)
    if what == "loss":
        plot_loss_curves(dirs, png)
    elif what == "confusion":  # a finetune.py classification run's test event
        metrics = RunDir(dirs[0]).metrics_path
        events = [e for e in read_metrics(metrics) if "confusion_matrix" in e] if os.path.isfile(metrics) else []
        if not events:
            raise CLIError(f"{dirs[0]!r} has no confusion matrix: it comes from a finished finetune.py "
                           "classification run")
        event = events[-1]
        plot_confusion_matrix(event["confusion_matrix"], event["labels"], png,
                              title=f"test split, checkpoint {event.get('checkpoint', '?')}")
    else:
        cfg, params, tokenizer = _load_run(dirs[0], opts["which"])
        if what == "attention" and getattr(cfg, "model", "gpt") == "bigram":
            raise CLIError(f"{dirs[0]!r} is a bigram run: it has no attention (next_token, decoding, loss and "
                           "embeddings work on it)")
        if what == "embeddings":
            plot_embeddings(params, tokenizer, png, n=opts["n"])
        elif what == "decoding":
            prompt = opts["prompt"] if opts["prompt"] is not None else tokenizer.decode(_prompt_ids(tokenizer, None))
            compare_decoding(cfg, params, tokenizer, prompt, png, max_new_tokens=opts["max_new_tokens"],
                             seed=opts["seed"])
        else:
            ids = _prompt_ids(tokenizer, opts["prompt"])
            if what == "attention":
                ids = ids[-cfg.block_size:]
                weights = attention_weights(cfg, params, ids)
                tokens = [token_label(tokenizer, i, max_chars=8, quotes=False) for i in ids]
                plot_attention(weights, tokens, png, layer=opts["layer"], head=opts["head"],
                               title=f"attention of {os.path.basename(os.path.normpath(dirs[0]))}")
            else:
                prompt_text = tokenizer.decode([i for i in ids if i < tokenizer.vocab_size])
                plot_next_token(next_token_probs(cfg, params, ids, k=opts["k"]), tokenizer, png, prompt_text)
    print(f"wrote {png}")
    return png
