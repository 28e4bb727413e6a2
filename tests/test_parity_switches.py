"""The architecture switches of GPTConfig (pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm,
z_loss) against the independent PyTorch twin: weights, logits, loss and every gradient, per switch
and with all of them on; z-loss against a torch computation; exact parameter counts; the RoPE
convention; the sharding rules of the new parameters; validation of the new fields. Cached
decoding with the switches is pinned in test_sampling.py (the `switches` parametrizations).
float32 on CPU (x64 stays off).

Tolerances, from float32 arithmetic (unit roundoff u = 2**-24 = 6.0e-8), not from one machine:
the two frameworks evaluate the same formulas with different summation orders (XLA vs MKL/oneDNN
blocking, which also changes between AVX2 and AVX-512), so their results differ by rounding only.
A length-n float32 dot product has relative error <= n*u in the worst case and ~sqrt(n)*u for
rounding errors of random sign; the longest reductions here are n <= 192 (swiglu hidden width of
D=64; D and vocab are smaller), so ~8e-7 per matmul. A forward pass chains ~10 such reductions
per layer pair (qkv, scores, probs @ v, c_proj, norms, c_fc/c_gate, c_proj, head) and the
normalizations keep every stage O(1)-conditioned, so logits differ by ~sqrt(10) * 8e-7 = 2.6e-6
of their scale:
    LOGITS_REL = 1e-5   per tensor: max|dlogit| <= 1e-5 * max|logit|   [measured worst 8.6e-7,
                        2 layers with all switches, 6 seeds per case]
    GRAD_REL = 2e-5     per tensor: max|dg| <= 2e-5 * max|g| + GRAD_ABS; the backward pass chains
                        twice the reductions of the forward and sums over B*T = 48 tokens
                        [measured worst 2.1e-6]. GRAD_ABS = 1e-7 only matters for (near-)zero
                        gradients, e.g. the key part of c_attn's bias with learned positions.
    loss: not a free tolerance but implied by the logits. lse is 1-Lipschitz in the max-norm, so
          each token's cross-entropy lse - l_y moves by <= 2 max|dlogit|, and the z-term z*lse^2
          by <= 2 z max|lse| max|dlogit|; plus the rounding of the mean itself (N*u relative for
          N <= 48 tokens, bounded by 4e-6 * loss). [measured <= 0.75 of the 2 max|dlogit| term]
Bounds are ~4x the random-rounding estimate and ~10x the worst measured case.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from jax.sharding import AbstractMesh, PartitionSpec as P

from jaxgpt.train import sharding as sh
from jaxgpt.model.config import GPTConfig, param_count
from jaxgpt.model.gpt import GPT, apply_rope, cross_entropy_loss, rope_tables
from jaxgpt.train.optim import weight_decay_mask
from jaxgpt.model.pretrained import CONV1D_WEIGHTS, gpt2_state_to_params
from reference.torch_twin import flax_to_torch, torch_to_flax
from torch_helpers import (assert_trees_close, torch_grads, max_abs_diff, random_tokens, random_torch_model,
                           tiny_config, trees_exactly_equal)

assert not jax.config.jax_enable_x64

LOGITS_REL = 1e-5
GRAD_REL, GRAD_ABS = 2e-5, 1e-7
LOSS_ROUNDING_REL = 4e-6  # >= N*u for the mean over N <= 48 tokens (48 * 6e-8 = 2.9e-6)

ALL = dict(pos_emb="rope", norm="rmsnorm", mlp="swiglu", qk_norm=True)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    overrides: dict
    T: int
    B: int = 3


CASES = [
    Case("rope-L1-tied-bias-Tfull-dpa", dict(pos_emb="rope", n_layer=1), T=16),
    Case("rope-theta500-L1-untied-T11-explicit",
         dict(pos_emb="rope", rope_theta=500.0, n_layer=1, tie_embeddings=False, attn_impl="explicit"), T=11),
    Case("rmsnorm-L1-tied-bias", dict(norm="rmsnorm", n_layer=1), T=16),  # Linear biases, none in norms
    Case("swiglu-L1-tied-bias", dict(mlp="swiglu", n_layer=1), T=16),
    Case("qknorm-L1-tied-bias", dict(qk_norm=True, n_layer=1), T=16),
    Case("zloss-L1-gpt2", dict(n_layer=1, z_loss=0.05), T=16),
    Case("relu2-softcap-L1-untied", dict(mlp="relu2", logit_softcap=4.0, n_layer=1, tie_embeddings=False), T=16),
    Case("all-L2-untied-bias-T13-explicit-zloss",
         dict(ALL, n_layer=2, tie_embeddings=False, attn_impl="explicit", z_loss=1e-2), T=13),
    Case("all-L1-tied-nobias-Tfull-dpa-remat-H8",
         dict(ALL, n_layer=1, bias=False, n_embd=64, n_head=8, remat=True), T=16),
]


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def run(request):
    case = request.param
    cfg = tiny_config(**case.overrides)
    seed = 50 + CASES.index(case)
    tm = random_torch_model(cfg, seed=seed)
    torch_state = {k: v.detach().clone() for k, v in tm.state_dict().items()}
    params = torch_to_flax(torch_state, cfg)
    x_BT = random_tokens(cfg, (case.B, case.T), seed=100 + seed)
    y_BT = random_tokens(cfg, (case.B, case.T), seed=200 + seed, ignore_fraction=0.15)
    model = GPT(cfg)

    def loss_fn(p):
        logits = model.apply({"params": p}, x_BT)
        return cross_entropy_loss(logits, y_BT, z_loss=cfg.z_loss), logits

    (loss, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
    t_logits, t_loss = tm(torch.from_numpy(x_BT).long(), torch.from_numpy(y_BT).long())  # z_loss from cfg
    t_loss.backward()
    return dict(case=case, cfg=cfg, params=params, torch_state=torch_state, y=y_BT,
                logits=np.asarray(logits), loss=float(loss), grads=grads,
                t_logits=t_logits.detach().numpy(), t_loss=t_loss.item(),
                t_grads=torch_to_flax(torch_grads(tm), cfg))


def test_weight_transfer_round_trip_is_exact_and_builds_the_switched_tree(run):
    cfg, params, torch_state = run["cfg"], run["params"], run["torch_state"]
    back = flax_to_torch(params, cfg)
    assert set(back) == set(torch_state)
    for key, tensor in torch_state.items():
        assert torch.equal(back[key], tensor), key
    assert trees_exactly_equal(torch_to_flax(back, cfg), params)
    # The transferred tree is exactly the one GPT(cfg).init builds.
    shapes = jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, cfg.block_size), jnp.int32))
    assert (jax.tree_util.tree_map(np.shape, shapes["params"])
            == jax.tree_util.tree_map(np.shape, params))
    D, K, Fh = cfg.n_embd, cfg.head_dim, cfg.mlp_hidden_dim
    block = params["h_0"]
    assert ("wpe" in params) == (cfg.pos_emb == "learned")
    norm_leaf = {"scale"} | ({"bias"} if cfg.bias and cfg.norm == "layernorm" else set())
    assert set(block["ln_1"]) == set(block["ln_2"]) == set(params["ln_f"]) == norm_leaf
    assert set(block["attn"]) == {"c_attn", "c_proj"} | ({"q_norm", "k_norm"} if cfg.qk_norm else set())
    if cfg.qk_norm:
        assert block["attn"]["q_norm"]["scale"].shape == block["attn"]["k_norm"]["scale"].shape == (K,)
    assert set(block["mlp"]) == {"c_fc", "c_proj"} | ({"c_gate"} if cfg.mlp == "swiglu" else set())
    assert block["mlp"]["c_fc"]["kernel"].shape == (D, Fh) and block["mlp"]["c_proj"]["kernel"].shape == (Fh, D)
    if cfg.mlp == "swiglu":  # the Linear (F, D) weight arrives transposed, like c_fc's
        gate = torch_state["transformer.h.0.mlp.c_gate.weight"].numpy()
        np.testing.assert_array_equal(block["mlp"]["c_gate"]["kernel"], gate.T)


def test_num_params_is_exact(run):
    cfg, params = run["cfg"], run["params"]
    n_torch = sum(t.numel() for k, t in run["torch_state"].items() if k != "lm_head.weight" or not cfg.tie_embeddings)
    assert cfg.num_params(non_embedding=False) == param_count(params) == n_torch
    wpe = cfg.block_size * cfg.n_embd if cfg.pos_emb == "learned" else 0
    assert cfg.num_params() == param_count(params) - wpe


def test_logits_and_loss_match(run):
    cfg, logits, t_logits = run["cfg"], run["logits"], run["t_logits"]
    assert logits.shape == t_logits.shape == (run["case"].B, run["case"].T, cfg.vocab_size)
    scale = float(np.max(np.abs(t_logits)))
    assert scale > 1.0  # random weights give logits big enough to mean something
    d_logits = max_abs_diff(logits, t_logits)
    assert d_logits <= LOGITS_REL * scale, f"logits differ by {d_logits:.3g} (scale {scale:.3g})"
    counted = run["y"] != -1
    max_lse = float(np.max(np.abs(torch.logsumexp(torch.from_numpy(t_logits), -1).numpy()[counted])))
    bound = (2 + 2 * cfg.z_loss * max_lse) * d_logits + LOSS_ROUNDING_REL * max(1.0, abs(run["t_loss"]))
    assert abs(run["loss"] - run["t_loss"]) <= bound, (run["loss"], run["t_loss"], bound)
    if cfg.z_loss:  # the z-term is really in the loss: z * mean(lse^2), in float64 from our logits
        plain = float(cross_entropy_loss(jnp.asarray(logits), jnp.asarray(run["y"])))
        lse64 = np.log(np.sum(np.exp(logits.astype(np.float64)), -1))[counted]
        want = cfg.z_loss * np.mean(lse64 ** 2)
        assert want > 0.01 and abs((run["loss"] - plain) - want) <= 2 * LOSS_ROUNDING_REL * max(1.0, run["loss"])


def test_every_gradient_matches(run):
    cfg, grads, t_grads = run["cfg"], run["grads"], run["t_grads"]
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(run["params"])
    assert_trees_close(grads, t_grads, GRAD_REL, GRAD_ABS, "gradients")
    # Not vacuous: every parameter tensor gets a real gradient (q_norm/k_norm, c_gate, RMSNorm
    # scales included).
    for path, g in jax.tree_util.tree_flatten_with_path(t_grads)[0]:
        assert np.max(np.abs(g)) > 1e-4, jax.tree_util.keystr(path)
    if cfg.bias and cfg.pos_emb == "rope":
        # Unlike learned positions (q.(k + b) shifts all scores of a query equally), RoPE rotates
        # the key bias differently per position: its gradient is a real one.
        b_grad = np.asarray(t_grads["h_0"]["attn"]["c_attn"]["bias"])
        assert np.max(np.abs(b_grad[1])) > 1e-3 * np.max(np.abs(b_grad[0]))


# ------------------------------------------------------------------------------------ z-loss


def _torch_z_loss(logits, targets, z):
    """F.cross_entropy plus PaLM's z * mean(logsumexp^2) over counted targets, in torch."""
    flat, t = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    log_z = torch.logsumexp(flat[t != -1], dim=-1)
    return F.cross_entropy(flat, t, ignore_index=-1) + z * log_z.square().mean()


