"""A GPT-2 style decoder-only transformer in flax.linen.

Shapes are spelled in names: B batch, T query length, S key length (cache capacity),
D width, H heads, K head width, V vocab, N = B*H (the KV cache's leading axis), M = B*T
(tokens flattened). Parameters are a plain pytree; everything here is a pure function of
(params, inputs, rngs).

Param tree (names follow nanoGPT/GPT-2 so weights map one to one):
    wte/embedding (V, D)            wpe/embedding (block_size, D)     (pos_emb="learned" only)
    h_i/ln_1, h_i/ln_2              LayerNorm scale (D,), bias (D,)
    h_i/attn/c_attn kernel (D, 3, H, K), bias (3, H, K)   fused q, k, v
    h_i/attn/q_norm, k_norm  scale (K,)                    (qk_norm=True only)
    h_i/attn/c_proj kernel (H, K, D),    bias (D,)
    h_i/mlp/c_fc    kernel (D, F),       bias (F,)         F = config.mlp_hidden_dim (4D for gelu)
    h_i/mlp/c_gate  kernel (D, F),       bias (F,)         (mlp="swiglu" only; "relu2" has GELU's tree)
    h_i/mlp/c_proj  kernel (F, D),       bias (D,)
    ln_f                            lm_head kernel (D, V), bias (V,)  (untied only)
Biases exist iff config.bias. With norm="rmsnorm" every ln_* holds a scale (D,) only.
Keeping heads as their own axis lets tensor parallelism shard whole heads.
zero_init_proj starts both c_proj kernels at zero; logit_softcap caps the logits in GPT.readout.

muP (config.mup; Yang et al. 2022, "Tensor Programs V", Table 3 for Adam, with microsoft/mup's
MuReadout / MuSharedReadout / MuAdam conventions). m = config.mup_width_mult = n_embd / mup_base_width;
at m = 1 every choice below is GPT-2's (standard parametrization, SP), so a base model tuned in SP
is the muP model at its base width. The param tree is the same as in SP.
  - Attention logits: q.k * sqrt(K_base) / K instead of q.k / sqrt(K) (config.mup_attn_scale;
    K_base = mup_base_width / n_head). After training q and k are correlated, so q.k grows like K:
    1/K keeps the logits O(1) as the head width grows. The sqrt(K_base) constant (rather than
    microsoft/mup's attn_mult or a fixed 8/K) makes it exactly 1/sqrt(K) at the base width.
  - Readout: the final hidden state is multiplied by 1/m before the output head (MuReadout's
    `x * output_mult / width_mult`, output_mult = 1; an untied head's bias is not scaled, as there).
    With tied embeddings this applies only to the head use of wte (MuSharedReadout): the embedding
    itself keeps its input-layer parametrization. The untied head keeps GPT-2's N(0, 0.02) init,
    not zero init (microsoft/mup's readout_zero_init is an allowed special case, left off so tied
    and untied heads start alike); with the 1/m multiplier its effective variance is
    0.02^2 / m^2, i.e. ~ 1/fan_in^2 as muP wants for the output layer.
  - Init: hidden matrices (c_attn, attn c_proj, c_fc, c_gate, mlp c_proj: both dimensions grow
    with width) get std sigma / sqrt(fan_in / fan_in_base), i.e. variance ~ 1/fan_in, equal to
    GPT-2's sigma at the base width (sigma = 0.02; fan_in multiplier m, or F / F_base for the MLP's
    c_proj). Embeddings (wte, wpe), biases and norm scales keep their width-independent init. The
    residual projections' GPT-2 factor 1/sqrt(2 n_layer) is a depth correction, independent of
    width: it multiplies the muP std unchanged (std = 0.02 / sqrt(2 n_layer) / sqrt(fan_in mult)),
    so it is the same relative correction at every width and transfers with the base model.
  - Learning rates: not here but in the optimizer (jaxgpt.train.optim.mup_lr_scales: hidden matrices
    lr / m, everything vector-like lr).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxgpt.model import cpu_backward as fused
from jaxgpt.model.config import GPTConfig, check_attn_impl

__all__ = ["GPT", "GPTConfig", "KVCache", "init_kv_cache", "cross_entropy_loss", "causal_mask"]

# One (keys, values) pair per layer, each (B*H, S, K): batch and heads merged into one leading
# axis, slots before head width. Why rank 3: XLA folds the attention dot's batch axes (B, H) into
# one; with a (B, H, S, K) cache that reshape sat between the in-place cache update and the dot,
# and XLA:CPU then duplicated the update into the dot's operand and copied every cache array every
# token (batch-1 decoding of a 6-layer model ran 2.1x slower, measured). Kept as separate arrays
# (not one stacked array) so that a decode loop updates each in place.
KVCache = Tuple[Tuple[jax.Array, jax.Array], ...]

_STD = 0.02


def _normal(std: float):
    return nn.initializers.normal(stddev=std)


# cos and sin of the rotary angles, each (B, T, 1, K/2) float32 (the 1 broadcasts over heads).
RopeTables = Tuple[jax.Array, jax.Array]


def rope_tables(config: GPTConfig, pos_BT: jax.Array) -> RopeTables:
    """Angles pos * rope_theta**(-2i/K) for i < K/2 at the given absolute position ids.

    Computed once per forward from the same pos_BT the learned table would read, so cached
    decoding, left padding and the sampler's window re-runs see exactly the positions a full
    forward over the same context would."""
    K = config.head_dim
    inv_freq_F = (1.0 / config.rope_theta ** (np.arange(0, K, 2, dtype=np.float64) / K)).astype(np.float32)
    angles_BTF = pos_BT.astype(jnp.float32)[:, :, None] * inv_freq_F
    return jnp.cos(angles_BTF)[:, :, None, :], jnp.sin(angles_BTF)[:, :, None, :]


def apply_rope(x_BTHK: jax.Array, tables: RopeTables) -> jax.Array:
    """Rotate each head's pairs (x[i], x[i + K/2]) by angle i (half-split, GPT-NeoX / HF Llama's
    rotate_half convention), in float32, back to x's dtype."""
    cos_BT1F, sin_BT1F = tables
    F = x_BTHK.shape[-1] // 2
    x1_BTHF = x_BTHK[..., :F].astype(jnp.float32)
    x2_BTHF = x_BTHK[..., F:].astype(jnp.float32)
    rotated = jnp.concatenate([x1_BTHF * cos_BT1F - x2_BTHF * sin_BT1F,
                               x2_BTHF * cos_BT1F + x1_BTHF * sin_BT1F], axis=-1)
    return rotated.astype(x_BTHK.dtype)


