"""Parity of the Flax GPT with the independent PyTorch twin: weights, logits, loss, every gradient,
and parameters after 1 and 10 AdamW steps, over configs that cover tied/untied heads, bias on/off,
both GELUs, 1 and 3 layers, T < block_size and T == block_size, both attention paths, remat and
gradient accumulation. float32 on CPU (x64 stays off).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from jaxgpt.model.gpt import GPT, cross_entropy_loss
from jaxgpt.train.optim import make_optimizer
from reference.torch_twin import configure_optimizer, flax_to_torch, torch_to_flax
from jaxgpt.train.tasks import lm_loss
from jaxgpt.train.step import create_train_state, make_train_step
from torch_helpers import (assert_trees_close, torch_grads, max_abs_diff, random_tokens, random_torch_model,
                           tiny_config, trees_exactly_equal)

assert not jax.config.jax_enable_x64

# Tolerances (float32 end to end; measured worst cases in brackets, 6 configs):
LOGITS_TOL = 1e-5   # |dlogit| <= 1e-5 * max(1, |logit|)   [5e-6 abs on logits up to ~15: XLA vs MKL sums]
LOSS_TOL = 1e-6     # |dloss| <= 1e-6 * max(1, loss): float32's ulp at 8 is 9.5e-7, so an absolute
                    # 1e-6 would be one ulp for these losses (~9)  [measured 1.9e-6 on 8.99 = 2 ulp]
GRAD_REL, GRAD_ABS = 1e-5, 1e-7  # per tensor: diff <= 1e-5 * max|g_torch| + 1e-7   [rel 1.2e-6]
PARAM_REL, PARAM_ABS = 1e-5, 1e-7  # per tensor after AdamW steps, same form

LR, WEIGHT_DECAY, BETAS, ADAM_EPS = 1e-3, 0.1, (0.9, 0.95), 1e-8  # nanoGPT's AdamW settings
# Which parameters the AdamW trajectories can be compared on, and why (test_params_after_adamw_steps_match):
# Adam's step-1 update is lr * g / (|g| + eps). Its sensitivity to the gradient is
# lr * eps / (|g| + eps)^2, so a gradient known to within its rounding floor F (the bound that
# test_every_gradient_matches asserts: F = GRAD_REL * max|g| + GRAD_ABS per tensor) moves the
# update by at most lr * eps * F / g^2. Requiring that to stay below a tenth of the parameter
# bound b gives |g| >= sqrt(10 * lr * eps * F / b): about 1e-5 here. Below it an element's gradient
# is rounding noise as far as Adam is concerned (the key third of each c_attn bias, whose exact
# gradient is 0, lives there, and so does whichever element a CPU's summation order leaves near
# eps: on an AMD EPYC, |g| = 1.35e-7 vs 1.03e-7 gave updates of 0.931 and 0.912 lr). Those
# elements are compared only against what any Adam step can do: each framework moves an element by
# at most lr * R_t per step, R_t = max |m_hat / (sqrt(v_hat) + eps)| (adam_ratio_bound), plus the
# identical decoupled decay. The rest must agree to the parameter bound, which is not widened.
N_STEPS = 10


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    overrides: dict
    T: int
    accum: int = 1  # micro-batches per optimizer step
    B: int = 3
    # Run the trajectory through jaxgpt.train.step.make_train_step (a second compile of the whole
    # backward pass, ~2-5 s here), else through the already-compiled grad function + optax update.
    shared_step: bool = False


CASES = [  # n_layer 3 only once: its compile costs ~2x that of n_layer 1 on this CPU
    Case("L1-tied-bias-tanh-Tfull-dpa-accum2", dict(n_layer=1), T=16, accum=2, shared_step=True),
    Case("L3-untied-bias-exact-T11-explicit",
         dict(n_layer=3, tie_embeddings=False, gelu="exact", attn_impl="explicit"), T=11),
    Case("L1-tied-nobias-exact-Tfull-dpa", dict(n_layer=1, bias=False, gelu="exact"), T=16),
    Case("L1-untied-nobias-tanh-T9-explicit-H3",
         dict(n_layer=1, tie_embeddings=False, bias=False, attn_impl="explicit", n_embd=48, n_head=3), T=9),
    Case("L1-untied-bias-tanh-T7-dpa-remat-H8",
         dict(n_layer=1, tie_embeddings=False, remat=True, n_embd=64, n_head=8, vocab_size=97), T=7),
]


@pytest.fixture(scope="module", params=CASES, ids=[c.name for c in CASES])
def run(request):
    return _run_case(request.param, ADAM_EPS)


def _run_case(case: Case, eps: float) -> dict:
    """Everything for one case: weights, both forwards/backwards, both 10-step trajectories."""
    cfg = tiny_config(**case.overrides)
    seed = CASES.index(case)
    tm = random_torch_model(cfg, seed=seed)
    torch_state = {k: v.detach().clone() for k, v in tm.state_dict().items()}
    params = torch_to_flax(torch_state, cfg)
    out = dict(case=case, cfg=cfg, params=params, torch_state=torch_state)

    # Forward + backward on one batch.
    x_BT = random_tokens(cfg, (case.B, case.T), seed=100 + seed)
    y_BT = random_tokens(cfg, (case.B, case.T), seed=200 + seed, ignore_fraction=0.15)
    model = GPT(cfg)

    def loss_fn(p, x, y):
        logits = model.apply({"params": p}, x)
        return cross_entropy_loss(logits, y), logits

    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, logits), grads = grad_fn(params, x_BT, y_BT)
    t_logits, t_loss = tm(torch.from_numpy(x_BT).long(), torch.from_numpy(y_BT).long())
    t_loss.backward()
    out.update(logits=np.asarray(logits), loss=float(loss), grads=grads,
               t_logits=t_logits.detach().numpy(), t_loss=t_loss.item(),
               t_grads=torch_to_flax(torch_grads(tm), cfg))

    # AdamW trajectory vs the torch loop, a different batch every step.
    x_NABT = random_tokens(cfg, (N_STEPS, case.accum, case.B, case.T), seed=300 + seed)
    y_NABT = random_tokens(cfg, (N_STEPS, case.accum, case.B, case.T), seed=400 + seed, ignore_fraction=0.1)
    optimizer = make_optimizer(LR, weight_decay=WEIGHT_DECAY, beta1=BETAS[0], beta2=BETAS[1],
                               eps=eps, grad_clip=0)
    if case.shared_step:
        shared_step = jax.jit(make_train_step(lm_loss(model), optimizer))

        def jax_step(state, x_ABT, y_ABT):
            state, metrics = shared_step(state, (x_ABT, y_ABT), jax.random.key(0))
            return state, metrics["loss"]

        def jax_grads(params, x_ABT, y_ABT):  # the step's gradient: the mean over micro-batches
            micro = [grad_fn(params, x_ABT[a], y_ABT[a])[1] for a in range(case.accum)]
            return jax.tree_util.tree_map(lambda *g: sum(g) / case.accum, *micro)
    else:
        assert case.accum == 1
        update = jax.jit(optimizer.update)

        def jax_step(state, x_ABT, y_ABT):
            (step_loss, _), step_grads = grad_fn(state.params, x_ABT[0], y_ABT[0])
            updates, opt_state = update(step_grads, state.opt_state, state.params)
            params = optax.apply_updates(state.params, updates)
            return state.replace(step=state.step + 1, params=params, opt_state=opt_state), step_loss

        def jax_grads(params, x_ABT, y_ABT):
            return grad_fn(params, x_ABT[0], y_ABT[0])[1]

    state = create_train_state(params, optimizer)
    tm.load_state_dict(flax_to_torch(params, cfg))
    t_opt = configure_optimizer(tm, LR, WEIGHT_DECAY, BETAS, eps)
    snapshots, losses, t_losses = {}, [], []
    conditioned = None  # per element: was Adam clear of its eps regime at every step?
    second_moments = None  # v_t of each framework, rebuilt from the gradients (see _clear_of_eps)
    for step in range(N_STEPS):
        step_grads = jax_grads(state.params, x_NABT[step], y_NABT[step])
        state, step_loss = jax_step(state, x_NABT[step], y_NABT[step])
        t_opt.zero_grad()
        t_loss_sum = 0.0
        for a in range(case.accum):  # torch-side accumulation: mean of micro-batch losses
            _, micro_loss = tm(torch.from_numpy(x_NABT[step, a]).long(),
                               torch.from_numpy(y_NABT[step, a]).long())
            (micro_loss / case.accum).backward()
            t_loss_sum += micro_loss.item()
        second_moments = _second_moments(second_moments, (step_grads, torch_to_flax(torch_grads(tm), cfg)))
        clear = _clear_of_eps(*second_moments, step + 1, jax.device_get(state.params))
        conditioned = clear if conditioned is None else jax.tree_util.tree_map(np.logical_and, conditioned, clear)
        t_opt.step()
        losses.append(float(step_loss))
        t_losses.append(t_loss_sum / case.accum)
        if step + 1 in (1, N_STEPS):
            snapshots[step + 1] = (jax.device_get(state.params), torch_to_flax(tm.state_dict(), cfg), conditioned,
                                 second_moments[1])
    out.update(snapshots=snapshots, losses=np.array(losses), t_losses=np.array(t_losses))
    return out


def test_weight_transfer_round_trip_is_exact(run):
    cfg, params, torch_state = run["cfg"], run["params"], run["torch_state"]
    back = flax_to_torch(params, cfg)
    assert set(back) == set(torch_state)
    for key, tensor in torch_state.items():
        assert back[key].dtype == torch.float32
        assert torch.equal(back[key], tensor), key
    assert trees_exactly_equal(torch_to_flax(back, cfg), params)
    # The transfer reshapes into our layout: the fused qkv kernel keeps heads as an axis.
    c_attn = params["h_0"]["attn"]["c_attn"]["kernel"]
    assert c_attn.shape == (cfg.n_embd, 3, cfg.n_head, cfg.head_dim)
    q_weight = torch_state["transformer.h.0.attn.c_attn.weight"][: cfg.n_embd]  # Linear (3D, D)
    np.testing.assert_array_equal(c_attn[:, 0].reshape(cfg.n_embd, cfg.n_embd), q_weight.numpy().T)


def test_logits_and_loss_match(run):
    logits, t_logits = run["logits"], run["t_logits"]
    assert logits.shape == t_logits.shape == (run["case"].B, run["case"].T, run["cfg"].vocab_size)
    assert np.max(np.abs(t_logits)) > 1.0  # random weights give logits big enough to mean something
    excess = np.abs(logits - t_logits) - LOGITS_TOL * np.maximum(1.0, np.abs(t_logits))
    assert np.max(excess) <= 0, f"logits differ by up to {max_abs_diff(logits, t_logits):.3g}"
    assert abs(run["loss"] - run["t_loss"]) <= LOSS_TOL * max(1.0, abs(run["t_loss"]))


def test_every_gradient_matches(run):
    grads, t_grads = run["grads"], run["t_grads"]
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(run["params"])
    assert_trees_close(grads, t_grads, GRAD_REL, GRAD_ABS, "gradients")
    # Not vacuous: every parameter gets a real gradient, except the key part of the qkv bias
    # (exactly zero in exact arithmetic: q.(k + b) shifts all of a query's scores equally).
    for path, g in jax.tree_util.tree_flatten_with_path(t_grads)[0]:
        assert np.max(np.abs(g)) > 1e-4, jax.tree_util.keystr(path)
    if run["cfg"].bias:
        for i in range(run["cfg"].n_layer):
            for tree in (grads, t_grads):
                b_grad = np.asarray(tree[f"h_{i}"]["attn"]["c_attn"]["bias"])
                assert np.max(np.abs(b_grad[1])) <= 1e-5 * np.max(np.abs(b_grad[0]))


def _param_bound(p) -> float:
    return PARAM_REL * float(np.max(np.abs(p))) + PARAM_ABS


def _second_moments(previous, grads_pair):
    """Adam's v_t = b2 v_(t-1) + (1 - b2) g_t^2 for (ours, theirs), in float64."""
    b2 = BETAS[1]
    if previous is None:
        previous = tuple(jax.tree_util.tree_map(lambda g: np.zeros(np.shape(g)), g) for g in grads_pair)
    return tuple(jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * np.square(np.asarray(g, np.float64)), v, g)
                 for v, g in zip(previous, grads_pair))