@pytest.mark.parametrize("z", [1e-4, 0.3])
def test_z_loss_value_and_gradient_match_torch(z):
    """Same float32 logits in, so only the loss arithmetic rounds differently: values within
    4e-6 relative (>= N*u for the mean over N = 28 tokens plus the logsumexp), gradients w.r.t.
    the logits (softmax - onehot + 2 z lse softmax) / N within 1e-5 of their max: each entry is a
    softmax probability computed from exp(l - lse), where lse is a sum over V = 53 terms
    (V*u = 3e-6 relative) [measured <= 2.5e-7 for both]."""
    rng = np.random.default_rng(0)
    logits = (3.0 * rng.standard_normal((4, 7, 53)) + 2.0).astype(np.float32)  # lse far from 0
    targets = rng.integers(0, 53, size=(4, 7)).astype(np.int32)
    targets[rng.random((4, 7)) < 0.2] = -1
    counted = targets != -1

    loss, grad = jax.value_and_grad(lambda l: cross_entropy_loss(l, jnp.asarray(targets), z_loss=z))(
        jnp.asarray(logits))
    t_logits = torch.from_numpy(logits).requires_grad_(True)
    t_loss = _torch_z_loss(t_logits, torch.from_numpy(targets).long(), z)
    t_loss.backward()
    assert abs(float(loss) - t_loss.item()) <= 4e-6 * abs(t_loss.item())
    t_grad = t_logits.grad.numpy()
    assert max_abs_diff(grad, t_grad) <= 1e-5 * np.max(np.abs(t_grad))

    # And against float64 numpy: CE + z * mean(lse^2), gradient in closed form.
    l64 = logits.astype(np.float64)
    lse = np.log(np.exp(l64 - l64.max(-1, keepdims=True)).sum(-1)) + l64.max(-1)
    ce = lse - np.take_along_axis(l64, np.where(counted, targets, 0)[..., None], -1)[..., 0]
    ref = np.sum(np.where(counted, ce + z * lse ** 2, 0.0)) / counted.sum()
    assert abs(float(loss) - ref) <= 4e-6 * abs(ref)
    probs = np.exp(l64 - lse[..., None])
    onehot = np.eye(53)[np.where(counted, targets, 0)]
    ref_grad = (probs - onehot + 2 * z * lse[..., None] * probs) * counted[..., None] / counted.sum()
    assert max_abs_diff(grad, ref_grad) <= 1e-5 * np.max(np.abs(ref_grad))
    z_term = z * np.mean(lse[counted] ** 2)
    assert z_term > 100 * 4e-6 * abs(ref)  # a missing or halved z-term would fail the checks above


