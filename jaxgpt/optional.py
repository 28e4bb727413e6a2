"""Optional packages: the one place that imports a package jaxgpt does not depend on, or says in one
line what to install.

    torch = require("torch", "the PyTorch comparison rows of bench")

raises `MissingDependency` (an ImportError) when the import fails; the command lines' guard
(jaxgpt.cli.main_guard) prints its message and exits 2. Each package's install command names the
extra of pyproject.toml that carries it, so a user installs what the feature needs and no more.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

# The pip requirement that installs each optional package (pyproject.toml's extras).
INSTALL = {
    "torch": "torch",  # bench's comparisons say jaxgpt[bench] (torch and transformers)
    "transformers": "jaxgpt[hf]",
    "huggingface_hub": "jaxgpt[hf]",
    "tensorboardX": "jaxgpt[track]",
    "wandb": "jaxgpt[track]",
    "datasets": "jaxgpt[data]",
}


class MissingDependency(ImportError):
    """An optional package a feature needs is not installed: one line naming the feature, the
    package and the pip command."""


def install_hint(package: str, install: Optional[str] = None) -> str:
    return f"pip install '{install or INSTALL.get(package, package)}'"


def require(package: str, purpose: str, alternative: Optional[str] = None,
            install: Optional[str] = None) -> ModuleType:
    """`import package`, or MissingDependency: "<purpose> needs <package>: pip install '...'".

    alternative: what else the user can do instead (e.g. "or pass a local directory");
    install: the pip requirement to name, when not INSTALL's (e.g. "jaxgpt[bench]").
    Any ImportError counts, not only a missing package: a broken install is as unusable."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        message = f"{purpose} needs {package}: {install_hint(package, install)}"
        raise MissingDependency(f"{message} ({alternative})" if alternative else message,
                                name=package) from exc


def available(package: str) -> bool:
    """Whether `import package` works (it imports it: a later import costs nothing)."""
    try:
        importlib.import_module(package)
    except ImportError:
        return False
    return True