def _clear_of_eps(v, t_v, t, params):
    """Per element: Adam's denominator sqrt(v_hat_t) at or above sqrt(10 lr eps F / b) in both
    frameworks (see ADAM_EPS). At t = 1, sqrt(v_hat) = |g|; later it is an average over the steps,
    so an element whose gradient merely dips at one step stays well-conditioned. An element with
    no gradient at all yet in both frameworks has m = v = 0 and an update of exactly 0."""
    correction = 1 - BETAS[1] ** t

    def clear(v_, t_v_, p):
        floor = GRAD_REL * float(np.sqrt(np.max(t_v_) / correction)) + GRAD_ABS
        g_min = np.sqrt(10 * LR * ADAM_EPS * floor / _param_bound(p))
        untouched = (v_ == 0) & (t_v_ == 0)  # no gradient yet in either: both updates are exactly 0
        return untouched | (np.sqrt(np.minimum(v_, t_v_) / correction) >= g_min)

    return jax.tree_util.tree_map(clear, v, t_v, params)


def adam_ratio_bound(t: int) -> float:
    """max |m_hat_t / sqrt(v_hat_t)| over all gradient sequences (Cauchy-Schwarz on the moment
    sums): (1 - b1) / sqrt(1 - b2) * sqrt(sum_k<t (b1^2 / b2)^k) * sqrt(1 - b2^t) / (1 - b1^t).
    It is exactly 1 at t = 1 (the update is lr * sign(g) there)."""
    b1, b2 = BETAS
    geometric = sum((b1 * b1 / b2) ** k for k in range(t))
    return (1 - b1) / np.sqrt(1 - b2) * np.sqrt(geometric) * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)