def test_z_loss_zero_is_the_plain_loss_and_a_traced_coefficient_works():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.standard_normal((2, 5, 11)).astype(np.float32) * 4)
    targets = jnp.asarray(rng.integers(0, 11, size=(2, 5)).astype(np.int32))
    plain = cross_entropy_loss(logits, targets)
    assert np.array_equal(cross_entropy_loss(logits, targets, z_loss=0.0), plain)  # bit for bit
    assert np.array_equal(cross_entropy_loss(logits, targets, z_loss=0), plain)
    with_z = jax.jit(lambda l, y, z: cross_entropy_loss(l, y, z_loss=z))
    assert float(with_z(logits, targets, jnp.float32(0.0))) == pytest.approx(float(plain), rel=1e-6)
    assert float(with_z(logits, targets, jnp.float32(0.1))) == pytest.approx(
        float(cross_entropy_loss(logits, targets, z_loss=0.1)), rel=1e-6)


# ------------------------------------------------------------------------------------ RoPE


def test_rope_is_the_half_split_rotation_and_depends_on_relative_position_only():
    cfg = tiny_config(pos_emb="rope", n_embd=32, n_head=2)  # K = 16
    K = cfg.head_dim
    pos_BT = jnp.array([[0, 1, 5, 15]])
    x_BTHK = jnp.asarray(np.random.default_rng(0).standard_normal((1, 4, 2, K)).astype(np.float32))
    got = np.asarray(apply_rope(x_BTHK, rope_tables(cfg, pos_BT)))
    # numpy float64 reference of the half-split (GPT-NeoX / HF Llama) convention: pair i is
    # (x[i], x[i + K/2]) rotated by pos * theta**(-2i/K).
    x = np.asarray(x_BTHK, np.float64)
    angle = np.asarray(pos_BT, np.float64)[..., None, None] * 10000.0 ** (-np.arange(0, K, 2) / K)
    x1, x2 = x[..., :K // 2], x[..., K // 2:]
    ref = np.concatenate([x1 * np.cos(angle) - x2 * np.sin(angle), x2 * np.cos(angle) + x1 * np.sin(angle)], -1)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)  # |x| <= 4, angles <= 15 rad: a few ulp
    np.testing.assert_array_equal(got[:, 0], np.asarray(x_BTHK[:, 0]))  # position 0: identity
    # q.k after rotation depends only on the position difference.
    q, k = x_BTHK[:, :1], x_BTHK[:, 1:2]

    def score(pq, pk):
        rq = apply_rope(q, rope_tables(cfg, jnp.array([[pq]])))
        rk = apply_rope(k, rope_tables(cfg, jnp.array([[pk]])))
        return float(jnp.sum(rq * rk))

    assert score(7, 3) == pytest.approx(score(4, 0), abs=1e-4)
    assert abs(score(7, 3) - score(7, 0)) > 1e-2


