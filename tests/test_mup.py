"""muP (GPTConfig.mup): the forward against the PyTorch twin (logits, loss, every gradient), the
init, the decode path, muP == SP at the base width, the per-layer learning rates of
jaxgpt.train.optim (bit-exact 1/m steps, the weight-decay convention, torch AdamW param groups), and the
coordinate check of jaxgpt.scale.mup: activation scales grow with width under SP and stay flat under
muP. float32 on CPU (x64 stays off).

Parity tolerances are those of test_parity_switches.py and derived the same way, from float32
arithmetic (unit roundoff u = 2**-24 = 6.0e-8): the frameworks sum in different orders, the
longest reductions are n <= 256 (the swiglu hidden width of D = 96; D, vocab and T are smaller),
sqrt(n) * u = 1e-6 per matmul, ~10 chained reductions per layer pair: logits within
sqrt(10) * 1e-6 = 3e-6 of their scale, gradients twice the chain. muP only multiplies by
constants (the attention scale, the readout's 1/m), one extra rounding each (u relative):
    LOGITS_REL = 1e-5, GRAD_REL = 2e-5, GRAD_ABS = 1e-7 (per tensor, relative to max|.|),
    loss within 2 max|dlogit| + 4e-6 * loss (cross-entropy is 2-Lipschitz in max|logit|).
"""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jaxgpt.model.config import GPTConfig
from jaxgpt.model.gpt import GPT, cross_entropy_loss, init_kv_cache
from jaxgpt.scale.mup import (coord_check, coord_slope, lr_transfer, mup_config, plot_coord_check, plot_lr_transfer,
                        synthetic_tokens)
from jaxgpt.train.optim import make_optimizer, mup_lr_scales, weight_decay_mask
from reference.torch_twin import TorchGPT, flax_to_torch, torch_to_flax
from torch_helpers import (assert_trees_close, max_abs_diff, random_tokens, random_torch_model, tiny_config,
                           torch_grads, trees_exactly_equal)

assert not jax.config.jax_enable_x64

LOGITS_REL = 1e-5
GRAD_REL, GRAD_ABS = 2e-5, 1e-7
LOSS_ROUNDING_REL = 4e-6

SWITCHES = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True)


def _abstract_params(cfg):
    return jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]


def _init(cfg, seed=0):
    return jax.jit(GPT(cfg).init)(jax.random.key(seed), jnp.zeros((1, 4), jnp.int32))["params"]


# ------------------------------------------------------------------------------------ config


def test_defaults_are_off_and_multipliers_are_one():
    cfg = GPTConfig()
    assert (cfg.mup, cfg.mup_base_width) == (False, 0)
    assert cfg.mup_width_mult == cfg.mup_mlp_width_mult == 1.0
    assert cfg.mup_attn_scale == 1 / math.sqrt(64)
    assert GPTConfig.from_dict({k: v for k, v in cfg.to_dict().items() if not k.startswith("mup")}) == cfg


def test_multipliers():
    cfg = GPTConfig(n_embd=768, n_head=12, mup=True, mup_base_width=192)
    assert cfg.mup_width_mult == cfg.mup_mlp_width_mult == 4.0
    assert cfg.mup_attn_scale == pytest.approx(math.sqrt(16) / 64)  # sqrt(K_base) / K, K_base = 192 / 12
    # At the base width muP's multipliers are SP's.
    base = cfg.replace(n_embd=192)
    assert base.mup_width_mult == 1.0 and base.mup_attn_scale == pytest.approx(1 / math.sqrt(base.head_dim))
    # SwiGLU's hidden width is rounded to a multiple of 64, so c_proj's fan-in multiplier is F / F_base.
    sw = GPTConfig(n_embd=96, n_head=4, mlp="swiglu", mup=True, mup_base_width=32)
    assert (sw.mlp_hidden_dim, sw.mup_width_mult, sw.mup_mlp_width_mult) == (256, 3.0, 2.0)


