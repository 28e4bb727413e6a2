"""The `jaxgpt` command (`pip install jaxgpt` installs it) and `python -m jaxgpt`: one verb, then that
verb's nanoGPT-style command line.

    jaxgpt train shakespeare_char --max_iters=500     # a built-in config by name, or a config file's path
    jaxgpt sample --out_dir=out-shakespeare-char
    jaxgpt --help                                      # the verbs; `jaxgpt VERB --help`: the verb's keys

VERBS maps each verb to "module:function", imported only when the verb runs (so `jaxgpt --help`
answers without loading jax, and a verb whose module is missing breaks no other). The function
takes the arguments after the verb and runs under jaxgpt.cli.main_guard: bad input is one line and
exit code 2. The checkout's scripts (train.py, sample.py, ...) call the same functions.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Callable, Dict, Optional, Sequence, Tuple

from jaxgpt.cli import COMMAND, CLIError, main_guard

# verb -> (its command line's "module:function", one line for `jaxgpt --help`)
VERBS: Dict[str, Tuple[str, str]] = {
    "train": ("jaxgpt.train.cli:main", "train a GPT (nanoGPT's train.py; e.g. jaxgpt train shakespeare_char)"),
    "finetune": ("jaxgpt.finetune.cli:main", "fine-tune a trained GPT: classification or instructions"),
    "sample": ("jaxgpt.sample.cli:main", "generate text from a trained run or a GPT-2 checkpoint"),
    "sweep": ("jaxgpt.scale.cli:main", "run a scaling sweep and fit scaling laws (e.g. jaxgpt sweep sweep_cpu)"),
    "bench": ("jaxgpt.bench.cli:main", "benchmarks: decoding and training speed, against PyTorch when installed"),
    "viz": ("jaxgpt.viz.figures:main", "draw a run's figures (loss curves, attention, ...)"),
    "export": ("jaxgpt.export.cli:main", "export a trained run to a Hugging Face transformers directory"),
    "prepare": ("jaxgpt.data.store_cli:main", "tokenize a large corpus into a sharded token store"),
}

# Set before the verb's module (and numpy) loads, when the user has not set them.
VERB_ENVIRONMENT: Dict[str, Dict[str, str]] = {
    # The fits' L-BFGS hands tiny matrices to scipy's OpenBLAS, whose spinning worker threads made them
    # 5-18x slower on a busy machine; OpenBLAS reads this once, when numpy first loads it.
    "sweep": {"OPENBLAS_NUM_THREADS": "1"},
}


def usage() -> str:
    width = max(len(verb) for verb in VERBS) + 2
    lines = ["usage: jaxgpt VERB [config ...] [--key=value ...]", "",
             "A GPT from scratch in pure-functional JAX/Flax. Verbs:"]
    lines += [f"  {verb:<{width}}{summary}" for verb, (_, summary) in VERBS.items()]
    lines += ["", "jaxgpt VERB --help lists the verb's keys and the built-in configs."]
    return "\n".join(lines)


def verb_function(verb: str) -> Callable[[Sequence[str]], object]:
    """The verb's main(argv), imported now."""
    if verb not in VERBS:
        raise CLIError(f"unknown verb {verb!r}: jaxgpt {'|'.join(VERBS)} (see jaxgpt --help)")
    module_name, function = VERBS[verb][0].split(":")
    for key, value in VERB_ENVIRONMENT.get(verb, {}).items():
        os.environ.setdefault(key, value)
    # registers --model=bigram's family, as the scripts do (here, not at the top: --help loads no jax)
    import jaxgpt.course.bigram  # noqa: F401

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not module_name.startswith(exc.name):
            raise  # a module the verb's module imports: its own error (or a MissingDependency) says more
        raise CLIError(f"jaxgpt {verb} is not in this install of jaxgpt (no module {exc.name})") from None
    return getattr(module, function)


def installed_version() -> str:
    try:
        return version("jaxgpt")
    except PackageNotFoundError:  # a checkout on sys.path, not installed
        return "(not installed: running from a source tree)"


def dispatch(argv: Sequence[str]) -> None:
    """`jaxgpt VERB ARGS...`: ARGS run through the verb's main(argv)."""
    if not argv:
        raise CLIError(f"give a verb: jaxgpt {'|'.join(VERBS)} (see jaxgpt --help)")
    verb, args = argv[0], list(argv[1:])
    if verb in ("-h", "--help", "help"):
        print(usage())
        return
    if verb == "--version":
        print(f"jaxgpt {installed_version()}")
        return
    main = verb_function(verb)
    token = COMMAND.set(f"jaxgpt {verb}")  # --help's usage line names the command the user typed
    try:
        main(args)
    finally:
        COMMAND.reset(token)


def main(argv: Optional[Sequence[str]] = None) -> None:
    """The console script's entry (pyproject's [project.scripts])."""
    main_guard(dispatch, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