def causal_mask(query_pos_BT: jax.Array, key_valid_BS: jax.Array) -> jax.Array:
    """(B, 1, T, S) boolean: query at cache slot q may see slot s iff s <= q and s holds a real token."""
    slots_S = jnp.arange(key_valid_BS.shape[1])
    allowed_BTS = slots_S[None, None, :] <= query_pos_BT[:, :, None]
    return (allowed_BTS & key_valid_BS[:, None, :])[:, None, :, :]


def _masked_softmax(scores_BHTS: jax.Array, mask_B1TS: jax.Array) -> jax.Array:
    """float32 attention probabilities; masked-out slots get none."""
    return jax.nn.softmax(jnp.where(mask_B1TS, scores_BHTS, jnp.finfo(jnp.float32).min), axis=-1)


def _scale_scores(scores, K: int, scale: Optional[float]):
    """scores / sqrt(K) (GPT-2, scale None: the exact division of the original code) or scores * scale."""
    return scores / math.sqrt(K) if scale is None else scores * scale


def _explicit_attention(q_BTHK, k_BSHK, v_BSHK, mask_B1TS, dropout, deterministic: bool,
                        scale: Optional[float] = None, record=None):
    """softmax(q k^T / sqrt(K)) v with float32 scores (causal when mask_B1TS is None); with a
    scale (muP), softmax(q k^T * scale) v. record, if given, is called with the float32
    probabilities (B, H, T, S) before dropout (the module sows them; see jaxgpt.viz.figures)."""
    T, K = q_BTHK.shape[1], q_BTHK.shape[3]
    scores_BHTS = _scale_scores(
        jnp.einsum("bthk,bshk->bhts", q_BTHK, k_BSHK, preferred_element_type=jnp.float32), K, scale)
    if mask_B1TS is None:
        mask_B1TS = jnp.tril(jnp.ones((T, k_BSHK.shape[1]), dtype=bool))[None, None]
    probs_BHTS = _masked_softmax(scores_BHTS, mask_B1TS)
    if record is not None:
        record(probs_BHTS)
    if dropout is not None:
        probs_BHTS = dropout(probs_BHTS, deterministic=deterministic)
    return jnp.einsum("bhts,bshk->bthk", probs_BHTS.astype(v_BSHK.dtype), v_BSHK)