@pytest.mark.parametrize("overrides, message", [
    (dict(mup=True), r"mup_base_width must be a positive integer when mup=True .*got 0"),
    (dict(mup=True, mup_base_width=-8), r"mup_base_width must be a non-negative integer, got -8"),
    (dict(mup_base_width=16.0), r"mup_base_width must be a non-negative integer, got 16.0"),
    (dict(mup_base_width=True), r"mup_base_width must be a non-negative integer, got True"),
    (dict(mup=1, mup_base_width=16), r"GPTConfig.mup must be True or False, got 1"),
])
def test_bad_mup_values_raise_value_error_naming_field_and_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


# ------------------------------------------------------------------------------ torch parity


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    overrides: dict
    T: int
    B: int = 3


CASES = [
    Case("m4-L2-tied-bias-Tfull-dpa", dict(n_embd=64, n_head=4, mup=True, mup_base_width=16), T=16),
    Case("m2-L1-untied-bias-T11-explicit",
         dict(n_embd=64, n_head=4, n_layer=1, tie_embeddings=False, attn_impl="explicit", mup=True,
              mup_base_width=32), T=11),
    Case("m3-L1-switches-untied-nobias-T13",  # swiglu: c_proj's multiplier F / F_base = 2, not m = 3
         dict(SWITCHES, n_embd=96, n_head=4, n_layer=1, bias=False, tie_embeddings=False, mup=True,
              mup_base_width=32), T=13),
]


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def run(request):
    case = request.param
    cfg = tiny_config(**case.overrides)
    seed = 70 + CASES.index(case)
    tm = random_torch_model(cfg, seed=seed)
    params = torch_to_flax({k: v.detach().clone() for k, v in tm.state_dict().items()}, cfg)
    x_BT = random_tokens(cfg, (case.B, case.T), seed=100 + seed)
    y_BT = random_tokens(cfg, (case.B, case.T), seed=200 + seed, ignore_fraction=0.15)
    model = GPT(cfg)

    def loss_fn(p):
        logits = model.apply({"params": p}, x_BT)
        return cross_entropy_loss(logits, y_BT), logits

    (loss, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    t_logits, t_loss = tm(torch.from_numpy(x_BT).long(), torch.from_numpy(y_BT).long())
    t_loss.backward()
    sp_logits = GPT(cfg.replace(mup=False)).apply({"params": params}, x_BT)  # same weights, SP forward
    return dict(case=case, cfg=cfg, params=params, x=x_BT, logits=np.asarray(logits), loss=float(loss),
                grads=grads, t_logits=t_logits.detach().numpy(), t_loss=t_loss.item(),
                t_grads=torch_to_flax(torch_grads(tm), cfg), sp_logits=np.asarray(sp_logits))


def test_logits_and_loss_match_torch(run):
    logits, t_logits = run["logits"], run["t_logits"]
    scale = float(np.max(np.abs(t_logits)))
    assert scale > 0.25  # the 1/m readout makes them smaller than SP's, still far above rounding
    d_logits = max_abs_diff(logits, t_logits)
    assert d_logits <= LOGITS_REL * scale, f"logits differ by {d_logits:.3g} (scale {scale:.3g})"
    bound = 2 * d_logits + LOSS_ROUNDING_REL * max(1.0, abs(run["t_loss"]))
    assert abs(run["loss"] - run["t_loss"]) <= bound
    # Not vacuous: muP's multipliers change the function (SP on the same weights is far away).
    assert max_abs_diff(run["sp_logits"], logits) > 1e3 * LOGITS_REL * scale


def test_every_gradient_matches_torch(run):
    grads, t_grads = run["grads"], run["t_grads"]
    assert_trees_close(grads, t_grads, GRAD_REL, GRAD_ABS, "gradients")
    for path, g in jax.tree_util.tree_flatten_with_path(t_grads)[0]:
        if run["cfg"].pos_emb == "learned" and "c_attn" in jax.tree_util.keystr(path) and g.ndim == 3:
            continue  # the qkv bias: its key third has an exactly-zero gradient with learned positions
        assert np.max(np.abs(g)) > 1e-4, jax.tree_util.keystr(path)


def test_decode_path_uses_the_mup_attention_scale(run):
    """GPT.decode (cached attention, its own einsum path) gives the forward's logits."""
    cfg, params, x_BT = run["cfg"], run["params"], run["x"]
    B, T = x_BT.shape
    caches = init_kv_cache(cfg, B, cfg.block_size)
    logits, _ = GPT(cfg).apply({"params": params}, jnp.asarray(x_BT), jnp.broadcast_to(jnp.arange(T), (B, T)),
                               caches, jnp.int32(0), jnp.ones((B, cfg.block_size), bool), method=GPT.decode)
    scale = float(np.max(np.abs(run["logits"])))
    assert max_abs_diff(logits, run["logits"]) <= LOGITS_REL * scale


def test_twin_generate_cached_equals_naive_under_mup():
    cfg = tiny_config(n_embd=64, n_head=4, mup=True, mup_base_width=16)
    tm = random_torch_model(cfg, seed=5)
    prompt = torch.from_numpy(random_tokens(cfg, (2, 5), seed=6)).long()
    new = cfg.block_size + 3
    naive = tm.generate_naive(prompt, new, greedy=True)
    assert torch.equal(tm.generate_cached(prompt, new, greedy=True), naive)


def test_mup_at_the_base_width_is_sp():
    """m = 1: the same init (bit for bit, same key) and the same logits up to the rounding of
    multiplying by 1/sqrt(K) instead of dividing by sqrt(K) (a few ulps)."""
    sp = tiny_config(n_embd=64, n_head=4)
    mup = sp.replace(mup=True, mup_base_width=64)
    x = jnp.asarray(random_tokens(sp, (2, 16), seed=3))
    p_sp, p_mup = _init(sp, 1), _init(mup, 1)
    assert trees_exactly_equal(p_sp, p_mup)
    l_sp = jax.jit(GPT(sp).apply)({"params": p_sp}, x)
    l_mup = jax.jit(GPT(mup).apply)({"params": p_sp}, x)
    assert max_abs_diff(l_sp, l_mup) <= 1e-6 * float(np.max(np.abs(l_sp)))


def test_init_follows_mup():
    """Hidden matrices: std 0.02 / sqrt(fan-in multiplier) (x 1/sqrt(2L) for the residual
    projections); embeddings 0.02 at any width; the same in the twin. The std of n >= 24k normal
    samples is within ~0.5% of the truth (relative std error 1/sqrt(2n)): bound 5%."""
    cfg = GPTConfig(vocab_size=97, block_size=16, n_layer=2, n_head=4, n_embd=128, mlp="swiglu", mup=True,
                    mup_base_width=32, tie_embeddings=False)
    m, m_f, resid = cfg.mup_width_mult, cfg.mup_mlp_width_mult, 1 / math.sqrt(2 * cfg.n_layer)
    assert (m, m_f) == (4.0, 384 / 128)
    want = {"attn/c_attn": 0.02 / math.sqrt(m), "attn/c_proj": 0.02 * resid / math.sqrt(m),
            "mlp/c_fc": 0.02 / math.sqrt(m), "mlp/c_gate": 0.02 / math.sqrt(m),
            "mlp/c_proj": 0.02 * resid / math.sqrt(m_f)}
    params = _init(cfg)
    torch.manual_seed(0)
    t_params = torch_to_flax(TorchGPT(cfg).state_dict(), cfg)
    for tree in (params, t_params):
        for name, std in want.items():
            kernel = np.asarray(tree["h_1"][name.split("/")[0]][name.split("/")[1]]["kernel"])
            assert abs(kernel.std() / std - 1) < 0.05, (name, kernel.std(), std)
        for name in ("wte", "wpe"):
            assert abs(np.asarray(tree[name]["embedding"]).std() / 0.02 - 1) < 0.05, name
        assert abs(np.asarray(tree["lm_head"]["kernel"]).std() / 0.02 - 1) < 0.05  # readout: 1/m multiplier


# ------------------------------------------------------------------------- per-layer lr


def test_lr_scales_classify_hidden_matrices():
    cfg = tiny_config(n_embd=96, n_head=4, mup=True, mup_base_width=32, tie_embeddings=False, **SWITCHES)
    shapes = _abstract_params(cfg)
    assert mup_lr_scales(shapes, cfg.replace(mup=False)) is None
    scales = mup_lr_scales(shapes, cfg)
    flat = {jax.tree_util.keystr(p, simple=True, separator="/"): s
            for p, s in jax.tree_util.tree_flatten_with_path(scales)[0]}
    hidden = {k: v for k, v in flat.items() if v != 1.0}
    assert hidden == {f"h_{i}/{k}/kernel": (1 / 2 if k == "mlp/c_proj" else 1 / 3)
                      for i in range(cfg.n_layer) for k in ("attn/c_attn", "attn/c_proj", "mlp/c_fc", "mlp/c_gate",
                                                             "mlp/c_proj")}
    # Vector-like: embeddings, biases, norm and qk-norm scales, and the readout (lm_head).
    assert flat["wte/embedding"] == flat["lm_head/kernel"] == flat["h_0/attn/q_norm/scale"] == 1.0


def _grads(params, seed):
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda p: (rng.standard_normal(p.shape) * 10.0 ** rng.uniform(-6, 0, p.shape)).astype(np.float32), params)