@pytest.mark.parametrize("steps", [1, N_STEPS])
def test_params_after_adamw_steps_match(run, steps):
    ours, theirs, conditioned, t_v = run["snapshots"][steps]
    flat_ours = dict(jax.tree_util.tree_flatten_with_path(ours)[0])
    flat_theirs = dict(jax.tree_util.tree_flatten_with_path(theirs)[0])
    flat_mask = dict(jax.tree_util.tree_flatten_with_path(conditioned)[0])
    assert flat_ours.keys() == flat_theirs.keys() == flat_mask.keys()
    # What any `steps` Adam steps can move an element by, in each framework (see ADAM_EPS).
    reach = 2 * LR * sum(adam_ratio_bound(t) for t in range(1, steps + 1))
    failures, compared = [], 0
    # Not vacuous: the tight bound covers nearly every element that had a gradient at all (rows of
    # an untied wte whose tokens no batch used have none, in both frameworks).
    flat_tv = dict(jax.tree_util.tree_flatten_with_path(t_v)[0])
    touched = sum(int(np.count_nonzero(v)) for v in flat_tv.values())
    for path, theirs_p in flat_theirs.items():
        ours_p, mask = np.asarray(flat_ours[path], np.float64), flat_mask[path]
        diff = np.abs(ours_p - np.asarray(theirs_p, np.float64))
        bound = _param_bound(theirs_p)
        compared += int((mask & (flat_tv[path] > 0)).sum())
        if mask.any() and not diff[mask].max() <= bound:
            failures.append(f"{jax.tree_util.keystr(path)}: diff {diff[mask].max():.3g} > bound {bound:.3g}")
        if (~mask).any() and not diff[~mask].max() <= reach + bound:
            failures.append(f"{jax.tree_util.keystr(path)} (near eps): diff {diff[~mask].max():.3g} > {reach:.3g}")
    assert not failures, f"params after {steps} AdamW steps: " + "; ".join(failures)
    assert compared >= 0.95 * touched, f"only {compared} of {touched} elements clear of eps"
    if run["cfg"].bias:  # the key bias's exact-zero gradient is rounding noise: never compared tightly
        for i in range(run["cfg"].n_layer):
            assert not conditioned[f"h_{i}"]["attn"]["c_attn"]["bias"][1].any()
    moved = max_abs_diff(ours["wte"]["embedding"], run["params"]["wte"]["embedding"])
    assert moved > 0.5 * LR * steps ** 0.5  # the steps really happened
    np.testing.assert_allclose(run["losses"][:steps], run["t_losses"][:steps], rtol=5 * LOSS_TOL, atol=LOSS_TOL)