def test_twin_generate_cached_equals_naive_with_all_switches():
    """The twin's KV cache with RoPE (keys cached rotated) gives nanoGPT's tokens, also past
    block_size where the window restarts positions at 0."""
    cfg = tiny_config(n_layer=2, **ALL)
    tm = random_torch_model(cfg, seed=21)
    with torch.no_grad():  # smaller embeddings: else the tied head mostly echoes the last token
        tm.transformer.wte.weight.mul_(0.2)
    prompt = torch.from_numpy(random_tokens(cfg, (2, 5), seed=22)).long()
    new = cfg.block_size + 4
    naive = tm.generate_naive(prompt, new, greedy=True)
    assert torch.equal(tm.generate_cached(prompt, new, greedy=True), naive)
    assert len(set(naive[0, 5:].tolist())) > 3


# ------------------------------------------------------------------------------ config, counts


@pytest.mark.parametrize("overrides, message", [
    (dict(pos_emb="alibi"), r"pos_emb must be one of \('learned', 'rope'\), got 'alibi'"),
    (dict(norm="batchnorm"), r"norm must be one of \('layernorm', 'rmsnorm'\), got 'batchnorm'"),
    (dict(mlp="relu"), r"mlp must be one of \('gelu', 'swiglu', 'relu2'\), got 'relu'"),
    (dict(qk_norm=1), r"qk_norm must be True or False, got 1"),
    (dict(z_loss=-1e-4), r"z_loss must be a finite number >= 0, got -0.0001"),
    (dict(z_loss=float("nan")), r"z_loss must be a finite number >= 0, got nan"),
    (dict(z_loss=True), r"z_loss must be a finite number >= 0, got True"),
    (dict(rope_theta=0.0), r"rope_theta must be a finite number > 1, got 0.0"),
    (dict(rope_theta="10000"), r"rope_theta must be a finite number > 1, got '10000'"),
    (dict(pos_emb="rope", n_embd=36, n_head=4), r"pos_emb='rope' needs an even head_dim, .* = 9"),
])
def test_bad_switch_values_raise_value_error_naming_field_and_value(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**overrides)