def test_mup_off_optimizer_is_bit_identical_to_plain_adamw():
    """lr_scales=None builds exactly clip + optax.adamw with the decay mask (the code before muP):
    same opt-state tree (old checkpoints restore) and bit-identical updates over 3 steps."""
    cfg = tiny_config(n_layer=1)
    params = _init(cfg)
    ours = make_optimizer(3e-3, weight_decay=0.1, grad_clip=1.0,
                          lr_scales=mup_lr_scales(params, cfg))
    ref = optax.chain(optax.clip_by_global_norm(1.0),
                      optax.adamw(3e-3, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1, mask=weight_decay_mask))
    s_ours, s_ref = ours.init(params), ref.init(params)
    assert jax.tree_util.tree_structure(s_ours) == jax.tree_util.tree_structure(s_ref)
    p_ours = p_ref = params
    update_ours, update_ref = jax.jit(ours.update), jax.jit(ref.update)
    for step in range(3):
        g = _grads(params, step)
        u_ours, s_ours = update_ours(g, s_ours, p_ours)
        u_ref, s_ref = update_ref(g, s_ref, p_ref)
        assert trees_exactly_equal(u_ours, u_ref)
        p_ours, p_ref = optax.apply_updates(p_ours, u_ours), optax.apply_updates(p_ref, u_ref)


