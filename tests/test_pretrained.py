"""load_pretrained on small random GPT-2 checkpoints written here in Hugging Face format
(config.json + model.safetensors / pytorch_model.bin, Conv1D layout, HF key names and buffers),
checked against the PyTorch twin loaded from the same file. No network: hub downloads are faked."""

from __future__ import annotations

import functools
import json
import sys
import types

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch

from jaxgpt.model.config import GPTConfig
from jaxgpt.model.gpt import GPT
from jaxgpt.model.pretrained import (PretrainedDownloadError, PretrainedError, PretrainedNotFoundError,
                               load_pretrained)
from jaxgpt.optional import MissingDependency
from reference.torch_twin import TorchGPT
from torch_helpers import random_tokens, random_torch_model

HF_CONFIG = {  # the keys a real GPT-2 config.json has, at toy sizes
    "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": 71,
    "n_positions": 16, "n_ctx": 16, "n_embd": 32, "n_layer": 2, "n_head": 4,
    "activation_function": "gelu_new", "layer_norm_epsilon": 1e-05, "resid_pdrop": 0.1,
    "embd_pdrop": 0.1, "attn_pdrop": 0.1, "initializer_range": 0.02, "bos_token_id": 70,
    "eos_token_id": 70, "n_inner": None, "scale_attn_weights": True,
}
# Written out here rather than imported, so the test does not share the library's mapping.
_CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
LOGITS_TOL = 1e-5  # |dlogit| <= 1e-5 * max(1, |logit|): float32, XLA vs MKL (measured ~5e-6)


def hf_state_from_twin(twin: TorchGPT, prefix: bool, lm_head: bool, buffers: bool) -> dict:
    """The twin's weights the way GPT2LMHeadModel stores them: Conv1D (in, out) for the four
    projections, names without `transformer.` unless prefix, causal-mask buffers if asked."""
    cfg = twin.config
    state = {}
    for key, tensor in twin.state_dict().items():
        array = tensor.detach().numpy().copy()
        if key.startswith("lm_head."):
            if lm_head:
                state[key] = array
            continue
        short = key[len("transformer."):]
        state[("transformer." if prefix else "") + short] = array.T.copy() if short.endswith(_CONV1D) else array
    if buffers:
        P = cfg.block_size
        for i in range(cfg.n_layer):
            state[f"{'transformer.' if prefix else ''}h.{i}.attn.bias"] = np.tril(np.ones((P, P), np.float32))[None, None]
            state[f"{'transformer.' if prefix else ''}h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    return state


def twin_from_hf_state(state: dict, cfg: GPTConfig) -> TorchGPT:
    """Independent inverse, for the reference side: strip prefix, drop buffers, transpose."""
    twin = TorchGPT(cfg)
    sd = {}
    for key, array in state.items():
        short = key[len("transformer."):] if key.startswith("transformer.") else key
        if short.endswith(("attn.bias", "attn.masked_bias")) and ".c_" not in short:
            continue
        name = short if short.startswith("lm_head") else "transformer." + short
        tensor = torch.from_numpy(np.ascontiguousarray(array.T if short.endswith(_CONV1D) else array))
        sd[name] = tensor
    if cfg.tie_embeddings:
        sd["lm_head.weight"] = sd["transformer.wte.weight"]
    elif cfg.bias and "lm_head.bias" not in sd:
        sd["lm_head.bias"] = torch.zeros(cfg.vocab_size)  # GPT-2's head has no bias
    twin.load_state_dict(sd, strict=True)
    return twin.eval()


def write_checkpoint(directory, hf_config: dict, state: dict, fmt: str = "safetensors"):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(hf_config))
    if fmt == "safetensors":
        safetensors.numpy.save_file(state, str(directory / "model.safetensors"))
    else:
        torch.save({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()},
                   str(directory / "pytorch_model.bin"))
    return directory


def _expected_config(hf: dict, tied: bool) -> GPTConfig:
    return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                     n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=0.0, bias=True,
                     gelu="tanh" if hf["activation_function"] == "gelu_new" else "exact",
                     tie_embeddings=tied, layer_norm_eps=hf["layer_norm_epsilon"])


@functools.lru_cache(maxsize=None)
def _forward(cfg: GPTConfig):
    return jax.jit(lambda params, idx: GPT(cfg).apply({"params": params}, idx))


