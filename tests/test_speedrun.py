"""The speedrun (issue 27): its measurement (whole-val evaluation, --eval_full_val; the train clock,
train_seconds in every eval event, continued by a resume) and its switches (Muon against a float64
hand computation, the wsd schedule, zero-initialized projections, their refusals). The twin parity
of mlp="relu2" and logit_softcap is a case of test_parity_switches.py."""

import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgpt import GPT, GPTConfig
from jaxgpt.data.store import ShardedSplit
from jaxgpt.train import loop as loop_lib
from jaxgpt.train.checkpoint import load_inference_params
from jaxgpt.train.full_eval import IGNORE, batched_windows, full_split_evaluator, make_split_loss_step, split_windows
from jaxgpt.train.loop import config_from_argv, prepare_data, train
from jaxgpt.train.metrics import read_metrics
from jaxgpt.train.muon import MuonSettings, muon_labels
from jaxgpt.train.optim import lr_schedule, make_optimizer
from jaxgpt.train.tasks import lm_loss
from helpers import TINY, one_line_exit_2, train_cli

EVAL_SLEEP_S = 0.4  # added to every evaluation of the shared run: the train clock must leave it out


def float64_mean_loss(model, params, tokens) -> float:
    """Mean cross-entropy over every target of `tokens` in non-overlapping windows of the model's
    block_size, the last window run at its own (shorter) length: no padding anywhere. float32 logits
    from the model, the log-softmax and the mean in float64."""
    tokens = np.asarray(tokens)
    T, n_targets = model.config.block_size, len(tokens) - 1
    full = n_targets // T
    apply = jax.jit(lambda x: model.apply({"params": params}, x))
    logits = [np.asarray(apply(jnp.asarray(tokens[:full * T].reshape(full, T).astype(np.int32))))]
    if n_targets > full * T:
        logits.append(np.asarray(apply(jnp.asarray(tokens[full * T:n_targets][None].astype(np.int32)))))
    flat = np.concatenate([lg.reshape(-1, lg.shape[-1]) for lg in logits]).astype(np.float64)
    top = flat.max(-1, keepdims=True)
    log_probs = flat - top - np.log(np.exp(flat - top).sum(-1, keepdims=True))
    return float(-log_probs[np.arange(n_targets), tokens[1:].astype(np.int64)].mean())


def test_split_windows_hold_every_target_once():
    tokens = np.arange(23, dtype=np.uint16)  # 22 targets: windows of 8, 8 and 6
    x, y = split_windows(tokens, 8)
    assert x.shape == y.shape == (3, 8) and x.dtype == y.dtype == np.int32
    counted = y != IGNORE
    assert counted.sum() == 22 and (y[counted] == np.arange(1, 23)).all()
    assert (x[counted] == np.arange(22)).all() and (y[2, 6:] == IGNORE).all()
    # Shards: no window crosses one; each shard's first token is no target.
    xs, ys = split_windows(ShardedSplit([np.arange(5, dtype=np.uint16), np.arange(100, 111, dtype=np.uint16),
                                         np.arange(1, dtype=np.uint16)]), 4)
    assert xs.shape == (1 + 3, 4)
    assert ys[ys != IGNORE].tolist() == [1, 2, 3, 4] + list(range(101, 111))
    bx, by = batched_windows(xs, ys, 3)  # 4 windows in 2 batches of 3: two windows of padding only
    assert bx.shape == by.shape == (2, 3, 4) and (by[1, 1:] == IGNORE).all()
    with pytest.raises(ValueError, match="no target"):
        split_windows(np.zeros(1, np.int32), 4)


