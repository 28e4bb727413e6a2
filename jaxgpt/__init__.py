"""jaxgpt: a GPT from scratch in pure-functional JAX/Flax."""

from jaxgpt.config import GPTConfig
from jaxgpt.model import GPT, cross_entropy_loss, init_kv_cache

__all__ = ["GPT", "GPTConfig", "cross_entropy_loss", "init_kv_cache"]
