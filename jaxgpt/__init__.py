"""jaxgpt: a GPT from scratch in pure-functional JAX/Flax.

    from jaxgpt import GPT, GPTConfig, generate, load_pretrained

The names load on first use (PEP 562's module __getattr__): `import jaxgpt` alone, which the
`jaxgpt` command and every `jaxgpt.*` import run first, loads no jax, so `jaxgpt --help` answers at
once and a verb can set its environment before numpy loads.
"""

import importlib
from typing import Any, List

# public name -> the module that defines it
_EXPORTS = {
    "GPT": "jaxgpt.model.gpt",
    "GPTConfig": "jaxgpt.model.config",
    "cross_entropy_loss": "jaxgpt.model.gpt",
    "generate": "jaxgpt.sample.decode",
    "generate_stream": "jaxgpt.sample.decode",
    "init_kv_cache": "jaxgpt.model.gpt",
    "load_pretrained": "jaxgpt.model.pretrained",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jaxgpt' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> List[str]:
    return sorted(set(__all__) | {name for name in globals() if name.startswith("__")})
