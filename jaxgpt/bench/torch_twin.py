"""An independent PyTorch GPT-2 (nanoGPT style) for parity tests and benchmarks.

Written the idiomatic torch way (nn.Linear, nn.LayerNorm, F.scaled_dot_product_attention) so that
agreeing with jaxgpt.model.gpt means something. State-dict keys follow nanoGPT/HF naming with nn.Linear
layout: `transformer.h.{i}.attn.c_attn.weight` is (3D, D). The JAX runtime never imports this: it ships
in the package for `jaxgpt bench` (whose runs import it, torch installed); the checkout's tests import
it as reference.torch_twin.

Weight transfer: `torch_to_flax(state_dict, config)` and `flax_to_torch(params, config)`; both go
through jaxgpt.model.pretrained's single GPT-2 key mapping (Linear weights are Conv1D weights transposed).

The architecture switches of GPTConfig are built the usual torch way too: pos_emb="rope" as in
Hugging Face's Llama (an inv_freq buffer, cat(freqs, freqs), rotate_half: the half-split
convention), norm="rmsnorm" and qk_norm with nn.RMSNorm, mlp="swiglu" as
c_proj(F.silu(c_gate(x)) * c_fc(x)), mlp="relu2" as c_proj(F.relu(c_fc(x)).square()),
logit_softcap as c * torch.tanh(logits / c) after lm_head, zero_init_proj as nn.init.zeros_ on
the c_proj weights, and config.z_loss in forward's loss.

muP (config.mup) the way microsoft/mup does it in torch: `scale=` of F.scaled_dot_product_attention
(sqrt(K_base) / K), the final hidden state times 1/m before lm_head (MuReadout; MuSharedReadout
when tied), and hidden Linear weights initialized with std / sqrt(fan_in / fan_in_base). See
jaxgpt.model.gpt's docstring for the reasons.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from jaxgpt.model.config import GPTConfig
from jaxgpt.model.pretrained import CONV1D_WEIGHTS, gpt2_state_to_params, params_to_gpt2_state

__all__ = ["TorchGPT", "configure_optimizer", "torch_to_flax", "flax_to_torch"]

# Per layer (keys, values), each (B, H, S, K), written in place by the cached forward.
TorchKVCache = List[Tuple[torch.Tensor, torch.Tensor]]


def _norm(config: GPTConfig, dim: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=config.layer_norm_eps)
    return nn.LayerNorm(dim, eps=config.layer_norm_eps, bias=config.bias)


class RotaryEmbedding(nn.Module):
    """cos, sin (T, K) for position ids (T,), Hugging Face Llama style (no parameters)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, pos: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        freqs = torch.outer(pos.float(), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary_pos_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        if config.qk_norm:
            self.q_norm = nn.RMSNorm(config.head_dim, eps=config.layer_norm_eps)
            self.k_norm = nn.RMSNorm(config.head_dim, eps=config.layer_norm_eps)
        self.qk_norm = config.qk_norm
        self.attn_scale = config.mup_attn_scale if config.mup else None  # None: SDPA's 1/sqrt(K)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, kv_cache: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
                start: int = 0, rope: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
        B, T, D = x.shape
        H = self.n_head
        q, k, v = self.c_attn(x).split(D, dim=2)
        q, k, v = (t.view(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, K)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rotary_pos_emb(q, *rope), apply_rotary_pos_emb(k, *rope)
        if kv_cache is None:
            y = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True, scale=self.attn_scale
            )
        else:
            k_cache, v_cache = kv_cache
            k_cache[:, :, start:start + T] = k
            v_cache[:, :, start:start + T] = v
            k, v = k_cache[:, :, :start + T], v_cache[:, :, :start + T]
            if start == 0:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.attn_scale)
            elif T == 1:  # the new token sees every cached one
                y = F.scaled_dot_product_attention(q, k, v, scale=self.attn_scale)
            else:  # query i sits at slot start + i
                mask = torch.ones(T, start + T, dtype=torch.bool, device=x.device).tril(diagonal=start)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.attn_scale)
        y = y.transpose(1, 2).contiguous().view(B, T, D)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        hidden = config.mlp_hidden_dim
        self.c_fc = nn.Linear(config.n_embd, hidden, bias=config.bias)
        if config.mlp == "swiglu":
            self.c_gate = nn.Linear(config.n_embd, hidden, bias=config.bias)
        elif config.mlp == "gelu":
            self.gelu = nn.GELU(approximate="tanh" if config.gelu == "tanh" else "none")
        self.kind = config.mlp
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.c_gate(x)) * self.c_fc(x)
        elif self.kind == "relu2":
            h = F.relu(self.c_fc(x)).square()
        else:
            h = self.gelu(self.c_fc(x))
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = _norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = _norm(config, config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x, kv_cache=None, start: int = 0, rope=None):
        x = x + self.attn(self.ln_1(x), kv_cache, start, rope)
        return x + self.mlp(self.ln_2(x))