def test_full_split_loss_is_the_mean_over_every_target():
    """Against float64_mean_loss, which runs each window at its own length (no padding at all):
    the padded last window and the padding windows must change nothing. Both sides use the same
    float32 logits; the difference is float32 rounding of the per-batch means and of their sum over
    <= 1000 batches (N*u = 6e-5 worst case, ~sqrt(N)*u = 2e-6 typical; 1e-5 relative; measured ~1e-7)."""
    cfg = GPTConfig(vocab_size=29, block_size=8, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    tokens = np.random.default_rng(0).integers(0, 29, 203).astype(np.uint16)  # 202 targets: 25 windows + 2
    step = jax.jit(make_split_loss_step(lm_loss(model)))
    got = full_split_evaluator(step, tokens, 8, 4, slice(0, 4), jnp.asarray)(params)
    want = float64_mean_loss(model, params, tokens)
    assert abs(got - want) <= 1e-5 * want, (got, want)


@pytest.fixture(scope="module")
def timed_run(tmp_path_factory, corpus_text):
    """A tiny --eval_full_val run of 20 iterations (evals at 0, 10, 20) resumed to 30, every
    evaluation slowed by EVAL_SLEEP_S: (out_dir, corpus path, the two summaries, events after 20
    iterations, events after the resume)."""
    path = tmp_path_factory.mktemp("speedrun_clock")
    corpus = path / "corpus.txt"
    corpus.write_text(corpus_text, encoding="utf-8")
    common = [f"--out_dir={path / 'run'}", *TINY, f"--dataset={corpus}", "--num_samples=0"]
    slow_evaluate = loop_lib.evaluate_metrics

    def evaluate_slowly(*args, **kwargs):
        time.sleep(EVAL_SLEEP_S)
        return slow_evaluate(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop_lib, "evaluate_metrics", evaluate_slowly)
        first = train(config_from_argv([*common, "--max_iters=20", "--eval_full_val=True"]))
        events_20 = read_metrics(path / "run" / "metrics.jsonl")
        resumed = train(config_from_argv([*common, "--init_from=resume", "--max_iters=30"]))
    return path / "run", str(corpus), first, resumed, events_20, read_metrics(path / "run" / "metrics.jsonl")


def test_eval_events_carry_the_train_clock_without_evaluation_time(timed_run):
    _, _, first, resumed, events_20, events = timed_run
    evals = [e for e in events_20 if "val_loss" in e]
    assert [e["iter"] for e in evals] == [0, 10, 20]
    seconds = [e["train_seconds"] for e in evals]
    assert seconds[0] == 0.0 and 0 < seconds[1] < seconds[2]
    assert first["train_seconds"] == seconds[2]
    # Three evaluations slept EVAL_SLEEP_S each inside the run's wall time, none inside the clock.
    assert seconds[2] <= first["seconds"] - 3 * EVAL_SLEEP_S
    # The resume continues the count from its checkpoint (and leaves the earlier events as they were).
    later = [e for e in events if "val_loss" in e]
    assert later[:3] == evals and later[3]["iter"] == 30
    assert later[3]["train_seconds"] > seconds[2]
    assert later[3]["train_seconds"] <= seconds[2] + resumed["seconds"] - EVAL_SLEEP_S
    assert resumed["train_seconds"] == later[3]["train_seconds"]


def test_eval_full_val_is_the_loss_over_every_val_target(timed_run):
    """The resumed run's val loss at iteration 30 (--eval_full_val, kept from the checkpoint's run
    options) against its final params evaluated by float64_mean_loss (tolerance: see
    test_full_split_loss_is_the_mean_over_every_target)."""
    out_dir, corpus, _, _, _, events = timed_run
    val = np.asarray(prepare_data(config_from_argv([*TINY, f"--dataset={corpus}"]))[1].val)
    model_cfg, params = load_inference_params(out_dir, "latest")
    logged = [e for e in events if "val_loss" in e][-1]
    assert logged["iter"] == 30 and model_cfg.block_size == 32
    want = float64_mean_loss(GPT(model_cfg), params, val)
    assert (len(val) - 1) % 32 and abs(logged["val_loss"] - want) <= 1e-5 * want, (logged["val_loss"], want)


# ------------------------------------------------------------------------------------------ Muon

NS_COEFFS = (3.4445, -4.7750, 2.0315)  # optax.contrib's (Keller Jordan's) quintic, 5 steps


def newton_schulz64(g: np.ndarray) -> np.ndarray:
    """Muon's orthogonalization of one matrix, by hand in float64: Frobenius-normalize, then 5 steps of
    X <- a X + (b A + c A^2) X with A = X X^T, on the wide orientation."""
    tall = g.shape[0] > g.shape[1]
    x = g.T if tall else g
    x = x / (np.linalg.norm(x) + 1e-8)
    a, b, c = NS_COEFFS
    for _ in range(5):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def orthogonalize64(g: np.ndarray, reduction, output) -> np.ndarray:
    """newton_schulz64 of each (fan-in, fan-out) matrix of a kernel; the other axes are a batch."""
    batch = [i for i in range(g.ndim) if i not in reduction + output]
    order = batch + list(reduction) + list(output)
    moved = np.transpose(g, order)
    r, c = math.prod(g.shape[i] for i in reduction), math.prod(g.shape[i] for i in output)
    flat = moved.reshape(-1, r, c)
    done = np.stack([newton_schulz64(m) for m in flat]).reshape(moved.shape)
    return np.transpose(done, np.argsort(order))


# (reduction axes, output axes) of each hidden kernel as the test expects Muon to read it
MUON_AXES = {("attn", "c_attn"): ((0,), (2, 3)), ("attn", "c_proj"): ((0, 1), (2,)),
             ("mlp", "c_fc"): ((0,), (1,)), ("mlp", "c_proj"): ((0,), (1,))}


def test_muon_update_matches_a_float64_hand_computation():
    """Two updates of make_optimizer(muon_settings=...) on a 1-layer GPT's params against float64 by hand:
    Muon (Nesterov momentum with optax's bias correction, Newton-Schulz, sqrt(max(1, fan_out/fan_in)))
    on the hidden kernels, AdamW with the decay mask on everything else.
    Tolerance from float32 arithmetic: each Newton-Schulz step is three matmuls of length n <= 128
    (~sqrt(n) u = 7e-7 relative each, random rounding); an error in a small singular value is
    amplified by at most the iteration's slope at 0, a = 3.44, per step, 3.44^5 = 480 over 5 steps,
    so <= 480 * 3 * 7e-7 = 1e-3 of the update's scale, plus the same through the second step's
    momentum: 2e-3. [measured worst 2.6e-6: the amplification needs singular values near 0.] AdamW's
    leaves: a few float32 operations per entry, 1e-5 relative."""
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=32, bias=True)
    params = jax.jit(GPT(cfg).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    lr, muon_lr, beta, b1, b2, eps, wd = 1e-2, 0.05, 0.9, 0.8, 0.95, 1e-8, 0.1
    optimizer = make_optimizer(lr, weight_decay=wd, beta1=b1, beta2=b2, eps=eps, grad_clip=0.0,
                               muon_settings=MuonSettings(muon_lr, momentum=beta))
    rng = np.random.default_rng(3)
    grads = [jax.tree_util.tree_map(lambda p: rng.standard_normal(p.shape).astype(np.float32), params)
             for _ in range(2)]
    state, update = optimizer.init(params), jax.jit(optimizer.update)
    got = []
    for g in grads:
        updates, state = update(g, state, params)
        got.append(updates)

    flat_params = {jax.tree_util.keystr(k): np.asarray(v, np.float64)
                   for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    seen_muon = set()
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        key = jax.tree_util.keystr(path)
        names = tuple(getattr(k, "key", k) for k in path)
        g64 = [np.asarray(_leaf(g, path), np.float64) for g in grads]
        kind = names[-3:-1] if names[0].startswith("h_") and names[-1] == "kernel" else None
        want = []
        if kind in MUON_AXES:
            seen_muon.add(kind)
            reduction, output = MUON_AXES[kind]
            fan_in = math.prod(g64[0].shape[i] for i in reduction)
            fan_out = math.prod(g64[0].shape[i] for i in output)
            mu = np.zeros_like(g64[0])
            for t, g in enumerate(g64, start=1):
                mu = beta * mu + (1 - beta) * g
                nesterov = beta * mu / (1 - beta ** (t + 1)) + (1 - beta) * g / (1 - beta ** t)
                shape_scale = math.sqrt(max(1.0, fan_out / fan_in))
                want.append(-muon_lr * shape_scale * orthogonalize64(nesterov, reduction, output))
            tolerance = 2e-3
        else:
            m = v = np.zeros_like(g64[0])
            decayed = names[-1] in ("kernel", "embedding")
            for t, g in enumerate(g64, start=1):
                m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
                step = (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
                want.append(-lr * (step + (wd * flat_params[key] if decayed else 0.0)))
            tolerance = 1e-5
        for t in range(2):
            have = np.asarray(_leaf(got[t], path), np.float64)
            scale = np.max(np.abs(want[t]))
            assert scale > 0 and np.max(np.abs(have - want[t])) <= tolerance * scale, (key, t)
    assert seen_muon == set(MUON_AXES)


def _leaf(tree, path):
    for k in path:
        tree = tree[getattr(k, "key", k)]
    return tree


def test_muon_takes_exactly_the_hidden_matrices():
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, mlp="swiglu", qk_norm=True,
                    tie_embeddings=False)
    shapes = jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    labels = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(muon_labels(shapes))[0]}
    muon = sorted(k for k, v in labels.items() if v == "muon")
    assert muon == sorted(f"['h_{i}']['{a}']['{b}']['kernel']" for i in range(2) for a, b in
                          [("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_gate"),
                           ("mlp", "c_proj")])
    assert "['lm_head']['kernel']" in labels and labels["['wte']['embedding']"] == "adamw"


def test_muon_takes_a_classifiers_backbone_matrices_and_leaves_its_head_to_adamw():
    # a classifier nests the GPT under "backbone": --optimizer=muon once silently trained it all with AdamW
    from jaxgpt.finetune.classify import classifier_init
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)
    shapes = jax.eval_shape(lambda rng: classifier_init(cfg, 3, "all", 4, rng), jax.random.key(0))
    labels = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(muon_labels(shapes))[0]}
    muon = sorted(k for k, v in labels.items() if v == "muon")
    assert muon == sorted(f"['backbone']['h_{i}']['{a}']['{b}']['kernel']" for i in range(2) for a, b in
                          [("attn", "c_attn"), ("attn", "c_proj"), ("mlp", "c_fc"), ("mlp", "c_proj")])
    assert all(v == "adamw" for k, v in labels.items() if k.startswith("['head']"))