def _chunked_attention(q_NTK, k_cache_NSK, v_cache_NSK, filled, mask_B1TS, chunk: int, dtype,
                       scale: Optional[float] = None):
    """softmax(q k^T) v over cache slots [0, filled) only, `chunk` slots at a time (flash-decoding's
    online softmax: a running max m, normalizer l and weighted sum acc per query, rescaled as each
    chunk raises the max). A lax.while_loop runs ceil(filled / chunk) chunks, so a short context
    reads a short prefix of the cache instead of all S slots. The last chunk's start is clamped
    to S - chunk so that every read stays inside the cache; slots an earlier chunk already counted
    are masked out there. mask_B1TS (B, 1, T, S) hides the slots each query may not see, as in the
    full path; every query sees at least its own slot, so l > 0 at the end. float32 statistics."""
    N, T, K = q_NTK.shape
    B, S = mask_B1TS.shape[0], k_cache_NSK.shape[1]
    H = N // B
    neg = jnp.finfo(jnp.float32).min  # finite: exp(neg - neg) stays defined for an all-masked chunk

    def body(c, carry):
        m_NT1, l_NT1, acc_NTK = carry
        start = jnp.minimum(c * chunk, S - chunk)
        k_NCK = jax.lax.dynamic_slice_in_dim(k_cache_NSK, start, chunk, axis=1).astype(dtype)
        v_NCK = jax.lax.dynamic_slice_in_dim(v_cache_NSK, start, chunk, axis=1).astype(dtype)
        slots_C = start + jnp.arange(chunk)
        mask_B1TC = jax.lax.dynamic_slice_in_dim(mask_B1TS, start, chunk, axis=3) & (slots_C >= c * chunk)
        mask_NTC = jnp.broadcast_to(mask_B1TC, (B, H, T, chunk)).reshape(N, T, chunk)
        scores_NTC = _scale_scores(jnp.einsum("ntk,nck->ntc", q_NTK, k_NCK, preferred_element_type=jnp.float32),
                                   K, scale)
        scores_NTC = jnp.where(mask_NTC, scores_NTC, neg)
        m_new_NT1 = jnp.maximum(m_NT1, jnp.max(scores_NTC, axis=-1, keepdims=True))
        p_NTC = jnp.where(mask_NTC, jnp.exp(scores_NTC - m_new_NT1), 0.0)
        rescale_NT1 = jnp.exp(m_NT1 - m_new_NT1)
        l_NT1 = l_NT1 * rescale_NT1 + jnp.sum(p_NTC, axis=-1, keepdims=True)
        acc_NTK = acc_NTK * rescale_NT1 + jnp.einsum("ntc,nck->ntk", p_NTC.astype(dtype), v_NCK,
                                                     preferred_element_type=jnp.float32)
        return m_new_NT1, l_NT1, acc_NTK

    init = (jnp.full((N, T, 1), neg, jnp.float32), jnp.zeros((N, T, 1), jnp.float32),
            jnp.zeros((N, T, K), jnp.float32))
    n_chunks = (filled + chunk - 1) // chunk
    _, l_NT1, acc_NTK = jax.lax.fori_loop(0, n_chunks, body, init)
    return (acc_NTK / l_NT1).astype(dtype)