def test_defaults_are_gpt2():
    cfg = GPTConfig()
    assert (cfg.pos_emb, cfg.norm, cfg.mlp, cfg.qk_norm, cfg.z_loss, cfg.rope_theta) == (
        "learned", "layernorm", "gelu", False, 0.0, 10000.0)
    assert cfg.mlp_hidden_dim == 4 * cfg.n_embd
    assert GPTConfig.from_dict({k: v for k, v in cfg.to_dict().items()
                                if k not in ("pos_emb", "norm", "mlp", "qk_norm", "z_loss", "rope_theta")}) == cfg
    # GPT-2 small: 124M parameters with wpe (85M without embeddings), as nanoGPT reports.
    gpt2 = GPTConfig(vocab_size=50257)
    assert gpt2.num_params(non_embedding=False) == 124_439_808


def test_num_params_equals_the_param_tree_for_every_switch_combination():
    for i, (pos, norm, mlp, qk) in enumerate(
            (p, n, m, q) for p in ("learned", "rope") for n in ("layernorm", "rmsnorm")
            for m in ("gelu", "swiglu") for q in (False, True)):
        cfg = tiny_config(pos_emb=pos, norm=norm, mlp=mlp, qk_norm=qk, n_layer=2,
                          bias=i % 2 == 0, tie_embeddings=i % 3 == 0)
        shapes = jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
        assert cfg.num_params(non_embedding=False) == param_count(shapes), cfg
        assert cfg.num_params() == param_count(shapes) - (cfg.block_size * cfg.n_embd if pos == "learned" else 0)


def test_swiglu_width_rule_and_flops_per_token():
    # 8D/3 rounded up to a multiple of 64: GPT-2 small's D=768 gives exactly 2048 (3 * D * 2048 =
    # 8 D^2, the GELU MLP's weights); otherwise at most 64 * 3 * D more per layer.
    for D, want in ((32, 128), (64, 192), (768, 2048), (1024, 2752), (1600, 4288)):
        cfg = GPTConfig(n_embd=D, n_head=16 if D % 16 == 0 else 4, mlp="swiglu")
        assert cfg.mlp_hidden_dim == want and want % 64 == 0 and want >= 8 * D / 3 > want - 64
    gelu, swiglu = GPTConfig(), GPTConfig(mlp="swiglu")
    # Same weights at D=768; the biases differ: two F-wide (c_fc, c_gate) instead of one 4D-wide.
    assert swiglu.num_params() == gelu.num_params() + gelu.n_layer * (2 * 2048 - 4 * 768)
    assert swiglu.flops_per_token(1024) - gelu.flops_per_token(1024) == 6 * (swiglu.num_params() - gelu.num_params())
    # RoPE has no wpe (never in the count); RMSNorm drops the norm biases; qk-norm adds 2K per layer.
    base = GPTConfig(vocab_size=50257)
    assert GPTConfig(vocab_size=50257, pos_emb="rope").num_params() == base.num_params()
    assert base.num_params() - GPTConfig(vocab_size=50257, norm="rmsnorm").num_params() == (2 * 12 + 1) * 768
    assert GPTConfig(vocab_size=50257, qk_norm=True).num_params() - base.num_params() == 12 * 2 * 64
    for cfg in (base, GPTConfig(vocab_size=50257, **ALL)):  # the attention term does not change
        assert cfg.flops_per_token(512) == 6 * cfg.num_params() + 12 * cfg.n_layer * cfg.n_embd * 512