def test_adamw_arithmetic_matches_torch_with_identical_gradients():
    """optax AdamW + our decay mask == torch AdamW + nanoGPT's groups, at nanoGPT's eps=1e-8.

    Same gradients in, so only rounding differs: per tensor diff <= 1e-6 * max|p| + 1e-9, i.e. a
    few float32 ulps of the parameters, ~1e-3 of one lr step; a wrong decay group would be off by
    lr * wd * |p| = 1e-4 * |p| per step [measured worst 0.3 of the bound]. Gradients span 1e-10..1
    so the eps regime is covered.
    """
    cfg = tiny_config(n_layer=1, tie_embeddings=False)
    tm = random_torch_model(cfg, seed=7)
    params = torch_to_flax(tm.state_dict(), cfg)
    eps, steps = 1e-8, N_STEPS
    optimizer = make_optimizer(LR, weight_decay=WEIGHT_DECAY, beta1=BETAS[0], beta2=BETAS[1],
                               eps=eps, grad_clip=0)
    t_opt = configure_optimizer(tm, LR, WEIGHT_DECAY, BETAS, eps)
    assert [len(g["params"]) for g in t_opt.param_groups] == [
        sum(1 for p in tm.parameters() if p.dim() >= 2), sum(1 for p in tm.parameters() if p.dim() < 2)]
    opt_state = optimizer.init(params)
    update = jax.jit(optimizer.update)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        grads = jax.tree_util.tree_map(
            lambda p: (rng.standard_normal(p.shape) * 10.0 ** rng.uniform(-10, 0, p.shape)).astype(np.float32),
            params)
        updates, opt_state = update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        t_grads = flax_to_torch(grads, cfg)
        for name, p in tm.named_parameters():
            p.grad = t_grads[name].clone()
        t_opt.step()
    assert_trees_close(params, torch_to_flax(tm.state_dict(), cfg), 1e-6, 1e-9,
                       "params after identical-gradient AdamW steps")