def _cached_attention(q_BTHK, k_BTHK, v_BTHK, kv_cache, cache_index, mask_B1TS, dtype,
                      scale: Optional[float] = None, chunk: int = 0):
    """Write this call's keys and values to cache slots [cache_index, cache_index + T), then attend
    over the cache; mask_B1TS hides the slots each query may not see. Returns (y, cache).

    One new token (T == 1) with 0 < chunk < S reads only slots [0, cache_index] (the causal mask
    hides the rest anyway), chunk by chunk (_chunked_attention): decoding then costs what the
    context holds, not what the cache could hold. Prompts and window re-reads (T > 1) attend
    over the whole cache in one go."""
    B, T, H, K = q_BTHK.shape
    N = B * H
    k_cache_NSK, v_cache_NSK = kv_cache
    chex.assert_equal_shape([k_cache_NSK, v_cache_NSK])
    chex.assert_shape(k_cache_NSK, (N, None, K))
    S = k_cache_NSK.shape[1]

    def merge_heads(x_BTHK, to_dtype):  # (B, T, H, K) -> (B*H, T, K), the cache's layout
        return x_BTHK.transpose(0, 2, 1, 3).reshape(N, T, K).astype(to_dtype)

    start = (0, cache_index, 0)
    k_cache_NSK = jax.lax.dynamic_update_slice(k_cache_NSK, merge_heads(k_BTHK, k_cache_NSK.dtype), start)
    v_cache_NSK = jax.lax.dynamic_update_slice(v_cache_NSK, merge_heads(v_BTHK, v_cache_NSK.dtype), start)
    if T == 1 and 0 < chunk < S:  # one new token: read only the filled slots
        y_N1K = _chunked_attention(merge_heads(q_BTHK, dtype), k_cache_NSK, v_cache_NSK, cache_index + 1,
                                   mask_B1TS, chunk, dtype, scale)
        return y_N1K.reshape(B, H, 1, K).transpose(0, 2, 1, 3), (k_cache_NSK, v_cache_NSK)
    scores_NTS = _scale_scores(jnp.einsum("ntk,nsk->nts", merge_heads(q_BTHK, dtype), k_cache_NSK.astype(dtype),
                                          preferred_element_type=jnp.float32), K, scale)
    probs_NTS = _masked_softmax(scores_NTS.reshape(B, H, T, S), mask_B1TS).reshape(N, T, S)
    y_NTK = jnp.einsum("nts,nsk->ntk", probs_NTS.astype(dtype), v_cache_NSK.astype(dtype))
    y_BTHK = y_NTK.reshape(B, H, T, K).transpose(0, 2, 1, 3)
    return y_BTHK, (k_cache_NSK, v_cache_NSK)


def _hidden_init(cfg: GPTConfig, std: float, fan_in_mult: float):
    """N(0, std^2) for a hidden matrix; under muP std / sqrt(fan_in_mult) (variance ~ 1/fan_in,
    std itself at the base width). GPT-2 (mup off): exactly std."""
    return _normal(std / math.sqrt(fan_in_mult) if cfg.mup else std)


def _projection_init(cfg: GPTConfig, fan_in_mult: float):
    """A residual projection (c_proj): GPT-2's std 0.02 / sqrt(2 n_layer) (muP-scaled like any hidden
    matrix), or zeros with zero_init_proj."""
    if cfg.zero_init_proj:
        return nn.initializers.zeros
    return _hidden_init(cfg, _STD / math.sqrt(2 * cfg.n_layer), fan_in_mult)


def _dense_dot_general(cfg: GPTConfig, transpose_weight_grad: bool):
    """jaxgpt.model.cpu_backward's dense backward in float32 on a CPU backend (None elsewhere: lax.dot_general).
    transpose_weight_grad picks the weight gradient's form XLA:CPU runs faster for that layer's
    shape (measured on shakespeare_char_cpu: the natural x^T g for c_attn, 7% of a step on one
    core; the transposed one for the MLP's c_proj, 2%)."""
    if cfg.dtype == jnp.float32 and jax.default_backend() == "cpu":
        return fused.dense_dot_general(transpose_weight_grad)
    return None


def _use_fused_attention(cfg: GPTConfig, mask_B1TS, attn_dropout: bool, q_BTHK) -> bool:
    """The training/eval forward on a CPU backend in float32: jaxgpt.model.cpu_backward's causal attention with
    its hand-written backward. Elsewhere jax.nn.dot_product_attention (fused kernels on GPU/TPU)."""
    return (cfg.attn_impl == "dot_product_attention" and mask_B1TS is None and not attn_dropout
            and q_BTHK.dtype == jnp.float32 and jax.default_backend() == "cpu")


