"""The PyTorch twin, under the name the parity tests import it by: it lives in jaxgpt/bench/torch_twin.py
(shipped in the package for `jaxgpt bench`); this module re-exports its public names."""

from jaxgpt.bench.torch_twin import (Block, CausalSelfAttention, MLP, RotaryEmbedding, TorchGPT,
                                     apply_rotary_pos_emb, configure_optimizer, flax_to_torch, rotate_half,
                                     torch_to_flax)

__all__ = ["Block", "CausalSelfAttention", "MLP", "RotaryEmbedding", "TorchGPT", "apply_rotary_pos_emb",
           "configure_optimizer", "flax_to_torch", "rotate_half", "torch_to_flax"]
