"""The project's command-line scripts, run inside the test process.

A script's main under jaxgpt.cli.main_guard, with sys.argv set, is what `python script.py ...`
runs, minus the interpreter start and the jax import: the cheap way to pin exit codes and the
one-line errors. Each CLI keeps at least one real-process test too, for what only a process
shows (stray tracebacks at exit, several processes at once)."""

import functools
import importlib.util
import pathlib
import sys

from jaxgpt.cli import main_guard

REPO = pathlib.Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def load_script(filename: str):
    """REPO/filename (train.py, sample.py, ...) as a module, loaded once per test process."""
    spec = importlib.util.spec_from_file_location(f"script_{pathlib.Path(filename).stem}", REPO / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(capsys, main, *args: str, prog: str = "script"):
    """main(argv) under main_guard with sys.argv = [prog, *args]: (exit code, stdout, stderr)."""
    capsys.readouterr()
    argv, sys.argv = sys.argv, [prog, *args]
    try:
        main_guard(main)
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return code, out.out, out.err


def run_script(capsys, filename: str, *args: str):
    """`python filename *args` in this process: (exit code, stdout, stderr)."""
    return run_main(capsys, load_script(filename).main, *args, prog=filename)
