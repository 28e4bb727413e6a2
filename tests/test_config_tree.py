"""One config tree: the run configs declare GPTConfig's architecture keys from its fields, check them
with GPTConfig's checks (spelled as a command line spells keys), build the model section in one call,
and every run that starts from trained weights adopts them through one function."""

import dataclasses

import numpy as np
import pytest

from jaxgpt.cli import ConfigError
from jaxgpt.finetune.config import FinetuneConfig
from jaxgpt.model.config import ARCH_OPTIONS, BACKBONE_KEYS, COMPUTE_KEYS, GPTConfig, crop_block_size
from jaxgpt.train.config import (OPTIONS, TrainConfig, adopt_backbone, config_from_sources, options_of,
                                 read_run_options)


def test_run_configs_declare_every_architecture_key_from_gptconfig():
    gpt_fields = {f.name: f for f in dataclasses.fields(GPTConfig)}
    assert set(ARCH_OPTIONS) == set(gpt_fields) - {"vocab_size", "decode_chunk", "layer_norm_eps"}
    for cls in (TrainConfig, FinetuneConfig):
        options = options_of(cls)
        for key in ARCH_OPTIONS:
            assert key in options, (cls.__name__, key)
            assert options[key].choices == gpt_fields[key].metadata["choices"]
            if cls is TrainConfig:
                assert options[key].help == gpt_fields[key].metadata["help"]
    # the training defaults are a small model, not GPT-2 small; the others are GPTConfig's
    assert {k: OPTIONS[k].default for k in ("block_size", "n_layer", "n_head", "n_embd")} == {
        "block_size": 128, "n_layer": 4, "n_head": 4, "n_embd": 128}
    assert all(OPTIONS[k].default == gpt_fields[k].default for k in ARCH_OPTIONS
               if k not in ("block_size", "n_layer", "n_head", "n_embd"))


def test_every_option_says_who_decides_it_when_a_run_starts_from_trained_weights():
    # block_size is cropped; z_loss is left to the caller (GPTConfig.z_loss says why)
    assert not set(BACKBONE_KEYS) & set(COMPUTE_KEYS)
    assert sorted(BACKBONE_KEYS + COMPUTE_KEYS + ("block_size", "z_loss")) == sorted(ARCH_OPTIONS)


def test_the_model_section_is_the_architecture_keys():
    cfg = TrainConfig(n_layer=2, n_head=2, n_embd=64, block_size=32, pos_emb="rope", mlp="swiglu", qk_norm=True,
                      z_loss=1e-4, mup=True, mup_base_width=32, dropout=0.1)
    model = cfg.gpt_config(vocab_size=65)
    assert model.vocab_size == 65
    assert {k: getattr(model, k) for k in ARCH_OPTIONS} == {k: getattr(cfg, k) for k in ARCH_OPTIONS}
    assert (model.decode_chunk, model.layer_norm_eps) == (0, 1e-5)  # not run options: GPTConfig's defaults


def test_a_flat_run_config_json_still_reads_into_the_section():
    saved = {"n_layer": 3, "n_head": 2, "n_embd": 32, "block_size": 16, "norm": "rmsnorm", "dataset": "stdlib",
             "unknown_future_key": 1}
    cfg = config_from_sources({}, read_run_options(saved, "run_config.json"))
    assert cfg.gpt_config(10) == GPTConfig(vocab_size=10, n_layer=3, n_head=2, n_embd=32, block_size=16,
                                           norm="rmsnorm")
    assert cfg.run_options()["n_layer"] == 3 and "vocab_size" not in cfg.run_options()


