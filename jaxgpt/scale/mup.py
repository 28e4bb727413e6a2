"""muP diagnostics: the coordinate check and the learning-rate transfer sweep (Yang et al. 2022,
"Tensor Programs V"; microsoft/mup's `get_coord_data` / `plot_coord_data`).

The muP model itself lives in jaxgpt.model.gpt (GPTConfig.mup, mup_base_width) and its per-layer
learning rates in jaxgpt.train.optim (mup_lr_scales). Here:

  coord_check(widths, parametrization, steps, ...) -> records
      Trains tiny GPTs of several widths (same depth, heads, data and seed) for a few AdamW steps
      and records, at each step t = 0 (init) .. steps, the mean absolute coordinate size
      (`l1` = mean |x|, microsoft/mup's coord check statistic) of activations at named points:
      "embedding" (token embedding output), "h_i.attn" and "h_i.mlp" (each block's attention and
      MLP outputs, what they add to the residual stream) and "logits". In the standard
      parametrization (SP, GPT-2's) these grow with width once training moves the weights (an
      lr-sized Adam step on a width-n matrix moves its output by ~ lr * n); under muP they stay
      O(1). coord_slope() fits the growth exponent.
  plot_coord_check(records, png_path): one panel per parametrization, l1 vs width, log-log.
  lr_transfer(widths, learning_rates, parametrization, steps, tokens=...) -> records
      Final train loss per (width, lr); under muP the best lr should not move with width.
  plot_lr_transfer(records_sp, records_mup, png_path): loss vs lr, a line per width, two panels.

Both train through the loop's own step (jaxgpt.train.step.make_train_step) with the language-modeling
loss (jaxgpt.train.tasks.lm_loss) and the trainer's AdamW (jaxgpt.train.optim.make_optimizer with
mup_lr_scales). Records are lists of plain dicts (JSON-ready). Everything runs on whatever JAX device
is there, float32, no dropout. Plots use matplotlib's Agg canvas (no pyplot) and are written atomically.
"""

from __future__ import annotations

import math
import os
from typing import Dict, Iterable, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxgpt.files import save_figure_atomic
from jaxgpt.model.config import GPTConfig
from jaxgpt.model.gpt import GPT, MLP, CausalSelfAttention
from jaxgpt.train.optim import lr_schedule, make_optimizer, mup_lr_scales
from jaxgpt.train.step import LossFn, create_train_state, make_train_step
from jaxgpt.train.tasks import lm_loss, model_init

__all__ = ["PARAMETRIZATIONS", "synthetic_tokens", "mup_config", "coord_check", "coord_slope",
           "plot_coord_check", "lr_transfer", "plot_lr_transfer"]

PARAMETRIZATIONS = ("sp", "mup")
_TITLES = {"sp": "SP (GPT-2: init std 0.02, one global lr, 1/sqrt(K) attention)",
           "mup": "muP (1/m readout, 1/K attention, hidden init and lr / m)"}


def synthetic_tokens(n: int, vocab_size: int = 256, seed: int = 0, branching: int = 4) -> np.ndarray:
    """n int32 token ids from a fixed random bigram chain: each token is followed by one of
    `branching` random successors with Zipf probabilities 1/k. Learnable (entropy ~1.2 nats for
    branching 4 vs log(vocab_size) for uniform tokens), so losses mean something, yet free."""
    rng = np.random.default_rng(seed)
    successors = rng.integers(0, vocab_size, size=(vocab_size, branching))
    probs = 1.0 / np.arange(1, branching + 1)
    choice = rng.choice(branching, size=n, p=probs / probs.sum())
    out = np.empty(n, np.int32)
    out[0] = rng.integers(vocab_size)
    for i in range(1, n):
        out[i] = successors[out[i - 1], choice[i]]
    return out


def mup_config(width: int, parametrization: str, *, base_width: int, n_layer: int = 2, n_head: int = 4,
               block_size: int = 32, vocab_size: int = 256, **overrides):
    """The GPTConfig of one run: GPT-2 switches, no dropout, width n_embd = width; "mup" turns on
    muP with mup_base_width = base_width. n_head is the same at every width (K grows)."""
    if parametrization not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization must be one of {PARAMETRIZATIONS}, got {parametrization!r}")
    fields = dict(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=width,
                  dropout=0.0)
    fields.update(overrides)
    if parametrization == "mup":
        fields.update(mup=True, mup_base_width=base_width)
    return GPTConfig(**fields)


def _check_widths(widths: Sequence[int], n_head: int) -> List[int]:
    widths = [int(w) for w in widths]
    if not widths or any(w <= 0 or w % n_head for w in widths):
        raise ValueError(f"widths must be positive multiples of n_head={n_head}, got {widths}")
    return widths