VARIANTS = {
    # name: (file format, transformer. prefix, explicit lm_head, lm_head differs, config changes)
    "safetensors-tied-buffers": ("safetensors", False, False, False, {}),
    "bin-tied-buffers": ("bin", False, False, False, {}),
    "safetensors-prefix-explicit-lm_head-exact-gelu": (
        "safetensors", True, True, False, {"activation_function": "gelu", "layer_norm_epsilon": 1e-6}),
    "safetensors-untied-head": ("safetensors", False, True, True, {}),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_load_pretrained_matches_twin_from_same_file(tmp_path, variant):
    fmt, prefix, lm_head, untied, changes = VARIANTS[variant]
    hf = {**HF_CONFIG, **changes}
    cfg = _expected_config(hf, tied=not untied)
    source_twin = random_torch_model(cfg, seed=len(variant))
    if untied:
        with torch.no_grad():
            source_twin.lm_head.bias.zero_()  # the HF file has no head bias to carry it
    state = hf_state_from_twin(source_twin, prefix=prefix, lm_head=lm_head, buffers=True)
    if untied:
        del state["lm_head.bias"]
    directory = write_checkpoint(tmp_path / variant, hf, state, fmt)

    loaded_cfg, params = load_pretrained(directory)
    assert loaded_cfg == cfg
    assert all(leaf.dtype == np.float32 for leaf in jax.tree_util.tree_leaves(params))

    reread = (safetensors.numpy.load_file(str(directory / "model.safetensors")) if fmt == "safetensors"
              else {k: v.numpy() for k, v in torch.load(str(directory / "pytorch_model.bin"),
                                                         weights_only=True).items()})
    twin = twin_from_hf_state(reread, cfg)
    idx = random_tokens(cfg, (2, cfg.block_size), seed=1)
    logits = np.asarray(_forward(loaded_cfg)(params, idx))
    with torch.no_grad():
        t_logits = twin(torch.from_numpy(idx).long())[0].numpy()
    assert np.max(np.abs(t_logits)) > 1.0
    excess = np.abs(logits - t_logits) - LOGITS_TOL * np.maximum(1.0, np.abs(t_logits))
    assert np.max(excess) <= 0, np.max(np.abs(logits - t_logits))


@pytest.fixture
def checkpoint(tmp_path):
    cfg = _expected_config(HF_CONFIG, tied=True)
    state = hf_state_from_twin(random_torch_model(cfg, seed=3), prefix=False, lm_head=False, buffers=True)
    return write_checkpoint(tmp_path / "ckpt", HF_CONFIG, state), state


def test_overrides_crop_block_size_and_set_runtime_fields(checkpoint):
    directory, state = checkpoint
    cfg, params = load_pretrained(directory, block_size=8, dropout=0.1, compute_dtype="bfloat16")
    assert (cfg.block_size, cfg.dropout, cfg.compute_dtype) == (8, 0.1, "bfloat16")
    np.testing.assert_array_equal(params["wpe"]["embedding"], state["wpe.weight"][:8])
    with pytest.raises(ValueError, match="n_embd"):
        load_pretrained(directory, n_embd=64)
    with pytest.raises(ValueError, match="block_size"):
        load_pretrained(directory, block_size=17)


def test_safetensors_path_never_imports_torch(checkpoint, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # any `import torch` now raises ImportError
    cfg, params = load_pretrained(checkpoint[0])
    assert params["h_1"]["attn"]["c_attn"]["kernel"].shape == (32, 3, 4, 8)


def test_bin_without_torch_says_torch_is_needed(tmp_path, monkeypatch):
    cfg = _expected_config(HF_CONFIG, tied=True)
    state = hf_state_from_twin(random_torch_model(cfg), prefix=False, lm_head=False, buffers=False)
    directory = write_checkpoint(tmp_path / "bin", HF_CONFIG, state, fmt="bin")
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependency, match=r"pytorch_model\.bin \(a pickled torch checkpoint\) needs torch"):
        load_pretrained(directory)


def test_shape_mismatch_names_the_tensor(checkpoint):
    directory, state = checkpoint
    (directory / "config.json").write_text(json.dumps({**HF_CONFIG, "n_embd": 48}))
    with pytest.raises(PretrainedError, match=r"wte\.weight has shape \(71, 32\), expected \(71, 48\)"):
        load_pretrained(directory)


def test_missing_and_unexpected_keys_are_named(checkpoint):
    directory, state = checkpoint
    state = dict(state)
    del state["h.1.mlp.c_fc.bias"]
    state["h.1.mlp.extra.weight"] = np.zeros(3, np.float32)
    safetensors.numpy.save_file(state, str(directory / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing keys \['h\.1\.mlp\.c_fc\.bias'\].*h\.1\.mlp\.extra\.weight"):
        load_pretrained(directory)


def test_unsupported_activation_is_named(checkpoint):
    directory, _ = checkpoint
    (directory / "config.json").write_text(json.dumps({**HF_CONFIG, "activation_function": "relu"}))
    with pytest.raises(ValueError, match="activation_function='relu'"):
        load_pretrained(directory)


def test_missing_directory_or_files_or_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_pretrained(tmp_path / "nowhere")
    with pytest.raises(PretrainedNotFoundError, match="known hub name"):
        load_pretrained("gpt3-ultra")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_pretrained(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps(HF_CONFIG))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_pretrained(tmp_path / "empty")


def test_hub_name_without_huggingface_hub_fails_fast_with_the_directory_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(MissingDependency, match="local directory with config.json") as info:
        load_pretrained("gpt2")
    assert "downloading 'gpt2' from the Hugging Face hub needs huggingface_hub: pip install 'jaxgpt[hf]'" in str(
        info.value)


def _fake_hub(monkeypatch, snapshot_download):
    hub = types.ModuleType("huggingface_hub")
    hub.snapshot_download = snapshot_download
    monkeypatch.setitem(sys.modules, "huggingface_hub", hub)


def test_hub_name_offline_fails_with_the_directory_hint(monkeypatch):
    calls = []

    def offline(**kwargs):
        calls.append(kwargs)
        raise OSError("network is unreachable")

    _fake_hub(monkeypatch, offline)
    with pytest.raises(PretrainedDownloadError, match=r"could not download 'gpt2-medium' \(no network\?\)"):
        load_pretrained("gpt2-medium")
    assert calls == [{"repo_id": "openai-community/gpt2-medium",
                      "allow_patterns": ["config.json", "model.safetensors"]}]


def test_hub_name_loads_what_the_hub_returns(checkpoint, monkeypatch):
    directory, state = checkpoint
    _fake_hub(monkeypatch, lambda **kwargs: str(directory))
    cfg, params = load_pretrained("gpt2")
    assert cfg.n_layer == HF_CONFIG["n_layer"] and cfg.tie_embeddings
    np.testing.assert_array_equal(params["wte"]["embedding"], state["wte.weight"])
