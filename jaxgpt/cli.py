"""nanoGPT-style command lines: `script.py [config.py ...] [--key=value ...]`, checked strictly.

Config files are plain Python that assign some of the known keys. Every key must be known, and
every value is parsed by the key's declared type: `--start=3.10` stays the text "3.10" for a
string key, `--n_layer=0x10` is refused for an integer key. Anything wrong is a `CLIError` (a
ValueError) naming the key, in one line, which `main_guard` turns into exit code 2 without a traceback.

A config file is a path, or the name of a built-in config shipped in jaxgpt/configs/
(`shakespeare_char`, `shakespeare_char.py`, or `configs/shakespeare_char.py` as the docs spell it:
a missing path in a folder named configs falls back to the built-in of that file name).
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
import math
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from jaxgpt.optional import MissingDependency

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")  # the built-in configs
# The command --help's usage line names: `jaxgpt VERB` sets it; the checkout's scripts leave "python <script>".
COMMAND: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("jaxgpt_command", default=None)


class ConfigError(ValueError):
    """A bad option value, from a command line, a config file or a saved run: one line naming the
    key. The scripts print it and exit 2."""


CLIError = ConfigError  # the scripts' name for it


@dataclasses.dataclass(frozen=True)
class Option:
    default: Any
    help: str
    type: Optional[type] = None  # inferred from default when None; needed when default is None
    choices: Optional[Sequence[Any]] = None
    optional: bool = False  # None is accepted ("None" on the command line)

    @property
    def value_type(self):
        return self.type if self.type is not None else type(self.default)


_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_text(key: str, text: str, option: Option) -> Any:
    """A command-line value, parsed by the option's declared type (never by guessing)."""
    want = option.value_type
    if (option.optional or option.default is None) and text == "None":
        return None
    if want is bool:
        if text.lower() in _TRUE + _FALSE:
            return check_value(key, text.lower() in _TRUE, option)
        raise CLIError(f"--{key} must be True or False, got {text!r}")
    if want is int:
        try:
            value = int(text, 10)
        except ValueError:
            raise CLIError(f"--{key} must be an integer, got {text!r}") from None
        return check_value(key, value, option)
    if want is float:
        try:
            value = float(text)
        except ValueError:
            raise CLIError(f"--{key} must be a number, got {text!r}") from None
        return check_value(key, value, option)
    return check_value(key, text, option)  # str and free-form keys keep the raw text


def check_value(key: str, value: Any, option: Option, where: str = "") -> Any:
    """A Python value (from a config file, or parsed text) checked against the declared type."""
    want = option.value_type
    name = f"{key!r}{where}" if where else f"--{key}"
    if value is None and (option.optional or option.default is None):
        return None
    if want is bool:
        if not isinstance(value, bool):
            raise CLIError(f"{name} must be True or False, got {value!r}")
    elif want is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CLIError(f"{name} must be an integer, got {value!r}")
    elif want is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CLIError(f"{name} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise CLIError(f"{name} must be a finite number, got {value!r}")
    elif want is str:
        if not isinstance(value, str):
            raise CLIError(f"{name} must be a string, got {value!r}")
    if option.choices is not None and value not in option.choices:
        raise CLIError(f"{name} must be one of {list(option.choices)}, got {value!r}")
    return value


def format_help(prog: str, summary: str, options: Dict[str, Option]) -> str:
    command = COMMAND.get() or f"python {prog}"
    lines = [f"usage: {command} [config.py ...] [--key=value ...]", "", summary, "",
             f"config files: a path, or a built-in name ({', '.join(builtin_configs())})", "", "keys (default):"]
    width = max(len(k) for k in options) + 2
    for key, opt in options.items():
        lines.append(f"  --{key:<{width}} {opt.default!r:<14} {opt.help}")
    return "\n".join(lines)


def builtin_configs() -> List[str]:
    """The names of the configs shipped in jaxgpt/configs/."""
    return sorted(name[:-3] for name in os.listdir(CONFIG_DIR) if name.endswith(".py"))


def find_config_file(path: str) -> str:
    """The file a config argument names: the path itself when it is a file, else the built-in config
    of that file name when the path is a bare name or lies in a folder named configs (the checkout's
    `configs/NAME.py`, as the docs spell it)."""
    if os.path.isfile(path):
        return path
    folder, name = os.path.split(path)
    builtin = os.path.join(CONFIG_DIR, name if name.endswith(".py") else f"{name}.py")
    in_configs = not folder or os.path.basename(os.path.normpath(folder)) == "configs"
    if in_configs and name and os.path.isfile(builtin):
        return builtin
    raise CLIError(f"config file not found: {path} (built-in configs: {', '.join(builtin_configs())})")


def read_config_file(path: str, options: Dict[str, Option]) -> Dict[str, Any]:
    """The known keys a config file (a path or a built-in name: find_config_file) assigns, each
    checked against its declared type."""
    path = find_config_file(path)
    namespace: Dict[str, Any] = {}
    try:
        with open(path, encoding="utf-8") as f:
            source = f.read()
        exec(compile(source, path, "exec"), namespace)  # config files are trusted user Python
    except Exception as exc:  # noqa: BLE001 - report any error in the user's file in one line
        raise CLIError(f"config file {path} failed: {type(exc).__name__}: {exc}") from None
    values = {}
    for key, value in namespace.items():
        if key.startswith("_") or callable(value) or type(value).__name__ == "module":
            continue
        if key not in options:
            raise CLIError(f"unknown key {key!r} in config file {path}")
        values[key] = check_value(key, value, options[key], where=f" in config file {path}")
    return values


def parse_given(options: Dict[str, Option], argv: Sequence[str], prog: str = "",
                summary: str = "") -> Dict[str, Any]:
    """Only the keys that config files and --key=value pairs set, in order (later wins)."""
    given: Dict[str, Any] = {}
    for arg in argv:
        if arg in ("-h", "--help"):
            print(format_help(prog, summary, options))
            raise SystemExit(0)
        if arg.startswith("--"):
            if "=" not in arg:
                raise CLIError(f"expected --key=value, got {arg!r}")
            key, text = arg[2:].split("=", 1)
            if key not in options:
                raise CLIError(f"unknown key --{key} (see --help)")
            given[key] = parse_text(key, text, options[key])
        else:
            given.update(read_config_file(arg, options))
    return given


def parse_args(options: Dict[str, Option], argv: Sequence[str], prog: str = "", summary: str = "") -> Dict[str, Any]:
    """Defaults, then config files in order, then --key=value overrides; later wins."""
    return {**{key: opt.default for key, opt in options.items()}, **parse_given(options, argv, prog, summary)}


def main_guard(main: Callable[[Sequence[str]], Any], argv: Optional[Sequence[str]] = None) -> None:
    """Run main(argv) (default: sys.argv[1:]); bad input (ValueError, which CLIError and the
    library's errors are), file-system errors and a missing optional package (MissingDependency)
    become one line on stderr and exit 2.

    Set JAXGPT_DEBUG=1 to get the traceback and the libraries' own log lines instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if os.environ.get("JAXGPT_DEBUG"):
        main(args)
        return
    # Orbax and JAX log through absl; their ERROR lines would duplicate our one-line message.
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    try:
        main(args)
    except (ValueError, MissingDependency) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    except OSError as exc:  # a full disk, a read-only folder, a path that is a file, ...
        where = f": {exc.filename}" if exc.filename else ""
        print(f"error: {exc.strerror or exc}{where}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