class TorchGPT(nn.Module):
    """nanoGPT's GPT for a jaxgpt GPTConfig. float32 only (compute_dtype, attn_impl, remat ignored)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.pos_emb == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        else:
            self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.transformer = nn.ModuleDict(dict(
            **modules,
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
            ln_f=_norm(config, config.n_embd),
        ))
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size,
                                 bias=config.bias and not config.tie_embeddings)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # one tensor, two names
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of residual projections
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
                if config.zero_init_proj:  # drawn first all the same: the other tensors keep nanoGPT's draws
                    nn.init.zeros_(p)
        if config.mup:  # hidden matrices: std / sqrt(fan_in mult), variance ~ 1/fan_in
            for name, p in self.named_parameters():
                if name.startswith("transformer.h.") and name.endswith(".weight") and p.dim() == 2:
                    mult = config.mup_mlp_width_mult if name.endswith("mlp.c_proj.weight") else config.mup_width_mult
                    with torch.no_grad():
                        p.div_(math.sqrt(mult))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def _logits(self, idx: torch.Tensor, kv_caches: Optional[TorchKVCache] = None,
                start: int = 0) -> torch.Tensor:
        B, T = idx.shape
        if start + T > self.config.block_size:
            raise ValueError(
                f"sequence length {start + T} exceeds GPTConfig.block_size={self.config.block_size}"
            )
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx)
        rope = None
        if self.config.pos_emb == "learned":
            x = x + self.transformer.wpe(pos)
        else:
            rope = self.rotary(pos)
        x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, None if kv_caches is None else kv_caches[i], start, rope)
        x = self.transformer.ln_f(x)
        if self.config.mup:  # MuReadout: output_mult * x / width_mult, before the (tied) head
            x = x * (1.0 / self.config.mup_width_mult)
        logits = self.lm_head(x)
        if self.config.logit_softcap:
            logits = self.config.logit_softcap * torch.tanh(logits / self.config.logit_softcap)
        return logits

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None):
        """(B, T) token ids -> (logits (B, T, V), mean cross-entropy over targets != -1, or None).

        With config.z_loss > 0 the loss adds z_loss * mean(logsumexp(logits)^2) over the same
        targets (PaLM's z-loss)."""
        logits = self._logits(idx)
        loss = None
        if targets is not None:
            flat_logits, flat_targets = logits.view(-1, logits.size(-1)), targets.reshape(-1)
            loss = F.cross_entropy(flat_logits, flat_targets, ignore_index=-1)
            if self.config.z_loss:
                log_z = torch.logsumexp(flat_logits[flat_targets != -1], dim=-1)
                loss = loss + self.config.z_loss * log_z.square().mean()
        return logits, loss

    # ------------------------------------------------------------------------------------------
    # Generation. Both keep the model's train/eval mode but run without dropout or grads.

    @torch.no_grad()
    def generate_naive(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                       top_k: Optional[int] = None, greedy: bool = False,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """nanoGPT's generate: re-run the whole (cropped) context for every new token."""
        _check_sampling(max_new_tokens, temperature, top_k)
        with _eval_mode(self):
            for _ in range(max_new_tokens):
                idx_cond = idx[:, -self.config.block_size:]
                logits = self._logits(idx_cond)[:, -1, :]
                idx = torch.cat([idx, _pick_next(logits, temperature, top_k, greedy, generator)], dim=1)
        return idx

    @torch.no_grad()
    def generate_cached(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                        top_k: Optional[int] = None, greedy: bool = False,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Same tokens as generate_naive, with a KV cache of block_size slots.

        Prefill the (cropped) prompt once, then one token per step. Once the context exceeds
        block_size every position id shifts per token, so cached keys are stale: from then on each
        step re-prefills the cropped window, exactly as generate_naive does.
        """
        _check_sampling(max_new_tokens, temperature, top_k)
        cfg = self.config
        B = idx.size(0)
        dtype = self.transformer.wte.weight.dtype
        shape = (B, cfg.n_head, cfg.block_size, cfg.head_dim)
        caches = [(torch.zeros(shape, dtype=dtype, device=idx.device),
                   torch.zeros(shape, dtype=dtype, device=idx.device)) for _ in range(cfg.n_layer)]
        with _eval_mode(self):
            context = idx[:, -cfg.block_size:]
            filled = context.size(1)
            logits = self._logits(context, caches, 0)[:, -1, :]
            for step in range(max_new_tokens):
                idx_next = _pick_next(logits, temperature, top_k, greedy, generator)
                idx = torch.cat([idx, idx_next], dim=1)
                if step == max_new_tokens - 1:
                    break
                if filled < cfg.block_size:
                    logits = self._logits(idx_next, caches, filled)[:, -1, :]
                    filled += 1
                else:
                    logits = self._logits(idx[:, -cfg.block_size:], caches, 0)[:, -1, :]
        return idx


class _eval_mode:
    def __init__(self, model: nn.Module):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def _check_sampling(max_new_tokens, temperature, top_k) -> None:
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")


def _pick_next(logits_BV: torch.Tensor, temperature: float, top_k: Optional[int], greedy: bool,
               generator: Optional[torch.Generator]) -> torch.Tensor:
    """(B, V) logits -> (B, 1) next ids: argmax, or nanoGPT's temperature + top-k sampling."""
    if greedy:
        return torch.argmax(logits_BV, dim=-1, keepdim=True)
    logits_BV = logits_BV / temperature
    if top_k is not None:
        kth, _ = torch.topk(logits_BV, min(top_k, logits_BV.size(-1)))
        logits_BV = logits_BV.masked_fill(logits_BV < kth[:, [-1]], -float("inf"))
    probs_BV = F.softmax(logits_BV, dim=-1)
    return torch.multinomial(probs_BV, num_samples=1, generator=generator)


def configure_optimizer(model: nn.Module, lr: float, weight_decay: float,
                        betas: Tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, fused: bool = False
                        ) -> torch.optim.AdamW:
    """nanoGPT's AdamW groups: decay every >= 2-D tensor (weights, embeddings), not biases/LayerNorms.
    fused: torch's fused kernel, which nanoGPT takes on a CUDA device."""
    params = [p for p in model.parameters() if p.requires_grad]  # tied weight listed once
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


# ----------------------------------------------------------------------------------------------
# Weight transfer. Only the Conv1D/Linear transpose lives here; the key mapping is jaxgpt.model.pretrained.


def _is_linear_weight(key: str) -> bool:
    return key.endswith(CONV1D_WEIGHTS)


def torch_to_flax(state_dict: Mapping[str, Any], config: GPTConfig) -> Dict[str, Any]:
    """TorchGPT state dict (or {name: grad}) -> Flax params (float32 numpy arrays).

    Accepts tensors or arrays; with tied embeddings `lm_head.weight` may be present (it must then
    equal the embedding) or absent. Raises jaxgpt.model.pretrained.PretrainedError (a ValueError) on
    missing/unexpected keys or shape mismatches.
    """
    conv1d = {}
    for key, value in state_dict.items():
        array = _to_numpy(value)
        conv1d[key] = array.T if _is_linear_weight(key) and array.ndim == 2 else array
    return gpt2_state_to_params(conv1d, config)


def flax_to_torch(params: Mapping[str, Any], config: GPTConfig) -> Dict[str, torch.Tensor]:
    """Flax params -> state dict of float32 torch tensors that `TorchGPT(config).load_state_dict` takes.

    With tied embeddings it holds both `transformer.wte.weight` and `lm_head.weight` (equal), as
    TorchGPT.state_dict() does.
    """
    out = {}
    for key, array in params_to_gpt2_state(params, config).items():
        array = array.T if _is_linear_weight(key) else array
        out[key] = torch.from_numpy(np.ascontiguousarray(array))
    return out


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", torch.float32).numpy()
    return np.asarray(value)