def _windows(tokens: np.ndarray, rng: np.random.Generator, batch_size: int, block_size: int):
    """(x, y) int32 (B, T): random windows of the stream and the next tokens."""
    starts = rng.integers(0, len(tokens) - block_size - 1, size=batch_size)
    rows = np.stack([tokens[s:s + block_size + 1] for s in starts])
    return rows[:, :-1].astype(np.int32), rows[:, 1:].astype(np.int32)


def _stacked_windows(tokens: np.ndarray, rng: np.random.Generator, n: int, batch_size: int, block_size: int):
    """(xs, ys) int32 (n, B, T): n batches of _windows, for a scanned training run."""
    xy = [_windows(tokens, rng, batch_size, block_size) for _ in range(n)]
    return np.stack([b[0] for b in xy]), np.stack([b[1] for b in xy])


def _width_model(width: int, parametrization: str, **config):
    """(GPT at this width, init_params(rng), its muP lr scales or None) for a width sweep."""
    cfg = mup_config(width, parametrization, **config)
    model = GPT(cfg)
    init_params = model_init(model)
    return model, init_params, mup_lr_scales(jax.eval_shape(init_params, jax.random.key(0)), cfg)


def _token_stream(tokens: Optional[np.ndarray], vocab_size: Optional[int], block_size: int, seed: int):
    if tokens is None:
        vocab_size = vocab_size or 256
        tokens = synthetic_tokens(200_000, vocab_size, seed=seed)
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer) or len(tokens) < block_size + 2:
        raise ValueError(f"tokens must be a 1-D integer array longer than block_size + 1 = {block_size + 1}")
    if tokens.min() < 0:
        raise ValueError("tokens must be non-negative ids")
    vocab_size = vocab_size or int(tokens.max()) + 1
    if tokens.max() >= vocab_size:
        raise ValueError(f"token id {int(tokens.max())} >= vocab_size {vocab_size}")
    return tokens, vocab_size


def _activation_names(n_layer: int) -> List[str]:
    return ["embedding"] + [f"h_{i}.{part}" for i in range(n_layer) for part in ("attn", "mlp")] + ["logits"]


def _l1_of_intermediates(inter, n_layer: int) -> Dict[str, jax.Array]:
    def l1(x):
        return jnp.mean(jnp.abs(x.astype(jnp.float32)))

    out = {"embedding": l1(inter["wte"]["__call__"][0])}
    for i in range(n_layer):
        out[f"h_{i}.attn"] = l1(inter[f"h_{i}"]["attn"]["__call__"][0][0])  # (y, kv_cache)
        out[f"h_{i}.mlp"] = l1(inter[f"h_{i}"]["mlp"]["__call__"][0])
    out["logits"] = l1(inter["__call__"][0])
    return out


def _capture_filter(module, method_name: str) -> bool:
    if method_name != "__call__":
        return False
    return isinstance(module, (GPT, MLP, CausalSelfAttention)) or module.name == "wte"


def _activation_l1s(model: GPT, n_layer: int):
    """`l1s(params, x) -> {name: mean |activation|}`: a forward that captures the named activations."""

    def l1s(params, x_BT):
        _, state = model.apply({"params": params}, x_BT, capture_intermediates=_capture_filter,
                               mutable=["intermediates"])
        return _l1_of_intermediates(state["intermediates"], n_layer)

    return l1s


def _training_loss(model: GPT) -> LossFn:
    """The language-modeling task's loss in its deterministic form (rng None): the checks train
    without dropout or z-loss, whatever the config."""
    loss = lm_loss(model)
    return lambda params, batch, rng: loss(params, batch, None)


def _one_micro_step(x_BT, y_BT):
    """A batch as the shared train step takes it: a leading micro-step axis of 1 (no accumulation)."""
    return x_BT[None], y_BT[None]


# The shared step folds a dropout key into every update; the deterministic loss never reads it.
_UNUSED_DROPOUT_KEY_SEED = 0


