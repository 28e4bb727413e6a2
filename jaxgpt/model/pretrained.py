"""Load GPT-2 weights in Hugging Face format into our Flax param tree.

`load_pretrained(source)` takes a local Hugging Face GPT-2 checkpoint directory (config.json plus
model.safetensors or pytorch_model.bin) or a hub name (gpt2, gpt2-medium, gpt2-large, gpt2-xl).
Safetensors are read with numpy only: the JAX runtime never imports torch.

The key mapping lives here once, for GPT-2 style state dicts in Conv1D layout (weights stored
(in, out), names with or without the `transformer.` prefix):

    wte.weight (V, D)                 -> wte/embedding
    wpe.weight (P, D)                 -> wpe/embedding
    h.i.ln_1.weight / .bias           -> h_i/ln_1/scale / bias          (ln_2, ln_f alike)
    h.i.attn.c_attn.weight (D, 3D)    -> h_i/attn/c_attn/kernel (D, 3, H, K)   bias (3D,) -> (3, H, K)
    h.i.attn.c_proj.weight (D, D)     -> h_i/attn/c_proj/kernel (H, K, D)      bias (D,)
    h.i.mlp.c_fc.weight (D, 4D)       -> h_i/mlp/c_fc/kernel                   bias (4D,)
    h.i.mlp.c_proj.weight (4D, D)     -> h_i/mlp/c_proj/kernel                 bias (D,)
    lm_head.weight (V, D) (a Linear)  -> lm_head/kernel (D, V)                 bias (V,)  (untied only)

The architecture switches of GPTConfig (no GPT-2 checkpoint has them; they serve the PyTorch twin)
follow the same scheme: pos_emb="rope" has no wpe.weight; norm="rmsnorm" has no ln_*.bias;
qk_norm adds h.i.attn.q_norm.weight / k_norm.weight (K,) -> h_i/attn/q_norm/scale, k_norm/scale;
mlp="swiglu" adds h.i.mlp.c_gate.weight (D, F) -> h_i/mlp/c_gate/kernel (bias (F,)), and c_fc,
c_gate, c_proj use F = config.mlp_hidden_dim instead of 4D.

reference.torch_twin reuses it: an nn.Linear state dict differs only by the transpose of the
CONV1D_WEIGHTS, which it applies before calling `gpt2_state_to_params`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple

import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from jaxgpt.model.config import GPTConfig, crop_block_size
from jaxgpt.optional import require

__all__ = [
    "load_pretrained",
    "gpt2_state_to_params",
    "params_to_gpt2_state",
    "config_from_hf",
    "HUB_NAMES",
    "CONV1D_WEIGHTS",
    "PretrainedError",
    "PretrainedNotFoundError",
    "PretrainedDownloadError",
]

HUB_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
HUB_ORG = "openai-community"
# Weights GPT-2 stores as Conv1D (in, out); an nn.Linear stores them (out, in).
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight",
                  "mlp.c_gate.weight")  # the last: mlp="swiglu" only
# Fields a caller may change when loading; everything else is fixed by the checkpoint.
OVERRIDABLE = ("dropout", "compute_dtype", "attn_impl", "remat", "block_size")

_PREFIX = "transformer."
# Causal-mask buffers HF keeps in the state dict; not parameters.
_BUFFER_RE = re.compile(r"^h\.\d+\.attn\.(bias|masked_bias)$")
_HF_GELU = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "exact"}


class PretrainedError(ValueError):
    """The checkpoint does not fit the config (missing/unexpected keys, shapes, config fields)."""


class PretrainedNotFoundError(PretrainedError, FileNotFoundError):
    """`source` is neither a checkpoint directory nor a known hub name, or files are missing."""


class PretrainedDownloadError(PretrainedError, RuntimeError):
    """A hub name could not be downloaded (huggingface_hub missing, or no network)."""


# ----------------------------------------------------------------------------------------------
# The one key mapping: GPT-2 state dict (Conv1D layout) <-> Flax params.


def _expected_shapes(config: GPTConfig) -> Dict[str, Tuple[int, ...]]:
    """Unprefixed GPT-2 key -> shape in Conv1D layout, for every parameter `config` implies."""
    D, V, P, F, K = config.n_embd, config.vocab_size, config.block_size, config.mlp_hidden_dim, config.head_dim
    shapes: Dict[str, Tuple[int, ...]] = {"wte.weight": (V, D)}
    if config.pos_emb == "learned":
        shapes["wpe.weight"] = (P, D)

    def linear(name, d_in, d_out):
        shapes[f"{name}.weight"] = (d_in, d_out)
        if config.bias:
            shapes[f"{name}.bias"] = (d_out,)

    def layer_norm(name):
        shapes[f"{name}.weight"] = (D,)
        if config.bias and config.norm == "layernorm":
            shapes[f"{name}.bias"] = (D,)

    for i in range(config.n_layer):
        layer_norm(f"h.{i}.ln_1")
        linear(f"h.{i}.attn.c_attn", D, 3 * D)
        if config.qk_norm:
            shapes[f"h.{i}.attn.q_norm.weight"] = (K,)
            shapes[f"h.{i}.attn.k_norm.weight"] = (K,)
        linear(f"h.{i}.attn.c_proj", D, D)
        layer_norm(f"h.{i}.ln_2")
        linear(f"h.{i}.mlp.c_fc", D, F)
        if config.mlp == "swiglu":
            linear(f"h.{i}.mlp.c_gate", D, F)
        linear(f"h.{i}.mlp.c_proj", F, D)
    layer_norm("ln_f")
    if not config.tie_embeddings:
        shapes["lm_head.weight"] = (V, D)  # a Linear in GPT-2 too: (out, in)
        if config.bias:
            shapes["lm_head.bias"] = (V,)
    return shapes


def _strip_prefix(state: Mapping[str, Any]) -> Dict[str, Any]:
    out = {}
    for key, value in state.items():
        short = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        if short in out:
            raise PretrainedError(f"state dict has both {short!r} and {_PREFIX + short!r}")
        out[short] = value
    return out


def gpt2_state_to_params(state: Mapping[str, Any], config: GPTConfig) -> Dict[str, Any]:
    """GPT-2 state dict in Conv1D layout (numpy-convertible values) -> Flax params of numpy float32.

    Keys may carry the `transformer.` prefix. `h.i.attn.bias`/`masked_bias` buffers are ignored.
    With tied embeddings `lm_head.weight` may be absent; if present it must equal `wte.weight`.
    Raises PretrainedError naming missing/unexpected keys or the first shape mismatch.
    """
    state = _strip_prefix(state)
    state = {k: v for k, v in state.items() if not _BUFFER_RE.match(k)}
    if config.tie_embeddings and "lm_head.weight" in state:
        head = np.asarray(state.pop("lm_head.weight"))
        wte = np.asarray(state["wte.weight"]) if "wte.weight" in state else head  # no wte: reported as missing below
        if head.shape != wte.shape or not np.array_equal(head, wte):
            raise PretrainedError(
                "lm_head.weight differs from wte.weight but GPTConfig.tie_embeddings=True"
            )
    expected = _expected_shapes(config)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise PretrainedError(
            f"state dict does not match {_describe(config)}: missing keys {missing}, "
            f"unexpected keys {unexpected}"
        )
    arrays = {}
    for key, shape in expected.items():
        # float32 always; a copy, so params never alias torch tensors or an mmapped file.
        value = np.array(state[key], dtype=np.float32, copy=True)
        if value.shape != shape:
            raise PretrainedError(
                f"{key} has shape {value.shape}, expected {shape} for {_describe(config)}"
            )
        arrays[key] = value

    H, K, D = config.n_head, config.head_dim, config.n_embd

    def dense(name, kernel_shape=None, bias_shape=None):
        kernel = arrays[f"{name}.weight"]
        leaf = {"kernel": kernel if kernel_shape is None else kernel.reshape(kernel_shape)}
        if config.bias:
            bias = arrays[f"{name}.bias"]
            leaf["bias"] = bias if bias_shape is None else bias.reshape(bias_shape)
        return leaf

    def layer_norm(name):
        leaf = {"scale": arrays[f"{name}.weight"]}
        if config.bias and config.norm == "layernorm":
            leaf["bias"] = arrays[f"{name}.bias"]
        return leaf

    params: Dict[str, Any] = {"wte": {"embedding": arrays["wte.weight"]}}
    if config.pos_emb == "learned":
        params["wpe"] = {"embedding": arrays["wpe.weight"]}
    for i in range(config.n_layer):
        p = f"h.{i}"
        # Output features of c_attn are [q | k | v], each heads-major: (3, H, K).
        attn = {"c_attn": dense(f"{p}.attn.c_attn", (D, 3, H, K), (3, H, K)),
                "c_proj": dense(f"{p}.attn.c_proj", (H, K, D))}
        if config.qk_norm:
            attn["q_norm"] = {"scale": arrays[f"{p}.attn.q_norm.weight"]}
            attn["k_norm"] = {"scale": arrays[f"{p}.attn.k_norm.weight"]}
        mlp = {"c_fc": dense(f"{p}.mlp.c_fc"), "c_proj": dense(f"{p}.mlp.c_proj")}
        if config.mlp == "swiglu":
            mlp["c_gate"] = dense(f"{p}.mlp.c_gate")
        params[f"h_{i}"] = {
            "ln_1": layer_norm(f"{p}.ln_1"),
            "attn": attn,
            "ln_2": layer_norm(f"{p}.ln_2"),
            "mlp": mlp,
        }
    params["ln_f"] = layer_norm("ln_f")
    if not config.tie_embeddings:
        head = {"kernel": arrays["lm_head.weight"].T}
        if config.bias:
            head["bias"] = arrays["lm_head.bias"]
        params["lm_head"] = head
    return params


def params_to_gpt2_state(params: Mapping[str, Any], config: GPTConfig,
                         prefix: str = _PREFIX) -> Dict[str, np.ndarray]:
    """Flax params -> GPT-2 state dict in Conv1D layout (numpy), keys with `prefix`.

    `lm_head.weight` is always present; with tied embeddings it is a copy of `wte.weight`
    (as in GPT2LMHeadModel.state_dict()). The exact inverse of `gpt2_state_to_params`.
    """
    D, F = config.n_embd, config.mlp_hidden_dim
    expected_top = {"wte", "ln_f", *(f"h_{i}" for i in range(config.n_layer))}
    if config.pos_emb == "learned":
        expected_top.add("wpe")
    if not config.tie_embeddings:
        expected_top.add("lm_head")
    if set(params) != expected_top:
        raise PretrainedError(
            f"params do not match {_describe(config)}: missing {sorted(expected_top - set(params))}, "
            f"unexpected {sorted(set(params) - expected_top)}"
        )
    a = lambda x: np.array(x, dtype=np.float32, copy=True)  # noqa: E731  (never alias params)
    state: Dict[str, np.ndarray] = {}

    def dense(name, leaf, kernel_shape, bias_shape):
        state[f"{name}.weight"] = a(leaf["kernel"]).reshape(kernel_shape)
        if config.bias:
            state[f"{name}.bias"] = a(leaf["bias"]).reshape(bias_shape)

    def layer_norm(name, leaf):
        state[f"{name}.weight"] = a(leaf["scale"])
        if config.bias and config.norm == "layernorm":
            state[f"{name}.bias"] = a(leaf["bias"])

    state["wte.weight"] = a(params["wte"]["embedding"])
    if config.pos_emb == "learned":
        state["wpe.weight"] = a(params["wpe"]["embedding"])
    for i in range(config.n_layer):
        p, block = f"h.{i}", params[f"h_{i}"]
        layer_norm(f"{p}.ln_1", block["ln_1"])
        dense(f"{p}.attn.c_attn", block["attn"]["c_attn"], (D, 3 * D), (3 * D,))
        if config.qk_norm:
            state[f"{p}.attn.q_norm.weight"] = a(block["attn"]["q_norm"]["scale"])
            state[f"{p}.attn.k_norm.weight"] = a(block["attn"]["k_norm"]["scale"])
        dense(f"{p}.attn.c_proj", block["attn"]["c_proj"], (D, D), (D,))
        layer_norm(f"{p}.ln_2", block["ln_2"])
        dense(f"{p}.mlp.c_fc", block["mlp"]["c_fc"], (D, F), (F,))
        if config.mlp == "swiglu":
            dense(f"{p}.mlp.c_gate", block["mlp"]["c_gate"], (D, F), (F,))
        dense(f"{p}.mlp.c_proj", block["mlp"]["c_proj"], (F, D), (D,))
    layer_norm("ln_f", params["ln_f"])
    if config.tie_embeddings:
        state["lm_head.weight"] = state["wte.weight"].copy()
    else:
        state["lm_head.weight"] = a(params["lm_head"]["kernel"]).T.copy()
        if config.bias:
            state["lm_head.bias"] = a(params["lm_head"]["bias"])
    expected = _expected_shapes(config.replace(tie_embeddings=False))
    for key, value in state.items():
        if value.shape != expected[key]:
            raise PretrainedError(f"params give {key} shape {value.shape}, expected {expected[key]}")
    return {(prefix + k if k.startswith(("wte", "wpe", "h.", "ln_f")) else k): v
            for k, v in state.items()}


def _describe(config: GPTConfig) -> str:
    return (f"GPTConfig(n_layer={config.n_layer}, n_head={config.n_head}, n_embd={config.n_embd}, "
            f"vocab_size={config.vocab_size}, block_size={config.block_size}, bias={config.bias}, "
            f"tie_embeddings={config.tie_embeddings}{_describe_switches(config)})")


def _describe_switches(config: GPTConfig) -> str:
    """', pos_emb=..., ...' for the architecture switches that differ from GPT-2 (else '')."""
    gpt2 = GPTConfig()
    switches = ("pos_emb", "norm", "mlp", "qk_norm", "logit_softcap")
    return "".join(f", {name}={getattr(config, name)!r}" for name in switches if getattr(config, name) != getattr(gpt2, name))


# ----------------------------------------------------------------------------------------------
# Hugging Face checkpoint directories and hub names.


def config_from_hf(hf: Mapping[str, Any], tie_embeddings: bool = True) -> GPTConfig:
    """GPTConfig from a Hugging Face GPT-2 config.json dict (HF defaults where GPT2Config has them)."""
    model_type = hf.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise PretrainedError(f"config.json model_type={model_type!r} is not 'gpt2'")
    for key in ("n_embd", "n_layer", "n_head", "vocab_size"):
        if key not in hf:
            raise PretrainedError(f"config.json lacks {key!r}")
    positions = hf.get("n_positions", hf.get("n_ctx"))
    if positions is None:
        raise PretrainedError("config.json lacks 'n_positions' (or 'n_ctx')")
    activation = hf.get("activation_function", "gelu_new")
    if activation not in _HF_GELU:
        raise PretrainedError(
            f"config.json activation_function={activation!r} is not supported "
            f"(one of {sorted(_HF_GELU)})"
        )
    n_inner = hf.get("n_inner")
    if n_inner is not None and n_inner != 4 * hf["n_embd"]:
        raise PretrainedError(f"config.json n_inner={n_inner} is not 4 * n_embd; not supported")
    if hf.get("scale_attn_weights", True) is not True or hf.get("scale_attn_by_inverse_layer_idx", False):
        raise PretrainedError("config.json changes attention scaling; only GPT-2's 1/sqrt(head_dim) is supported")
    return GPTConfig(
        vocab_size=hf["vocab_size"], block_size=positions, n_layer=hf["n_layer"],
        n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=0.0, bias=True,
        gelu=_HF_GELU[activation], tie_embeddings=tie_embeddings,
        layer_norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)),
    )


def _read_state(directory: Path) -> Dict[str, np.ndarray]:
    safetensors_path = directory / "model.safetensors"
    bin_path = directory / "pytorch_model.bin"
    if safetensors_path.is_file():
        return dict(load_file(str(safetensors_path)))
    if bin_path.is_file():
        # optional and heavy: only for pickled pytorch_model.bin checkpoints
        torch = require("torch", f"reading {bin_path} (a pickled torch checkpoint)",
                        alternative="or convert it to model.safetensors")
        state = torch.load(str(bin_path), map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise PretrainedError(f"{bin_path} does not hold a state dict (got {type(state).__name__})")
        return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy()
                for k, v in state.items()}
    raise PretrainedNotFoundError(
        f"{directory} has neither model.safetensors nor pytorch_model.bin"
    )


def _download(name: str) -> Path:
    hint = "pass a local directory with config.json and model.safetensors instead"
    huggingface_hub = require("huggingface_hub", f"downloading {name!r} from the Hugging Face hub",
                              alternative=f"or {hint}")  # optional: only to download a hub name
    repo_id = name if "/" in name else f"{HUB_ORG}/{name}"
    try:
        path = huggingface_hub.snapshot_download(
            repo_id=repo_id, allow_patterns=["config.json", "model.safetensors"]
        )
    except Exception as exc:  # offline, DNS, HTTP, cache errors all mean the same thing here
        raise PretrainedDownloadError(
            f"could not download {name!r} (no network?): {type(exc).__name__}: {exc}; {hint}"
        ) from exc
    return Path(path)


def _resolve(source) -> Path:
    path = Path(os.fspath(source)).expanduser()
    if path.is_dir():
        return path
    name = os.fspath(source)
    short = name[len(HUB_ORG) + 1:] if name.startswith(HUB_ORG + "/") else name
    if short in HUB_NAMES:
        return _download(name)
    raise PretrainedNotFoundError(
        f"{name!r} is neither a checkpoint directory (config.json + model.safetensors or "
        f"pytorch_model.bin) nor a known hub name {HUB_NAMES}"
    )


def load_pretrained(source, **config_overrides) -> Tuple[GPTConfig, Dict[str, Any]]:
    """Load a GPT-2 checkpoint: `source` is an HF checkpoint directory or a hub name.

    Returns (GPTConfig, params) with float32 jax arrays. Embeddings are tied unless the checkpoint's
    lm_head.weight differs from wte.weight (or config.json says tie_word_embeddings=false); an
    untied head gets a zero bias since GPT-2's lm_head has none. config_overrides may set
    dropout, compute_dtype, attn_impl, remat, and block_size (<= n_positions: crops wpe).
    """
    bad = sorted(set(config_overrides) - set(OVERRIDABLE))
    if bad:
        raise ValueError(f"load_pretrained cannot override {bad}; only {OVERRIDABLE}")
    directory = _resolve(source)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise PretrainedNotFoundError(f"{directory} has no config.json")
    try:
        hf = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise PretrainedError(f"{config_path} is not valid JSON: {exc}") from exc
    state = _strip_prefix(_read_state(directory))
    head = state.get("lm_head.weight")
    wte = state.get("wte.weight")
    tied = hf.get("tie_word_embeddings", True)
    if tied and head is not None and wte is not None:
        tied = np.shape(head) == np.shape(wte) and np.array_equal(head, wte)
    config = config_from_hf(hf, tie_embeddings=bool(tied))
    if not config.tie_embeddings and config.bias and "lm_head.bias" not in state:
        state["lm_head.bias"] = np.zeros((config.vocab_size,), np.float32)

    block_size = config_overrides.pop("block_size", config.block_size)
    if isinstance(block_size, bool) or not isinstance(block_size, int) or not (
        0 < block_size <= config.block_size
    ):
        raise ValueError(
            f"block_size must be a positive int <= the checkpoint's n_positions={config.block_size}, "
            f"got {block_size!r}"
        )
    params, config = crop_block_size(gpt2_state_to_params(state, config), config, block_size)
    config = config.replace(**config_overrides)
    return config, _to_jax(params)


def _to_jax(tree):
    if isinstance(tree, Mapping):
        return {k: _to_jax(v) for k, v in tree.items()}
    return jnp.asarray(tree)
