"""GPT params -> Hugging Face transformers checkpoints (config.json dict + state dict of numpy arrays).

Which architecture carries a GPTConfig is decided by its switches (`architecture_of`):
  - GPT-2 (GPT2LMHeadModel, GPT2ForSequenceClassification): pos_emb=learned, norm=layernorm,
    mlp=gelu, no qk_norm. The weights go through jaxgpt.model.pretrained.params_to_gpt2_state (the
    one GPT-2 key mapping); bias=False exports zero biases (GPT-2 always has them).
  - Llama (LlamaForCausalLM): pos_emb=rope, norm=rmsnorm, mlp=swiglu, no qk_norm. jaxgpt's RoPE is
    Llama's (half-split pairs (x[i], x[i + K/2]), rotate_half; angles pos * theta^(-2i/K)), so q and k
    need no permutation; bias=True maps to attention_bias and mlp_bias (RMSNorm has none either way).
  Any other combination is refused in one line naming the switch.

muP (config.mup) is folded into the weights, so the exported model is the standard parametrization:
the attention scale sqrt(K_base)/K becomes GPT-2's/Llama's 1/sqrt(K) by scaling the query projection,
and a language model's readout multiplier 1/m scales ln_f (what the head reads).

A classifier (jaxgpt.finetune.classify, pooling="last") exports as GPT2ForSequenceClassification:
its `score` is the head's kernel. `score` has no bias, so the head's bias b is folded into ln_f's bias
as the smallest delta with delta @ W = b (exact: W (D, C) has rank C; only the head reads ln_f there).
Hugging Face pools the last token that is not pad_token_id, as jaxgpt pools the last real token.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from jaxgpt.cli import ConfigError
from jaxgpt.model.config import GPTConfig
from jaxgpt.model.pretrained import params_to_gpt2_state

__all__ = ["ExportError", "HFCheckpoint", "GPT2", "LLAMA", "ARCHITECTURES", "architecture_of", "fold_mup",
           "language_model", "classifier"]

GPT2, LLAMA = "GPT-2", "Llama"
# The switches each architecture needs (GPTConfig field -> value).
ARCHITECTURES: Dict[str, Dict[str, Any]] = {
    GPT2: {"pos_emb": "learned", "norm": "layernorm", "mlp": "gelu", "qk_norm": False, "logit_softcap": 0.0},
    LLAMA: {"pos_emb": "rope", "norm": "rmsnorm", "mlp": "swiglu", "qk_norm": False, "logit_softcap": 0.0},
}
_HF_GELU = {"tanh": "gelu_new", "exact": "gelu"}
# Relative error allowed when the head's bias is folded into ln_f (float64 solve, float32 weights).
_FOLD_RTOL = 1e-4


class ExportError(ConfigError):
    """The run cannot be written as a Hugging Face model: one line naming why."""


@dataclasses.dataclass(frozen=True)
class HFCheckpoint:
    config: Dict[str, Any]  # config.json
    state: Dict[str, np.ndarray]  # model.safetensors, float32


def _needs(name: str) -> str:
    return ", ".join(f"{key}={value}" for key, value in ARCHITECTURES[name].items())


def architecture_of(config: GPTConfig) -> str:
    """GPT2 or LLAMA: the architecture whose switches `config` has (pos_emb picks which one it
    should be); ExportError naming the first switch that fits neither."""
    name = GPT2 if config.pos_emb == "learned" else LLAMA
    for key, want in ARCHITECTURES[name].items():
        value = getattr(config, key)
        if value != want:
            other = LLAMA if name == GPT2 else GPT2
            raise ExportError(f"--{key}={value} cannot be exported as {name}, which needs {_needs(name)}; "
                              f"{other} needs {_needs(other)}")
    return name


def _np(tree):
    """The params as float32 numpy arrays, nested dicts copied (the caller's tree is never changed)."""
    if isinstance(tree, Mapping):
        return {k: _np(v) for k, v in tree.items()}
    return np.array(tree, dtype=np.float32, copy=True)


def fold_mup(params, config: GPTConfig, readout: bool) -> Tuple[Dict[str, Any], GPTConfig]:
    """(params, config) of the same model in the standard parametrization (mup off): queries scaled
    by mup_attn_scale * sqrt(K), and with readout (a language model's head) ln_f by 1/m."""
    params = _np(params)
    if not config.mup:
        return params, config
    if config.qk_norm:  # the scale would have to pass through the query norm
        raise ExportError("--mup=True with --qk_norm=True cannot be exported")
    q_factor = config.mup_attn_scale * math.sqrt(config.head_dim)
    for i in range(config.n_layer):
        c_attn = params[f"h_{i}"]["attn"]["c_attn"]
        c_attn["kernel"][:, 0] *= q_factor  # (D, 3, H, K): index 0 is q
        if "bias" in c_attn:
            c_attn["bias"][0] *= q_factor
    if readout:
        for leaf in params["ln_f"].values():  # scale and bias: ln_f(x) / m
            leaf *= 1.0 / config.mup_width_mult
    return params, config.replace(mup=False, mup_base_width=0)


def _check_head_bias(params, config: GPTConfig, name: str) -> None:
    """An untied LM head's bias: Hugging Face's lm_head has none, so only a zero bias exports."""
    if config.tie_embeddings or not config.bias:
        return
    if np.any(np.asarray(params["lm_head"]["bias"]) != 0):
        raise ExportError(f"--tie_embeddings=False with --bias=True: the output head's bias cannot be exported "
                          f"({name}'s lm_head has no bias)")


def _token_ids(config: GPTConfig, bos_id: Optional[int], eos_id: Optional[int], pad_id: Optional[int]):
    ids = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    for key, value in ids.items():
        if value is not None and not 0 <= value < config.vocab_size:
            raise ExportError(f"{key}={value} is outside the model's vocabulary of {config.vocab_size}")
    return ids


def _common(config: GPTConfig, architectures: Sequence[str]) -> Dict[str, Any]:
    return {"architectures": list(architectures), "vocab_size": config.vocab_size,
            "tie_word_embeddings": config.tie_embeddings, "dtype": "float32", "torch_dtype": "float32",
            "use_cache": True}


# ------------------------------------------------------------------------------------ GPT-2

def _with_zero_biases(params, config: GPTConfig):
    """A bias=False tree with GPT-2's biases added as zeros (a Dense's output dims, a LayerNorm's D),
    in place (the tree is fold_mup's copy)."""
    if config.bias:
        return params
    for i in range(config.n_layer):
        block = params[f"h_{i}"]
        for name, layer in (("c_attn", block["attn"]["c_attn"]), ("c_proj", block["attn"]["c_proj"]),
                            ("c_fc", block["mlp"]["c_fc"]), ("c_proj", block["mlp"]["c_proj"])):
            kernel = layer["kernel"]
            layer["bias"] = np.zeros(kernel.shape[1:] if name == "c_attn" else kernel.shape[-1:], np.float32)
        for norm in ("ln_1", "ln_2"):
            block[norm]["bias"] = np.zeros_like(block[norm]["scale"])
    params["ln_f"]["bias"] = np.zeros_like(params["ln_f"]["scale"])
    if "lm_head" in params:  # an untied head (dropped again: GPT-2's lm_head has no bias)
        params["lm_head"]["bias"] = np.zeros(params["lm_head"]["kernel"].shape[-1:], np.float32)
    return params


def _gpt2_config(config: GPTConfig, architecture: str) -> Dict[str, Any]:
    return {**_common(config, [architecture]), "model_type": "gpt2", "n_positions": config.block_size,
            "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None,
            "activation_function": _HF_GELU[config.gelu], "layer_norm_epsilon": config.layer_norm_eps,
            "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
            "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False}


def _gpt2_state(params, config: GPTConfig) -> Dict[str, np.ndarray]:
    """GPT-2's state dict in Conv1D layout, biases included, without the LM head."""
    state = params_to_gpt2_state(_with_zero_biases(params, config), config.replace(bias=True))
    state.pop("lm_head.weight")
    state.pop("lm_head.bias", None)
    return state


def _gpt2_language_model(params, config: GPTConfig, ids) -> HFCheckpoint:
    _check_head_bias(params, config, "GPT2LMHeadModel")
    state = _gpt2_state(params, config)
    if not config.tie_embeddings:
        state["lm_head.weight"] = np.ascontiguousarray(params["lm_head"]["kernel"].T)  # a Linear: (V, D)
    return HFCheckpoint({**_gpt2_config(config, "GPT2LMHeadModel"), **ids}, state)


# ------------------------------------------------------------------------------------ Llama

def _linear(state, name: str, kernel_IO: np.ndarray, bias: Optional[np.ndarray]) -> None:
    """An nn.Linear's weight (out, in) from a flattened (in, out) kernel."""
    state[f"{name}.weight"] = np.ascontiguousarray(kernel_IO.T)
    if bias is not None:
        state[f"{name}.bias"] = bias.reshape(-1)


def _llama_state(params, config: GPTConfig) -> Dict[str, np.ndarray]:
    D = config.n_embd
    state = {"model.embed_tokens.weight": params["wte"]["embedding"]}
    for i in range(config.n_layer):
        block, p = params[f"h_{i}"], f"model.layers.{i}"
        c_attn, c_proj = block["attn"]["c_attn"], block["attn"]["c_proj"]
        for j, proj in enumerate(("q_proj", "k_proj", "v_proj")):  # c_attn (D, 3, H, K): heads-major features
            bias = c_attn["bias"][j] if config.bias else None
            _linear(state, f"{p}.self_attn.{proj}", c_attn["kernel"][:, j].reshape(D, D), bias)
        _linear(state, f"{p}.self_attn.o_proj", c_proj["kernel"].reshape(D, D), c_proj.get("bias"))
        mlp = block["mlp"]
        for name, proj in (("c_gate", "gate_proj"), ("c_fc", "up_proj"), ("c_proj", "down_proj")):
            _linear(state, f"{p}.mlp.{proj}", mlp[name]["kernel"], mlp[name].get("bias"))
        state[f"{p}.input_layernorm.weight"] = block["ln_1"]["scale"]
        state[f"{p}.post_attention_layernorm.weight"] = block["ln_2"]["scale"]
    state["model.norm.weight"] = params["ln_f"]["scale"]
    if not config.tie_embeddings:
        state["lm_head.weight"] = np.ascontiguousarray(params["lm_head"]["kernel"].T)
    return state


def _llama_language_model(params, config: GPTConfig, ids) -> HFCheckpoint:
    _check_head_bias(params, config, "LlamaForCausalLM")
    hf_config = {**_common(config, ["LlamaForCausalLM"]), "model_type": "llama", "hidden_size": config.n_embd,
                 "intermediate_size": config.mlp_hidden_dim, "num_hidden_layers": config.n_layer,
                 "num_attention_heads": config.n_head, "num_key_value_heads": config.n_head,
                 "head_dim": config.head_dim, "hidden_act": "silu", "max_position_embeddings": config.block_size,
                 "rms_norm_eps": config.layer_norm_eps, "rope_theta": config.rope_theta,
                 "rope_parameters": {"rope_type": "default", "rope_theta": config.rope_theta},
                 "attention_bias": config.bias, "mlp_bias": config.bias, "attention_dropout": 0.0,
                 "pretraining_tp": 1, **ids}
    return HFCheckpoint(hf_config, _llama_state(params, config))


# ------------------------------------------------------------------------------------ entry points

def language_model(params, config: GPTConfig, *, bos_id: Optional[int] = None,
                   eos_id: Optional[int] = None) -> HFCheckpoint:
    """A GPT's params as GPT2LMHeadModel or LlamaForCausalLM (architecture_of decides)."""
    name = architecture_of(config)
    ids = _token_ids(config, bos_id, eos_id, None)
    params, config = fold_mup(params, config, readout=True)
    if name == GPT2:
        return _gpt2_language_model(params, config, ids)
    return _llama_language_model(params, config, ids)


def _fold_head_bias(ln_f_bias: np.ndarray, kernel_DC: np.ndarray, bias_C: np.ndarray) -> np.ndarray:
    """ln_f's bias plus the smallest delta with delta @ kernel = bias (the head's bias moved into ln_f)."""
    delta, *_ = np.linalg.lstsq(kernel_DC.T.astype(np.float64), bias_C.astype(np.float64), rcond=None)
    error = np.abs(delta @ kernel_DC.astype(np.float64) - bias_C).max()
    if error > _FOLD_RTOL * max(1.0, np.abs(bias_C).max()):
        raise ExportError(f"the classifier head's bias cannot be folded into ln_f (its kernel {kernel_DC.shape} "
                          f"has rank below its {kernel_DC.shape[1]} classes; residual {error:.2g})")
    return (ln_f_bias.astype(np.float64) + delta).astype(np.float32)


def classifier(backbone, head, config: GPTConfig, labels: Sequence[str], pad_id: int) -> HFCheckpoint:
    """A last-token-pooling classifier (backbone params with LoRA already merged, head {"kernel": (D, C),
    "bias": (C,)}) as GPT2ForSequenceClassification. pad_id may equal config.vocab_size: the
    embedding then gains a zero row for it (a padding id no text ever holds)."""
    name = architecture_of(config)
    if name != GPT2:
        raise ExportError(f"a classifier with --pos_emb={config.pos_emb} cannot be exported: only GPT-2 "
                          f"classifiers are ({_needs(GPT2)}); LlamaForSequenceClassification's score has no bias "
                          "and RMSNorm none to carry it")
    kernel_DC, bias_C = np.asarray(head["kernel"], np.float32), np.asarray(head["bias"], np.float32)
    if kernel_DC.shape != (config.n_embd, len(labels)) or bias_C.shape != (len(labels),):
        raise ExportError(f"the classifier head {kernel_DC.shape} does not fit {len(labels)} labels of width "
                          f"{config.n_embd}")
    params, config = fold_mup(backbone, config, readout=False)
    params = _with_zero_biases(params, config)
    params["ln_f"]["bias"] = _fold_head_bias(params["ln_f"]["bias"], kernel_DC, bias_C)
    if pad_id == config.vocab_size:
        table = params["wte"]["embedding"]
        params["wte"]["embedding"] = np.concatenate([table, np.zeros_like(table[:1])])
        config = config.replace(vocab_size=config.vocab_size + 1)
    ids = _token_ids(config, None, None, pad_id)
    # no LM head in a classifier: a tied or untied head alike is left out
    config = config.replace(tie_embeddings=True)
    params.pop("lm_head", None)
    state = _gpt2_state(params, config)
    state["score.weight"] = np.ascontiguousarray(kernel_DC.T)  # a Linear: (C, D)
    hf_config = {**_gpt2_config(config, "GPT2ForSequenceClassification"), **ids,
                 "id2label": {str(i): label for i, label in enumerate(labels)},
                 "label2id": {label: i for i, label in enumerate(labels)},
                 "problem_type": "single_label_classification"}
    return HFCheckpoint(hf_config, state)