def coord_check(widths: Sequence[int], parametrization: str, steps: int = 4, *, lr: float = 1e-2,
                tokens: Optional[np.ndarray] = None, vocab_size: Optional[int] = None,
                base_width: Optional[int] = None, n_layer: int = 2, n_head: int = 4, block_size: int = 32,
                batch_size: int = 8, seeds: Iterable[int] = (0,), weight_decay: float = 0.0,
                beta1: float = 0.9, beta2: float = 0.95, **config_overrides) -> List[dict]:
    """microsoft/mup's coordinate check for tiny GPTs trained with AdamW (no clipping, constant lr).

    For each width and seed: init (jax.random.key(seed)), then `steps` AdamW updates on batches
    of `tokens` (default: synthetic_tokens) drawn with np.random.default_rng(seed), the same
    batches at every width; each update is the trainer's step (make_train_step). After t updates
    (t = 0 at init ... steps) a forward on batch t, the batch of update t + 1, records the mean |x|
    of each named activation (see the module docstring); l1 is the mean over seeds.
    base_width (muP's d_base) defaults to min(widths). Returns one record per (width, step, name):
    {"parametrization", "width", "step", "name", "l1", "lr", "base_width", "n_layer"}.
    """
    widths = _check_widths(widths, n_head)
    base_width = base_width or min(widths)
    seeds = list(seeds)
    tokens, vocab_size = _token_stream(tokens, vocab_size, block_size, seeds[0])
    names = _activation_names(n_layer)
    batches = {seed: _stacked_windows(tokens, np.random.default_rng(seed), steps + 1, batch_size, block_size)
               for seed in seeds}  # the same batches at every width
    records = []
    for width in widths:
        model, init_params, scales = _width_model(width, parametrization, base_width=base_width, n_layer=n_layer,
                                                  n_head=n_head, block_size=block_size, vocab_size=vocab_size,
                                                  **config_overrides)
        optimizer = make_optimizer(lr, weight_decay=weight_decay, beta1=beta1, beta2=beta2, grad_clip=0.0,
                                   lr_scales=scales)
        init = jax.jit(lambda key, init_params=init_params, optimizer=optimizer:
                       create_train_state(init_params(key), optimizer))
        train_step = jax.jit(make_train_step(_training_loss(model), optimizer))
        activation_l1s = jax.jit(_activation_l1s(model, n_layer))
        rng = jax.random.key(_UNUSED_DROPOUT_KEY_SEED)
        sums = np.zeros((steps + 1, len(names)))
        for seed in seeds:
            xs, ys = batches[seed]
            state, l1s = init(jax.random.key(seed)), []
            for t in range(steps + 1):  # the activations after t steps, on batch t; then step t + 1
                l1s.append(activation_l1s(state.params, xs[t]))
                if t < steps:
                    state, _ = train_step(state, _one_micro_step(xs[t], ys[t]), rng)
            l1s = jax.device_get(l1s)
            sums += np.array([[np.float64(l1s[t][n]) for n in names] for t in range(steps + 1)])
        for t in range(steps + 1):
            for j, name in enumerate(names):
                records.append(dict(parametrization=parametrization, width=width, step=t, name=name,
                                    l1=sums[t, j] / len(seeds), lr=lr, base_width=base_width, n_layer=n_layer))
    return records


def coord_slope(records: Sequence[dict], parametrization: str, name: str = "logits",
                step: Optional[int] = None) -> float:
    """Least-squares slope of log(l1) against log(width) for one activation at one step (default:
    the last step): ~0 means width-independent, 1 means proportional to width."""
    rows = [r for r in records if r["parametrization"] == parametrization and r["name"] == name]
    if not rows:
        raise ValueError(f"no records for parametrization={parametrization!r}, name={name!r}")
    step = max(r["step"] for r in rows) if step is None else step
    rows = sorted((r for r in rows if r["step"] == step), key=lambda r: r["width"])
    if len(rows) < 2:
        raise ValueError(f"need at least two widths at step {step}, got {len(rows)}")
    x = np.log([r["width"] for r in rows])
    y = np.log([r["l1"] for r in rows])
    return float(np.polyfit(x, y, 1)[0])


# ---------------------------------------------------------------------------------------- plots


def _write_png(fig, png_path) -> None:
    """The figure as a PNG at png_path (its folder made if missing), written atomically."""
    png_path = os.fspath(png_path)
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    save_figure_atomic(fig, png_path, format="png")


