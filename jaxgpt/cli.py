"""nanoGPT-style command lines: `script.py [config.py ...] [--key=value ...]`, checked strictly.

Config files are plain Python that assign some of the known keys. Every key must be known, every
value must have the key's type; anything else is a `CLIError` with a one-line message, which
`main_guard` turns into exit code 2 without a traceback.
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import os
import sys
from typing import Any, Callable, Dict, Optional, Sequence


class CLIError(Exception):
    """Bad user input: printed as one line, exit code 2."""


@dataclasses.dataclass(frozen=True)
class Option:
    default: Any
    help: str
    type: Optional[type] = None  # inferred from default when None; needed when default is None
    choices: Optional[Sequence[Any]] = None

    @property
    def value_type(self):
        return self.type if self.type is not None else type(self.default)


def _coerce(key: str, value: Any, option: Option) -> Any:
    want = option.value_type
    if value is None and option.default is None:
        return None
    if want is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            value = value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise CLIError(f"--{key} must be True or False, got {value!r}")
    elif want is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CLIError(f"--{key} must be an integer, got {value!r}")
    elif want is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CLIError(f"--{key} must be a number, got {value!r}")
        value = float(value)
    elif want is str:
        value = str(value)
    if option.choices is not None and value not in option.choices:
        raise CLIError(f"--{key} must be one of {list(option.choices)}, got {value!r}")
    return value


def _parse_literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as --dataset=shakespeare


def format_help(prog: str, summary: str, options: Dict[str, Option]) -> str:
    lines = [f"usage: python {prog} [config.py ...] [--key=value ...]", "", summary, "", "keys (default):"]
    width = max(len(k) for k in options) + 2
    for key, opt in options.items():
        lines.append(f"  --{key:<{width}} {opt.default!r:<14} {opt.help}")
    return "\n".join(lines)


def parse_args(options: Dict[str, Option], argv: Sequence[str], prog: str = "", summary: str = "") -> Dict[str, Any]:
    """Defaults, then config files in order, then --key=value overrides; later wins."""
    values = {key: opt.default for key, opt in options.items()}
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
            values[key] = _coerce(key, _parse_literal(text), options[key])
        else:
            if not os.path.isfile(arg):
                raise CLIError(f"config file not found: {arg}")
            namespace: Dict[str, Any] = {}
            with open(arg, encoding="utf-8") as f:
                source = f.read()
            try:
                exec(compile(source, arg, "exec"), namespace)  # config files are trusted user Python
            except Exception as exc:  # noqa: BLE001 - report any error in the user's file in one line
                raise CLIError(f"config file {arg} failed: {type(exc).__name__}: {exc}") from None
            for key, value in namespace.items():
                if key.startswith("_") or callable(value) or type(value).__name__ == "module":
                    continue
                if key not in options:
                    raise CLIError(f"unknown key {key!r} in config file {arg}")
                values[key] = _coerce(key, value, options[key])
    return values


def main_guard(main: Callable[[Sequence[str]], Any]) -> None:
    """Run main(argv); bad input (CLIError, ValueError) becomes one line on stderr and exit 2.

    Set JAXGPT_DEBUG=1 to get the traceback and the libraries' own log lines instead.
    """
    if os.environ.get("JAXGPT_DEBUG"):
        main(sys.argv[1:])
        return
    # Orbax and JAX log through absl; their ERROR lines would duplicate our one-line message.
    logging.getLogger("absl").setLevel(logging.CRITICAL)
    try:
        main(sys.argv[1:])
    except (CLIError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
