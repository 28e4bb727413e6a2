"""The registry of model families: what the core asks of a kind of model, by its name.

A run's options name a family (`--model=gpt`), and so does a checkpoint's model config (its "model"
key; a GPTConfig has none: "gpt"). The core asks the family, never the name:

  - `config_from_dict(values)`: the model config a checkpoint recorded (config.to_dict());
  - `module_for(config)`: the flax module of a config;
and, where a family has its own path instead of the core's (None: the core's own, the GPT's):
  - `config_from_options(options, vocab_size)`: the model config of a run's options (jaxgpt.train.loop);
  - `language_modeling(options, config, data, pretrained) -> (Task, notes)`: pretraining's task and
    the lines the loop prints before training (jaxgpt.train.loop);
  - `generate`, `generate_stream`: sampling, with jaxgpt.sample.decode's arguments;
  - `check_init_from(init_from)`: refuse, before any weights are read, an --init_from (a hub name
    or a directory) the family cannot start from (jaxgpt.train.loop).

The GPT registers itself here. Other families register when their module is imported: the course's
bigram (jaxgpt.course.bigram) is one, and the core never imports it; the entry points (train.py,
sample.py, finetune.py, `python -m jaxgpt.viz`) do.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional

from jaxgpt.cli import ConfigError
from jaxgpt.model.config import GPTConfig
from jaxgpt.model.gpt import GPT

__all__ = ["ModelFamily", "UnknownModelFamily", "register_family", "family_for", "family_name", "registered_families",
           "GPT_FAMILY", "DEFAULT_FAMILY"]

DEFAULT_FAMILY = "gpt"  # a config, or a checkpoint's config dict, that names no family is a GPT's

# Families the core knows by name only, with the module that registers each: the fix an error names.
PLUGIN_MODULES = {"bigram": "jaxgpt.course.bigram"}


class UnknownModelFamily(ConfigError):
    """A family name nothing registered (its module was not imported)."""


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """What the core asks of one kind of model (see the module docstring); hooks left None take
    the core's own path, which is the GPT's."""
    config_from_dict: Callable[[Dict[str, Any]], Any]
    module_for: Callable[[Any], Any]
    config_from_options: Optional[Callable[[Any, int], Any]] = None
    language_modeling: Optional[Callable[..., Any]] = None
    generate: Optional[Callable[..., Any]] = None
    generate_stream: Optional[Callable[..., Any]] = None
    check_init_from: Optional[Callable[[str], None]] = None


_REGISTRY: Dict[str, ModelFamily] = {}


def register_family(name: str, family: ModelFamily) -> None:
    """Make `family` the one `name` selects; registering a name again replaces it (a reloaded module)."""
    if not isinstance(family, ModelFamily):
        raise TypeError(f"register_family needs a ModelFamily, got {type(family).__name__}")
    _REGISTRY[name] = family


def registered_families() -> Dict[str, ModelFamily]:
    """{name: family} of every family registered so far."""
    return dict(_REGISTRY)


def family_name(name_or_config) -> str:
    """The family a name, a model config (its `model` attribute) or a config dict (its "model" key) names."""
    if isinstance(name_or_config, str):
        return name_or_config
    if isinstance(name_or_config, Mapping):
        return name_or_config.get("model", DEFAULT_FAMILY)
    return getattr(name_or_config, "model", DEFAULT_FAMILY)


def family_for(name_or_config) -> ModelFamily:
    """The registered family of a name, a model config or a checkpoint's config dict; an unregistered
    one raises UnknownModelFamily naming the import that registers it."""
    name = family_name(name_or_config)
    family = _REGISTRY.get(name)
    if family is None:
        if name in PLUGIN_MODULES:
            raise UnknownModelFamily(f"model family {name!r} is not registered: import {PLUGIN_MODULES[name]}")
        raise UnknownModelFamily(f"model family {name!r} is not registered (registered: {sorted(_REGISTRY)})")
    return family


# The GPT: its config and module here; its run options, pretraining task and sampler are the core's own.
GPT_FAMILY = ModelFamily(config_from_dict=GPTConfig.from_dict, module_for=GPT)
register_family(DEFAULT_FAMILY, GPT_FAMILY)