class CausalSelfAttention(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(
        self,
        x_BTD: jax.Array,
        mask_B1TS: Optional[jax.Array],
        deterministic: bool,
        kv_cache: Optional[Tuple[jax.Array, jax.Array]] = None,
        cache_index: Optional[jax.Array] = None,
        rope: Optional[RopeTables] = None,
    ):
        cfg = self.config
        B, T, D = x_BTD.shape
        H, K = cfg.n_head, cfg.head_dim
        # muP: 1/K attention (sqrt(K_base)/K, see the module docstring); None keeps GPT-2's 1/sqrt(K).
        scale = cfg.mup_attn_scale if cfg.mup else None
        qkv_BT3HK = nn.DenseGeneral(
            features=(3, H, K), use_bias=cfg.bias, dtype=cfg.dtype,
            kernel_init=_hidden_init(cfg, _STD, cfg.mup_width_mult), name="c_attn",
            dot_general=_dense_dot_general(cfg, transpose_weight_grad=False),
        )(x_BTD)
        q_BTHK, k_BTHK, v_BTHK = qkv_BT3HK[:, :, 0], qkv_BT3HK[:, :, 1], qkv_BT3HK[:, :, 2]
        if cfg.qk_norm:  # per head over K, one (K,) scale per layer; before the rotation
            q_BTHK = _rms_norm(cfg, "q_norm")(q_BTHK)
            k_BTHK = _rms_norm(cfg, "k_norm")(k_BTHK)
        if rope is not None:  # keys are cached rotated: each at its own absolute position
            q_BTHK, k_BTHK = apply_rope(q_BTHK, rope), apply_rope(k_BTHK, rope)

        attn_dropout = cfg.dropout > 0.0 and not deterministic
        dropout = nn.Dropout(cfg.dropout, name="attn_dropout") if attn_dropout else None
        new_cache = None
        if kv_cache is not None:
            y_BTHK, new_cache = _cached_attention(q_BTHK, k_BTHK, v_BTHK, kv_cache, cache_index,
                                                  mask_B1TS, cfg.dtype, scale, cfg.decode_chunk)
        elif _use_fused_attention(cfg, mask_B1TS, attn_dropout, q_BTHK):
            # XLA:CPU's generated attention backward is slow; this one is written out (jaxgpt.model.cpu_backward).
            fused_scale = 1.0 / math.sqrt(K) if scale is None else scale
            if cfg.qk_norm or rope is not None:  # q and k were changed after the split
                y_BTHK = fused.causal_attention(q_BTHK, k_BTHK, v_BTHK, fused_scale)
            else:  # straight from the projection: one stacked gradient (jaxgpt.model.cpu_backward)
                y_BTHK = fused.causal_attention_qkv(qkv_BT3HK, fused_scale)
        elif cfg.attn_impl in ("dot_product_attention", "cudnn") and not attn_dropout:
            # is_causal lets XLA/cuDNN pick a fused causal kernel when no explicit mask is needed.
            # "cudnn" asks for cuDNN's flash attention outright (bf16, (B, T, H, K) as here); on a
            # machine without a GPU check_attn_impl refuses it rather than run something else.
            check_attn_impl(cfg.attn_impl)
            y_BTHK = jax.nn.dot_product_attention(
                q_BTHK, k_BTHK, v_BTHK, mask=mask_B1TS, is_causal=mask_B1TS is None, scale=scale,
                implementation="cudnn" if cfg.attn_impl == "cudnn" else None,
            )
        else:
            # The textbook path; also used whenever attention dropout is active, which
            # jax.nn.dot_product_attention does not offer. The probabilities are sown into the
            # "intermediates" collection: a no-op unless apply(..., mutable=["intermediates"]).
            y_BTHK = _explicit_attention(
                q_BTHK, k_BTHK, v_BTHK, mask_B1TS, dropout, deterministic, scale,
                record=lambda probs_BHTS: self.sow("intermediates", "attn_probs", probs_BHTS))

        y_BTD = nn.DenseGeneral(
            features=D, axis=(-2, -1), use_bias=cfg.bias, dtype=cfg.dtype,
            kernel_init=_projection_init(cfg, cfg.mup_width_mult), name="c_proj",
        )(y_BTHK)
        y_BTD = nn.Dropout(cfg.dropout, name="resid_dropout")(y_BTD, deterministic=deterministic)
        return y_BTD, new_cache


class MLP(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(self, x_BTD: jax.Array, deterministic: bool) -> jax.Array:
        cfg = self.config
        B, T, D = x_BTD.shape
        # Tokens flattened to one axis (M = B*T): with (B, T) kept apart, XLA:CPU's backward
        # wrote the GELU gradient through a transposing copy for the c_fc weight gradient, about
        # a quarter of a shakespeare_char_cpu train step (measured: 105 -> 75 ms per step).
        F = cfg.mlp_hidden_dim
        x_MD = x_BTD.reshape(B * T, D)
        h_MF = nn.Dense(F, use_bias=cfg.bias, dtype=cfg.dtype,
                        kernel_init=_hidden_init(cfg, _STD, cfg.mup_width_mult), name="c_fc")(x_MD)
        if cfg.mlp == "swiglu":  # c_proj(silu(c_gate(x)) * c_fc(x))
            gate_MF = nn.Dense(F, use_bias=cfg.bias, dtype=cfg.dtype,
                               kernel_init=_hidden_init(cfg, _STD, cfg.mup_width_mult), name="c_gate")(x_MD)
            h_MF = nn.silu(gate_MF) * h_MF
        elif cfg.mlp == "relu2":  # Primer's squared ReLU
            h_MF = jnp.square(nn.relu(h_MF))
        elif cfg.gelu == "exact" and h_MF.dtype == jnp.float32:
            h_MF = fused.gelu_exact(h_MF)  # erf form with a written-out derivative (jaxgpt.model.cpu_backward)
        else:
            h_MF = nn.gelu(h_MF, approximate=cfg.gelu == "tanh")
        y_MD = nn.Dense(cfg.n_embd, use_bias=cfg.bias, dtype=cfg.dtype,
                        kernel_init=_projection_init(cfg, cfg.mup_mlp_width_mult),
                        name="c_proj", dot_general=_dense_dot_general(cfg, transpose_weight_grad=True))(h_MF)
        y_BTD = y_MD.reshape(B, T, D)
        return nn.Dropout(cfg.dropout, name="resid_dropout")(y_BTD, deterministic=deterministic)


def _rms_norm(cfg: GPTConfig, name: str) -> nn.RMSNorm:
    """x / sqrt(mean(x^2) + eps) * scale over the last axis (statistics in float32)."""
    return nn.RMSNorm(epsilon=cfg.layer_norm_eps, dtype=cfg.dtype, name=name)


class FusedLayerNorm(nn.Module):
    """float32 LayerNorm with nn.LayerNorm's params (scale (D,) ones, bias (D,) zeros) and a
    hand-written backward (jaxgpt.model.cpu_backward.layer_norm): XLA:CPU's autodiff of nn.LayerNorm is ~3x
    its forward."""

    epsilon: float
    use_bias: bool

    @nn.compact
    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        D = x_BTD.shape[-1]
        scale_D = self.param("scale", nn.initializers.ones, (D,))
        bias_D = self.param("bias", nn.initializers.zeros, (D,)) if self.use_bias else None
        return fused.layer_norm(x_BTD.astype(jnp.float32), scale_D, bias_D, self.epsilon)


def _layer_norm(cfg: GPTConfig, name: str) -> nn.Module:
    """The block/final normalization: LayerNorm (GPT-2) or, with norm="rmsnorm", RMSNorm."""
    if cfg.norm == "rmsnorm":
        return _rms_norm(cfg, name)
    if cfg.dtype == jnp.float32:
        return FusedLayerNorm(epsilon=cfg.layer_norm_eps, use_bias=cfg.bias, name=name)
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_bias=cfg.bias, dtype=cfg.dtype, name=name)


class Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    config: GPTConfig

    @nn.compact
    def __call__(self, x_BTD, mask_B1TS, deterministic: bool, kv_cache=None, cache_index=None, rope=None):
        cfg = self.config
        h_BTD, new_cache = CausalSelfAttention(cfg, name="attn")(
            _layer_norm(cfg, "ln_1")(x_BTD), mask_B1TS, deterministic, kv_cache, cache_index, rope
        )
        x_BTD = x_BTD + h_BTD
        x_BTD = x_BTD + MLP(cfg, name="mlp")(_layer_norm(cfg, "ln_2")(x_BTD), deterministic)
        return x_BTD, new_cache


class GPT(nn.Module):
    """Decoder-only GPT. `apply({"params": p}, idx_BT)` gives float32 logits (B, T, V), no dropout.

    Training: `apply(..., idx_BT, deterministic=False, rngs={"dropout": key})`.
    Cached decoding: `apply(..., method=GPT.decode)` (see jaxgpt.sample.decode).
    """

    config: GPTConfig

    def setup(self):
        cfg = self.config
        self.wte = nn.Embed(cfg.vocab_size, cfg.n_embd, embedding_init=_normal(_STD), dtype=cfg.dtype)
        if cfg.pos_emb == "learned":
            self.wpe = nn.Embed(cfg.block_size, cfg.n_embd, embedding_init=_normal(_STD), dtype=cfg.dtype)
        self.drop = nn.Dropout(cfg.dropout)
        # deterministic is argument 3 (self is 0): static under remat.
        block = nn.remat(Block, static_argnums=(3,)) if cfg.remat else Block
        self.h = [block(cfg) for _ in range(cfg.n_layer)]  # named h_0 ... h_{L-1}
        self.ln_f = _layer_norm(cfg, "ln_f")
        if not cfg.tie_embeddings:
            self.lm_head = nn.Dense(cfg.vocab_size, use_bias=cfg.bias, dtype=cfg.dtype,
                                    kernel_init=_normal(_STD))

    def _check_tokens(self, idx_BT: jax.Array) -> None:
        chex.assert_rank(idx_BT, 2)
        chex.assert_type(idx_BT, int)

    def _trunk(self, idx_BT, pos_BT, mask_B1TS, deterministic, kv_caches=None, cache_index=None,
               features_only=False):
        cfg = self.config
        x_BTD = self.wte(idx_BT)
        rope = None
        if cfg.pos_emb == "learned":
            x_BTD = x_BTD + self.wpe(pos_BT)
        else:  # one table for all layers
            rope = rope_tables(cfg, pos_BT)
        x_BTD = self.drop(x_BTD, deterministic=deterministic)
        new_caches = []
        for i, block in enumerate(self.h):
            layer_cache = None if kv_caches is None else kv_caches[i]
            x_BTD, new_cache = block(x_BTD, mask_B1TS, deterministic, layer_cache, cache_index, rope)
            new_caches.append(new_cache)
        x_BTD = self.ln_f(x_BTD)
        if features_only:  # fine-tuning heads read the final hidden states (see GPT.features)
            return x_BTD, tuple(new_caches)
        return self.readout(x_BTD), tuple(new_caches)

    def readout(self, x_BTD: jax.Array) -> jax.Array:
        """The LM head: float32 logits (B, T, V) from final hidden states (GPT.features' output).
        `apply(..., h_BTD, method=GPT.readout)` gives a fine-tuning loss the model's own head."""
        cfg = self.config
        if cfg.mup:  # muP readout multiplier 1/m on the head's input (MuReadout / MuSharedReadout)
            x_BTD = x_BTD * jnp.asarray(1.0 / cfg.mup_width_mult, x_BTD.dtype)
        if cfg.tie_embeddings:
            # Head in the compute dtype with float32 accumulation and float32 logits.
            emb_VD = self.wte.embedding.astype(cfg.dtype)
            logits_BTV = jnp.einsum("btd,vd->btv", x_BTD.astype(cfg.dtype), emb_VD, preferred_element_type=jnp.float32)
        else:
            logits_BTV = self.lm_head(x_BTD).astype(jnp.float32)
        if cfg.logit_softcap > 0:  # c * tanh(logits / c): smooth, bounded by c
            logits_BTV = cfg.logit_softcap * jnp.tanh(logits_BTV / cfg.logit_softcap)
        return logits_BTV

    def __call__(self, idx_BT: jax.Array, deterministic: bool = True) -> jax.Array:
        self._check_tokens(idx_BT)
        B, T = idx_BT.shape
        if T > self.config.block_size:
            raise ValueError(
                f"sequence length T={T} exceeds GPTConfig.block_size={self.config.block_size}"
            )
        pos_BT = jnp.broadcast_to(jnp.arange(T)[None, :], (B, T))
        logits_BTV, _ = self._trunk(idx_BT, pos_BT, None, deterministic)
        chex.assert_shape(logits_BTV, (B, T, self.config.vocab_size))
        chex.assert_type(logits_BTV, jnp.float32)
        return logits_BTV

    # ---- fine-tuning: a separate entry point, so __call__ and its logits are untouched
    def features(self, idx_BT: jax.Array, deterministic: bool = True) -> jax.Array:
        """The final hidden states (B, T, D), after ln_f and before the LM head, in the compute
        dtype: what a classification head pools. `apply(..., method=GPT.features)`."""
        self._check_tokens(idx_BT)
        B, T = idx_BT.shape
        if T > self.config.block_size:
            raise ValueError(f"sequence length T={T} exceeds GPTConfig.block_size={self.config.block_size}")
        pos_BT = jnp.broadcast_to(jnp.arange(T)[None, :], (B, T))
        x_BTD, _ = self._trunk(idx_BT, pos_BT, None, deterministic, features_only=True)
        chex.assert_shape(x_BTD, (B, T, self.config.n_embd))
        return x_BTD

    def decode(
        self,
        idx_BT: jax.Array,
        pos_BT: jax.Array,
        kv_caches: KVCache,
        cache_index: jax.Array,
        key_valid_BS: jax.Array,
    ) -> Tuple[jax.Array, KVCache]:
        """Run T new tokens that occupy cache slots [cache_index, cache_index + T).

        pos_BT are their position ids (rows may be left-padded, so positions differ per row);
        key_valid_BS marks the cache slots that hold real tokens (False for padding). Returns
        float32 logits (B, T, V) and the updated caches. No dropout.
        """
        cfg = self.config
        self._check_tokens(idx_BT)
        B, T = idx_BT.shape
        chex.assert_shape(pos_BT, (B, T))
        chex.assert_equal(len(kv_caches), cfg.n_layer)
        S = kv_caches[0][0].shape[1]
        chex.assert_shape(key_valid_BS, (B, S))
        query_slot_BT = jnp.broadcast_to(cache_index + jnp.arange(T)[None, :], (B, T))
        mask_B1TS = causal_mask(query_slot_BT, key_valid_BS)
        logits_BTV, new_caches = self._trunk(idx_BT, pos_BT, mask_B1TS, True, kv_caches, cache_index)
        chex.assert_shape(logits_BTV, (B, T, cfg.vocab_size))
        chex.assert_trees_all_equal_shapes_and_dtypes(new_caches, kv_caches)
        return logits_BTV, new_caches


def init_kv_cache(config: GPTConfig, batch_size: int, capacity: int, dtype=None) -> KVCache:
    """Zeroed per-layer (keys, values), each (B * H, capacity, K), in the compute dtype by default."""
    if capacity > config.block_size:
        raise ValueError(f"cache capacity {capacity} exceeds GPTConfig.block_size={config.block_size}")
    dtype = dtype or config.dtype
    shape = (batch_size * config.n_head, capacity, config.head_dim)
    return tuple((jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)) for _ in range(config.n_layer))


