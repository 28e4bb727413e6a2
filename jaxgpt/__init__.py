"""jaxgpt: a GPT from scratch in pure-functional JAX/Flax.

    from jaxgpt import GPT, GPTConfig, generate, load_pretrained
"""

from jaxgpt.model.config import GPTConfig
from jaxgpt.model.gpt import GPT, cross_entropy_loss, init_kv_cache
from jaxgpt.model.pretrained import load_pretrained
from jaxgpt.sample.decode import generate, generate_stream

__all__ = ["GPT", "GPTConfig", "cross_entropy_loss", "generate", "generate_stream", "init_kv_cache",
           "load_pretrained"]
