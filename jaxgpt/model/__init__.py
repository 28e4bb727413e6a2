"""The model: its config, the GPT module, the CPU backward passes, LoRA adapters and GPT-2 weight import.

Depends on nothing else in jaxgpt but `jaxgpt.cli` (for ConfigError)."""