def _figure(n_panels: int, width_per_panel: float = 6.2, height: float = 5.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib: heavy, imported for plots only
    from matplotlib.figure import Figure  # (as above)

    fig = Figure(figsize=(width_per_panel * n_panels, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_panels, sharey=True, squeeze=False)[0]
    return fig, list(axes)


def _width_axis(ax, widths) -> None:
    from matplotlib.ticker import FixedLocator, NullLocator  # matplotlib: heavy, imported for plots only

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(sorted(widths)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(w) for w in sorted(widths)])
    ax.set_xlabel("width n_embd (log scale)")


def plot_coord_check(records: Sequence[dict], png_path) -> None:
    """One panel per parametrization found in records (SP first): mean |activation| against width
    on log-log axes, shared y. Color = activation point, line style = training step (dotted: init,
    solid: the last step). Flat lines are what muP promises; SP's grow with width."""
    from matplotlib import colormaps  # matplotlib: heavy, imported for plots only
    from matplotlib.lines import Line2D  # (as above)

    params = [p for p in PARAMETRIZATIONS if any(r["parametrization"] == p for r in records)]
    if not params:
        raise ValueError("no coord-check records to plot")
    names = list(dict.fromkeys(r["name"] for r in records))
    steps = sorted({r["step"] for r in records})
    widths = sorted({r["width"] for r in records})
    cmap = colormaps["tab10"]
    colors = {n: cmap(i % 10) for i, n in enumerate(names)}
    # Line style by step: dotted at init, dashed in between (fainter = earlier), solid at the end.
    style = {s: ":" if i == 0 and len(steps) > 1 else "-" if i == len(steps) - 1 else "--"
             for i, s in enumerate(steps)}
    fig, axes = _figure(len(params))
    for ax, p in zip(axes, params):
        rows = [r for r in records if r["parametrization"] == p]
        for name in names:
            for i, s in enumerate(steps):
                pts = sorted((r["width"], r["l1"]) for r in rows if r["name"] == name and r["step"] == s)
                if not pts:
                    continue
                last = i == len(steps) - 1
                ax.plot(*zip(*pts), style[s], color=colors[name], marker="o", markersize=3.5 if last else 2.5,
                        linewidth=2.0 if last else 1.1, alpha=1.0 if last else 0.35 + 0.5 * i / max(len(steps) - 1, 1))
        base = rows[0].get("base_width")
        title = _TITLES[p] + (f"\nbase width {base}" if p == "mup" and base else "")
        ax.set_title(title, fontsize=10)
        ax.set_yscale("log")
        _width_axis(ax, widths)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("mean |coordinate| of the activation (log scale)")
    name_handles = [Line2D([], [], color=colors[n], marker="o", linewidth=2, label=n) for n in names]
    def step_label(s):
        return f"after {s} step{'s' if s != 1 else ''}" if s else "at init (step 0)"

    groups = [[steps[0]], steps[1:-1], [steps[-1]]] if len(steps) > 2 else [[s] for s in steps]
    step_handles = []
    for group in (g for g in groups if g):
        label = step_label(group[0]) if len(group) == 1 else \
            f"after {group[0]}-{group[-1]} steps (fainter = earlier)"
        step_handles.append(Line2D([], [], color="black", linestyle=style[group[-1]],
                                   linewidth=2.0 if group[-1] == steps[-1] else 1.1, label=label))
    axes[-1].legend(handles=name_handles, title="activation", loc="upper left", fontsize=8, title_fontsize=8)
    axes[0].legend(handles=step_handles, title="AdamW step", loc="upper left", fontsize=8, title_fontsize=8)
    lr = records[0].get("lr")
    fig.suptitle("Coordinate check: activation size vs width" + (f" (AdamW lr={lr:g}" if lr else "")
                 + (f", {records[0].get('n_layer')} layers)" if lr else ""), fontsize=12)
    _write_png(fig, png_path)


# ------------------------------------------------------------------------------- lr transfer


def lr_transfer(widths: Sequence[int], learning_rates: Sequence[float], parametrization: str, steps: int = 100, *,
                tokens: Optional[np.ndarray] = None, vocab_size: Optional[int] = None,
                base_width: Optional[int] = None, n_layer: int = 2, n_head: int = 4, block_size: int = 32,
                batch_size: int = 16, seed: int = 0, weight_decay: float = 0.1, beta1: float = 0.9,
                beta2: float = 0.95, grad_clip: float = 1.0, warmup_frac: float = 0.1,
                final_frac: float = 0.1, **config_overrides) -> List[dict]:
    """Train one tiny GPT per (width, lr) and report its final train loss.

    AdamW (jaxgpt.train.optim.make_optimizer, muP lr scales when parametrization="mup") with nanoGPT's
    schedule: linear warmup over warmup_frac * steps, cosine decay to lr/10 at `steps`. Batches of
    `tokens` (a 1-D array of token ids, e.g. the embedded corpus encoded; default synthetic_tokens)
    drawn with np.random.default_rng(seed): the same batches for every width and lr, the same init
    key per width. One compile per width (lr is an argument of the jitted step). Returns one record
    per (width, lr): {"parametrization", "width", "lr", "final_loss" (mean train loss of the last
    final_frac * steps steps, NaN if it diverged), "init_loss", "steps", "base_width"}.
    """
    widths = _check_widths(widths, n_head)
    learning_rates = [float(lr) for lr in learning_rates]
    if not learning_rates or any(not (lr > 0 and math.isfinite(lr)) for lr in learning_rates):
        raise ValueError(f"learning_rates must be positive, got {learning_rates}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    base_width = base_width or min(widths)
    tokens, vocab_size = _token_stream(tokens, vocab_size, block_size, seed)
    warmup = int(warmup_frac * steps)
    n_final = max(1, int(round(final_frac * steps)))
    xs, ys = _stacked_windows(tokens, np.random.default_rng(seed), steps, batch_size, block_size)
    records = []
    for width in widths:
        model, init_params, scales = _width_model(width, parametrization, base_width=base_width, n_layer=n_layer,
                                                  n_head=n_head, block_size=block_size, vocab_size=vocab_size,
                                                  **config_overrides)

        def optimizer(lr, scales=scales):
            return make_optimizer(lr_schedule(lr, lr / 10, warmup, steps), weight_decay=weight_decay,
                                  beta1=beta1, beta2=beta2, grad_clip=grad_clip, lr_scales=scales)

        @jax.jit
        def train(key, lr, xs, ys, loss=_training_loss(model), init_params=init_params, optimizer=optimizer):
            """Init (the same key for every lr) and `steps` shared train steps, scanned: one compile per width."""
            opt = optimizer(lr)
            train_step = make_train_step(loss, opt)
            rng = jax.random.key(_UNUSED_DROPOUT_KEY_SEED)

            def one(state, batch):
                state, metrics = train_step(state, _one_micro_step(*batch), rng)
                return state, metrics["loss"]

            _, losses = jax.lax.scan(one, create_train_state(init_params(key), opt), (xs, ys))
            return losses

        for lr in learning_rates:
            losses = np.asarray(train(jax.random.key(seed), jnp.float32(lr), xs, ys), np.float64)
            final = float(np.mean(losses[-n_final:]))
            records.append(dict(parametrization=parametrization, width=width, lr=lr,
                                final_loss=final if math.isfinite(final) else float("nan"),
                                init_loss=float(losses[0]), steps=steps, base_width=base_width))
    return records


def plot_lr_transfer(records_sp: Sequence[dict], records_mup: Sequence[dict], png_path) -> None:
    """Two panels (SP, muP): final train loss against lr (log scale), a line per width (darker =
    wider), the best lr of each width starred. Diverged runs (NaN) are left out; losses above the
    initial loss are clipped to the top of the shared y axis."""
    from matplotlib import colormaps  # matplotlib: heavy, imported for plots only

    panels = [("sp", list(records_sp)), ("mup", list(records_mup))]
    if not any(rows for _, rows in panels):
        raise ValueError("no lr-transfer records to plot")
    widths = sorted({r["width"] for _, rows in panels for r in rows})
    cmap = colormaps["viridis"]
    colors = {w: cmap(0.85 * (1 - i / max(len(widths) - 1, 1))) for i, w in enumerate(widths)}
    finite = [r["final_loss"] for _, rows in panels for r in rows if math.isfinite(r["final_loss"])]
    init = [r["init_loss"] for _, rows in panels for r in rows if math.isfinite(r.get("init_loss", math.nan))]
    fig, axes = _figure(2)
    for ax, (p, rows) in zip(axes, panels):
        for w in widths:
            pts = sorted((r["lr"], r["final_loss"]) for r in rows if r["width"] == w and math.isfinite(r["final_loss"]))
            if not pts:
                continue
            ax.plot(*zip(*pts), "-o", color=colors[w], markersize=3.5, linewidth=1.6, label=f"width {w}")
            best = min(pts, key=lambda t: t[1])
            ax.plot([best[0]], [best[1]], "*", color=colors[w], markersize=13, markeredgecolor="black")
        base = rows[0].get("base_width") if rows else None
        ax.set_title(_TITLES[p] + (f"\nbase width {base}" if p == "mup" and base else ""), fontsize=10)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (log scale)")
        ax.grid(True, which="both", alpha=0.3)
        if rows:
            ax.legend(title="star: best lr", fontsize=8, title_fontsize=8)
    axes[0].set_ylabel("final train loss")
    if finite:
        top = max(init) if init else max(finite)
        low = min(finite)
        axes[0].set_ylim(low - 0.05 * (top - low + 1e-9), top + 0.05 * (top - low + 1e-9))
    steps = next((r.get("steps") for _, rows in panels for r in rows), None)
    fig.suptitle("Learning-rate transfer across widths" + (f" ({steps} AdamW steps)" if steps else ""), fontsize=12)
    _write_png(fig, png_path)