def test_new_leaves_follow_the_weight_decay_rule():
    cfg = tiny_config(n_layer=1, **ALL)
    mask = weight_decay_mask(jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    assert mask["h_0"]["mlp"]["c_gate"]["kernel"] is True          # a matrix, as torch's p.dim() >= 2
    assert mask["h_0"]["attn"]["q_norm"]["scale"] is False          # (K,) scales, like LayerNorm's
    assert mask["ln_f"]["scale"] is False


def test_gpt2_state_with_switches_maps_the_new_keys():
    """The shared key mapping (also used by load_pretrained) names the new tensors GPT-2 style."""
    cfg = tiny_config(n_layer=1, **ALL)
    state = {k: v.numpy().T if k.endswith(CONV1D_WEIGHTS) else v.numpy()  # Linear -> Conv1D layout
             for k, v in random_torch_model(cfg).state_dict().items()}
    assert "transformer.wpe.weight" not in state and "transformer.h.0.ln_1.bias" not in state
    assert state["transformer.h.0.attn.q_norm.weight"].shape == (cfg.head_dim,)
    params = gpt2_state_to_params(state, cfg)
    assert "wpe" not in params and set(params["h_0"]["attn"]) == {"c_attn", "c_proj", "q_norm", "k_norm"}
    with pytest.raises(ValueError, match=r"mlp='swiglu', qk_norm=True\): missing keys "
                                         r"\['h\.0\.mlp\.c_gate\.bias', 'h\.0\.mlp\.c_gate\.weight'\]"):
        gpt2_state_to_params({k: v for k, v in state.items() if "c_gate" not in k}, cfg)


# ------------------------------------------------------------------------------------ sharding


def test_param_specs_shard_every_matrix_of_the_switched_model():
    cfg = GPTConfig(vocab_size=128, block_size=16, n_layer=1, n_head=4, n_embd=64, tie_embeddings=False, **ALL)
    shapes = jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    specs = sh.param_specs(shapes)
    flat = {sh._path_str(path): spec for path, spec in
            jax.tree_util.tree_flatten_with_path(specs, is_leaf=lambda x: isinstance(x, P))[0]}
    assert flat == {
        "wte/embedding": P("tp", "fsdp"),
        "h_0/ln_1/scale": P(), "h_0/ln_2/scale": P(), "ln_f/scale": P(),   # RMSNorm: scale only
        "h_0/attn/c_attn/kernel": P("fsdp", None, "tp", None), "h_0/attn/c_attn/bias": P(None, "tp", None),
        "h_0/attn/q_norm/scale": P(), "h_0/attn/k_norm/scale": P(),       # (K,), shared by heads
        "h_0/attn/c_proj/kernel": P("tp", None, "fsdp"), "h_0/attn/c_proj/bias": P(),
        "h_0/mlp/c_fc/kernel": P("fsdp", "tp"), "h_0/mlp/c_fc/bias": P("tp"),
        "h_0/mlp/c_gate/kernel": P("fsdp", "tp"), "h_0/mlp/c_gate/bias": P("tp"),  # column-parallel like c_fc
        "h_0/mlp/c_proj/kernel": P("tp", "fsdp"), "h_0/mlp/c_proj/bias": P(),
        "lm_head/kernel": P("fsdp", "tp"), "lm_head/bias": P("tp"),
    }
    # Every weight matrix (kernels, the token table) is split over both fsdp and tp, and on a
    # 2 x 2 mesh nothing falls back to replication (swiglu's F = 192 and the heads divide evenly).
    matrices = [name for name in flat if name.endswith(("kernel", "embedding"))]
    assert len(matrices) == 7  # wte, c_attn, c_proj, c_fc, c_gate, c_proj, lm_head
    for name in matrices:
        assert "fsdp" in flat[name] and "tp" in flat[name], (name, flat[name])
    mesh = AbstractMesh((1, 2, 2), sh.MESH_AXES)
    assert sh.unshardable_dims(shapes, mesh) == []