def cross_entropy_loss(logits_BTV: jax.Array, targets_BT: jax.Array, ignore_index: int = -1,
                       z_loss: float = 0.0) -> jax.Array:
    """Mean token cross-entropy in float32 over targets != ignore_index (0 if none count).

    z_loss > 0 adds PaLM's auxiliary loss z_loss * mean(logsumexp(logits)^2) over the same
    counted tokens (it pulls log Z towards 0, keeping the softmax normalizer stable). With the
    default 0.0 (a Python number) nothing extra is computed: the loss is exactly the plain one.
    """
    chex.assert_rank(logits_BTV, 3)
    chex.assert_shape(targets_BT, logits_BTV.shape[:2])
    chex.assert_type(targets_BT, int)
    counted_BT = targets_BT != ignore_index
    safe_targets_BT = jnp.where(counted_BT, targets_BT, 0)
    logits_BTV = logits_BTV.astype(jnp.float32)
    losses_BT = optax.softmax_cross_entropy_with_integer_labels(logits_BTV, safe_targets_BT)
    if not (isinstance(z_loss, (int, float)) and z_loss == 0):  # a traced coefficient counts too
        log_z_BT = jax.nn.logsumexp(logits_BTV, axis=-1)
        losses_BT = losses_BT + z_loss * jnp.square(log_z_BT)
    total = jnp.sum(jnp.where(counted_BT, losses_BT, 0.0))
    return total / jnp.maximum(jnp.sum(counted_BT), 1).astype(jnp.float32)