@pytest.mark.parametrize("m", [2, 4])
def test_first_adam_step_of_a_hidden_kernel_is_exactly_one_over_m(m):
    """Same params, same gradient, base width D/m vs D (m = 1): the hidden kernels' first AdamW
    update is exactly 1/m of the m = 1 one (a power of two, so the scaling rounds exactly), every
    vector-like leaf's update is identical. Weight decay: the default keeps the decay step
    lr * wd * p at every width (microsoft/mup's MuAdamW default), scale_weight_decay=True scales
    it with the lr (torch AdamW param group lr / m)."""
    cfg1 = tiny_config(n_embd=64, n_head=4, mup=True, mup_base_width=64)
    cfgm = cfg1.replace(mup_base_width=64 // m)
    params = _init(cfg1)
    g = _grads(params, 0)
    zero = jax.tree_util.tree_map(np.zeros_like, g)
    hidden = ("h_0", "mlp", "c_fc", "kernel")

    def first_update(cfg, grads, **kw):
        opt = make_optimizer(1e-2, grad_clip=0, lr_scales=mup_lr_scales(params, cfg), **kw)
        return jax.jit(opt.update)(grads, opt.init(params), params)[0]

    def leaf(tree, path):
        for k in path:
            tree = tree[k]
        return np.asarray(tree)

    for kw in (dict(weight_decay=0.0), dict(weight_decay=0.1, scale_weight_decay=True)):
        u1, um = first_update(cfg1, g, **kw), first_update(cfgm, g, **kw)
        assert np.array_equal(leaf(um, hidden), leaf(u1, hidden) / m)
        assert np.max(np.abs(leaf(u1, hidden))) > 0
        for path, u in jax.tree_util.tree_flatten_with_path(um)[0]:
            names = tuple(k.key for k in path)
            ref = leaf(u1, names)
            if names[-1] == "kernel" and names[0].startswith("h_"):
                assert np.array_equal(np.asarray(u), ref / m), names
            else:
                assert np.array_equal(np.asarray(u), ref), names
    # The decay part alone (zero gradient: Adam's step is exactly 0): lr * wd * p at every width
    # by default, lr / m * wd * p with scale_weight_decay=True.
    d1 = first_update(cfg1, zero, weight_decay=0.1)
    dm = first_update(cfgm, zero, weight_decay=0.1)
    assert np.array_equal(leaf(dm, hidden), leaf(d1, hidden))
    np.testing.assert_allclose(leaf(d1, hidden), -1e-2 * 0.1 * leaf(params, hidden), rtol=1e-6)
    ds = first_update(cfgm, zero, weight_decay=0.1, scale_weight_decay=True)
    assert np.array_equal(leaf(ds, hidden), leaf(d1, hidden) / m)


@pytest.mark.parametrize("scale_weight_decay", [False, True])
def test_mup_adamw_matches_torch_adamw_param_groups(scale_weight_decay):
    """make_optimizer(lr_scales=...) == torch.optim.AdamW with microsoft/mup's MuAdamW groups:
    lr * s per tensor and weight_decay / s (default: lr * wd unchanged, mup's decoupled_wd=False)
    or weight_decay (scale_weight_decay=True, mup's decoupled_wd=True) on decayed tensors.
    Identical gradients, so only rounding differs: per tensor <= 1e-6 * max|p| + 1e-9, as in
    test_parity's AdamW arithmetic test; a wrong group would be off by ~lr * wd * |p| = 1e-3 |p|
    per step or by lr (1 - s) per element."""
    cfg = tiny_config(n_embd=64, n_head=4, n_layer=1, tie_embeddings=False, mup=True, mup_base_width=16)
    lr, wd, betas, eps = 1e-2, 0.1, (0.9, 0.95), 1e-8
    tm = random_torch_model(cfg, seed=11)
    params = torch_to_flax(tm.state_dict(), cfg)
    scales = mup_lr_scales(params, cfg)
    opt = make_optimizer(lr, weight_decay=wd, beta1=betas[0], beta2=betas[1], eps=eps, grad_clip=0,
                         lr_scales=scales, scale_weight_decay=scale_weight_decay)
    as_torch = lambda tree: flax_to_torch(jax.tree_util.tree_map(
        lambda v, p: np.full(np.shape(p), float(v), np.float32), tree, params), cfg)
    t_scale, t_decay = as_torch(scales), as_torch(weight_decay_mask(params))
    groups = []
    for name, p in tm.named_parameters():
        s, decayed = float(t_scale[name].flatten()[0]), bool(t_decay[name].flatten()[0])
        groups.append({"params": [p], "lr": lr * s,
                       "weight_decay": (wd if scale_weight_decay else wd / s) if decayed else 0.0})
    assert sorted({g["lr"] for g in groups}) == [lr / 4, lr]
    t_opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    state = opt.init(params)
    for step in range(3):
        g = _grads(params, step)
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
        t_g = flax_to_torch(g, cfg)
        for name, p in tm.named_parameters():
            p.grad = t_g[name].clone()
        t_opt.step()
    assert_trees_close(params, torch_to_flax(tm.state_dict(), cfg), 1e-6, 1e-9, "params after muP AdamW steps")


# ---------------------------------------------------------------------- coordinate check

# widths 32, 128, 512 (x4 apart), 2 layers, block 32, batch 8, AdamW lr 1e-2, 2 seeds; the slope
# of log(mean |x|) against log(width) after 4 steps. What the math predicts, per activation:
#   SP (GPT-2: init std 0.02, one lr): an lr-sized Adam step on a width-n matrix moves its output
#     by ~ lr * n (the step is correlated with the input), so trained activations grow ~ width:
#     hidden outputs (two stacked matrices) slope >= 1 already at init (sqrt(n) per matrix with a
#     fixed std) and more once trained; logits slope 1/2 at init (sum of n random terms), -> 1 as
#     the wte updates take over. Asserted: hidden > 1.0, logits > 0.5.
#   muP: the correlated part of every update is O(1) at any width; what shrinks is the random
#     part of an update (~ m^-1/2) and the init logits (~ m^-1/2, the 1/m readout), so slopes lie
#     in [-1/2, 0] and approach 0 as training proceeds. Asserted: logits within +-0.25, hidden in
#     (-0.4, 0.15).
# Measured (seeds 0,1 and 2,3): SP logits 0.78-0.85, hidden 1.96-2.03; muP logits -0.06,
# hidden -0.20..-0.25; embeddings ~0 in both.
COORD = dict(widths=(32, 128, 512), steps=4, seeds=(0, 1))
HIDDEN = ("h_0.attn", "h_0.mlp", "h_1.attn", "h_1.mlp")


def _slopes(records, p):
    return coord_slope(records, p, "logits"), float(np.mean([coord_slope(records, p, n) for n in HIDDEN]))


def test_coord_check_sp_grows_with_width():
    records = coord_check(COORD["widths"], "sp", COORD["steps"], seeds=COORD["seeds"])
    assert len(records) == 3 * 5 * 6  # widths x steps 0..4 x named activations
    logits, hidden = _slopes(records, "sp")
    assert logits > 0.5 and hidden > 1.0, (logits, hidden)
    assert abs(coord_slope(records, "sp", "embedding")) < 0.1  # embeddings: width-independent in both


def test_coord_check_mup_is_flat():
    records = coord_check(COORD["widths"], "mup", COORD["steps"], seeds=COORD["seeds"])
    logits, hidden = _slopes(records, "mup")
    assert abs(logits) < 0.25 and -0.4 < hidden < 0.15, (logits, hidden)
    assert coord_slope(records, "mup", "logits", step=0) == pytest.approx(-0.5, abs=0.1)  # init: the 1/m readout
    assert abs(coord_slope(records, "mup", "embedding")) < 0.1


def _fake_coord_records():
    out = []
    for p, slope in (("sp", 1.0), ("mup", 0.0)):
        for w in (64, 128, 256):
            for t in range(3):
                for i, n in enumerate(("embedding", "h_0.attn", "h_0.mlp", "logits")):
                    out.append(dict(parametrization=p, width=w, step=t, name=n, l1=(0.1 + i) * (w / 64) ** (slope * t / 2),
                                    lr=1e-2, base_width=64, n_layer=1))
    return out


def test_plots_are_written_atomically(tmp_path):
    png = tmp_path / "sub" / "coord.png"
    plot_coord_check(_fake_coord_records(), png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    plot_coord_check(_fake_coord_records(), png)  # overwrites in place
    recs = [dict(parametrization=p, width=w, lr=lr, final_loss=3.0 + abs(math.log10(lr) + 2) + (w == 64) * 0.1,
                 init_loss=5.6, steps=10, base_width=32) for p in ("sp", "mup") for w in (32, 64) for lr in (1e-3, 1e-2, 1e-1)]
    recs[-1]["final_loss"] = float("nan")  # a diverged run is left out, not plotted
    lr_png = tmp_path / "lr.png"
    plot_lr_transfer([r for r in recs if r["parametrization"] == "sp"],
                     [r for r in recs if r["parametrization"] == "mup"], lr_png)
    assert lr_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(tmp_path)) == ["lr.png", "sub"] and os.listdir(tmp_path / "sub") == ["coord.png"]


def test_lr_transfer_smoke():
    """One width (m = 2), two lrs, 3 steps on given tokens: one compile."""
    tokens = synthetic_tokens(5000, vocab_size=64, seed=1)
    records = lr_transfer((32,), (1e-3, 3e-2), "mup", steps=3, tokens=tokens, base_width=16, n_layer=1,
                          batch_size=4, block_size=16)
    assert [(r["width"], r["lr"]) for r in records] == [(32, 1e-3), (32, 3e-2)]
    for r in records:
        assert r["parametrization"] == "mup" and r["base_width"] == 16 and r["steps"] == 3
        assert math.isfinite(r["final_loss"]) and abs(r["init_loss"] - math.log(64)) < 0.5
    assert records[1]["final_loss"] < records[0]["final_loss"]  # the larger lr learns faster in 3 steps
    with pytest.raises(ValueError, match="multiples of n_head"):
        lr_transfer((30,), (1e-3,), "sp", steps=1)
    with pytest.raises(ValueError, match="parametrization must be one of"):
        mup_config(32, "ntk", base_width=32)