# ------------------------------------------------------------------- schedule, init, configuration

def test_wsd_schedule_warms_up_holds_then_cools_down_linearly():
    schedule = lr_schedule(1e-2, 1e-3, warmup_iters=10, lr_decay_iters=100, kind="wsd", cooldown_frac=0.3)
    lr = {it: float(schedule(it)) for it in (0, 9, 10, 50, 70, 85, 100, 150)}
    cosine = lr_schedule(1e-2, 1e-3, warmup_iters=10, lr_decay_iters=100)
    assert lr[0] == float(cosine(0)) and lr[9] == float(cosine(9))  # nanoGPT's warmup
    assert lr[10] == lr[50] == lr[70] == pytest.approx(1e-2, rel=1e-6)  # stable until 70 = 100 * (1 - 0.3)
    assert lr[85] == pytest.approx(1e-2 + 0.5 * (1e-3 - 1e-2))  # halfway down the line
    assert lr[100] == pytest.approx(1e-3) and lr[150] == pytest.approx(1e-3)


def test_zero_init_proj_zeroes_both_projections_and_nothing_else():
    base = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)
    init = lambda cfg: jax.jit(GPT(cfg).init)(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]  # noqa: E731
    plain, zeroed = init(base), init(base.replace(zero_init_proj=True))
    for (path, a), (_, b) in zip(jax.tree_util.tree_flatten_with_path(plain)[0],
                                 jax.tree_util.tree_flatten_with_path(zeroed)[0]):
        key = jax.tree_util.keystr(path)
        if key.endswith("['c_proj']['kernel']"):
            assert not np.any(np.asarray(b)) and np.any(np.asarray(a)), key
        else:
            np.testing.assert_array_equal(a, b, err_msg=key)
    torch = pytest.importorskip("torch")
    from reference.torch_twin import TorchGPT

    torch.manual_seed(0)
    twin_plain = TorchGPT(base).state_dict()
    torch.manual_seed(0)
    twin_zeroed = TorchGPT(base.replace(zero_init_proj=True)).state_dict()
    for key, tensor in twin_plain.items():
        if key.endswith("c_proj.weight"):
            assert not twin_zeroed[key].any() and tensor.any(), key
        else:
            assert torch.equal(tensor, twin_zeroed[key]), key


def test_speedrun_switches_refuse_bad_values_in_one_line(capsys):
    for args, expected in [(["--optimizer=muon", "--mup=True", "--mup_base_width=32"], "--optimizer=muon and --mup"),
                           (["--muon_momentum=1.0"], "--muon_momentum must be in [0, 1)"),
                           (["--muon_ns_steps=0"], "--muon_ns_steps must be >= 1"),
                           (["--cooldown_frac=0"], "--cooldown_frac must be in (0, 1]"),
                           (["--logit_softcap=-1"], "--logit_softcap must be a finite number >= 0"),
                           (["--schedule=linear"], "--schedule")]:
        one_line_exit_2(train_cli(capsys, "--out_dir=never_written", *args), expected)