@pytest.mark.parametrize("overrides, gpt_message, option_message", [
    (dict(n_embd=30, n_head=4), "GPTConfig.n_embd=30 is not divisible by n_head=4",
     "--n_embd=30 is not divisible by --n_head=4"),
    (dict(attn_impl="cudnn"), "GPTConfig.attn_impl='cudnn' needs compute_dtype='bfloat16'",
     "--attn_impl=cudnn needs --compute_dtype=bfloat16"),
    (dict(n_layer=0), "GPTConfig.n_layer must be a positive integer, got 0", "--n_layer must be >= 1, got 0"),
    (dict(mup_base_width=-8), "GPTConfig.mup_base_width must be a non-negative integer, got -8",
     "--mup_base_width must be >= 0, got -8"),
    (dict(dropout=1.0), "GPTConfig.dropout must be in [0, 1), got 1.0", "--dropout must be in [0, 1), got 1.0"),
    (dict(pos_emb="rope", n_embd=36, n_head=4), "GPTConfig.pos_emb='rope' needs an even head_dim",
     "--pos_emb=rope needs an even head_dim, got --n_embd=36 / --n_head=4 = 9"),
])
def test_one_check_per_key_spelled_for_each_caller(overrides, gpt_message, option_message):
    with pytest.raises(ValueError) as gpt_error:
        GPTConfig(**overrides)
    assert gpt_message in str(gpt_error.value) and not isinstance(gpt_error.value, ConfigError)
    with pytest.raises(ConfigError) as option_error:
        TrainConfig(**overrides)
    assert option_message in str(option_error.value)


def _learned_params(config: GPTConfig):
    rows = np.arange(config.block_size * config.n_embd, dtype=np.float32).reshape(config.block_size, config.n_embd)
    return {"wte": {"embedding": np.ones((config.vocab_size, config.n_embd), np.float32)},
            "wpe": {"embedding": rows}}


def test_crop_block_size_keeps_the_first_positions_and_changes_nothing_else():
    config = GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8)
    params = _learned_params(config)
    cropped, cropped_config = crop_block_size(params, config, 4)
    assert cropped_config == config.replace(block_size=4)
    np.testing.assert_array_equal(cropped["wpe"]["embedding"], params["wpe"]["embedding"][:4])
    assert cropped["wte"] is params["wte"] and params["wpe"]["embedding"].shape == (16, 8)  # the input is untouched
    assert crop_block_size(params, config, 16) == (params, config)
    rope = config.replace(pos_emb="rope")
    no_table = {"wte": params["wte"]}
    assert crop_block_size(no_table, rope, 4) == (no_table, rope.replace(block_size=4))
    with pytest.raises(ValueError, match="block_size=17"):
        crop_block_size(params, config, 17)


def test_adopt_backbone_takes_the_architecture_from_the_weights_and_the_computation_from_the_run():
    backbone = GPTConfig(vocab_size=11, block_size=16, n_layer=3, n_head=2, n_embd=8, bias=False, gelu="exact",
                         tie_embeddings=False, pos_emb="learned", rope_theta=500.0, norm="rmsnorm", mlp="swiglu",
                         qk_norm=True, mup=True, mup_base_width=4, z_loss=1e-3, layer_norm_eps=1e-6)
    run = FinetuneConfig(block_size=8, dropout=0.2, compute_dtype="bfloat16", attn_impl="explicit", remat=True)
    params = _learned_params(backbone)
    cfg, model, adopted = adopt_backbone(run, backbone, params)
    assert {k: getattr(cfg, k) for k in BACKBONE_KEYS} == {k: getattr(backbone, k) for k in BACKBONE_KEYS}
    assert isinstance(cfg, FinetuneConfig) and cfg.task == run.task
    assert model == backbone.replace(block_size=8, dropout=0.2, compute_dtype="bfloat16", attn_impl="explicit",
                                     remat=True)  # z_loss and layer_norm_eps stay the backbone's
    assert adopted["wpe"]["embedding"].shape == (8, 8)
    # the run config now records the model that runs (z_loss aside; layer_norm_eps is no run option)
    assert cfg.gpt_config(11) == model.replace(z_loss=run.z_loss, layer_norm_eps=1e-5)