def test_bfloat16_logits_close_to_float32():
    """compute_dtype=bfloat16 keeps params float32 and casts activations; logits move by the
    bf16 rounding of every matmul. Bound 0.05 * max|logit| [measured ~0.01 with 2 layers]."""
    cfg = tiny_config(n_layer=2, tie_embeddings=False)
    params = torch_to_flax(random_torch_model(cfg, seed=11).state_dict(), cfg)
    x_BT = random_tokens(cfg, (2, cfg.block_size), seed=12)
    f32 = np.asarray(jax.jit(GPT(cfg).apply)({"params": params}, x_BT))
    bf16 = jax.jit(GPT(cfg.replace(compute_dtype="bfloat16")).apply)({"params": params}, x_BT)
    assert bf16.dtype == jnp.float32
    diff, scale = max_abs_diff(bf16, f32), float(np.max(np.abs(f32)))
    assert 0 < diff <= 0.05 * scale, (diff, scale)
    # Still the same model: the argmax token agrees almost everywhere.
    assert np.mean(np.argmax(np.asarray(bf16), -1) == np.argmax(f32, -1)) >= 0.9


def test_torch_generate_cached_equals_naive():
    """The twin's KV-cached generate gives nanoGPT's tokens, also past block_size (sliding window)."""
    cfg = tiny_config(n_layer=2)
    tm = random_torch_model(cfg, seed=21)
    prompt = torch.from_numpy(random_tokens(cfg, (2, 5), seed=22)).long()
    new = cfg.block_size + 4  # the context outgrows block_size
    naive = tm.generate_naive(prompt, new, greedy=True)
    cached = tm.generate_cached(prompt, new, greedy=True)
    assert naive.shape == (2, 5 + new)
    assert torch.equal(naive[:, :5], prompt)
    assert torch.equal(cached, naive)
    sampled = [fn(prompt, new, temperature=0.8, top_k=10, generator=torch.Generator().manual_seed(5))
               for fn in (tm.generate_naive, tm.generate_cached)]
    assert torch.equal(sampled[0], sampled[1])
    assert not torch.equal(sampled[0], naive)
    assert tm.training  # generation leaves the module's mode alone
    with pytest.raises(ValueError, match="temperature"):
        tm.generate_cached(prompt, 3, temperature=0.0)


def test_transfer_rejects_mismatched_weights():
    cfg = tiny_config(n_layer=1)
    state = {k: v.clone() for k, v in random_torch_model(cfg).state_dict().items()}
    untied_head = dict(state, **{"lm_head.weight": state["lm_head.weight"] + 1})
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        torch_to_flax(untied_head, cfg)
    with pytest.raises(ValueError, match=r"wte\.weight has shape \(71, 32\), expected \(71, 48\)"):
        torch_to_flax(state, cfg.replace(n_embd=48))
    with pytest.raises(ValueError, match="missing keys"):
        torch_to_flax({k: v for k, v in state.items() if "ln_f" not in k}, cfg)
