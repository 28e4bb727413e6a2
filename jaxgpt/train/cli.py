"""`jaxgpt train [config ...] [--key=value ...]` (the checkout's `python train.py`): train a GPT.

With no arguments: a small character-level GPT on Tiny Shakespeare (shipped with the package,
offline), a few minutes on 2 CPU cores, then a few samples. Config files are paths or built-in
names (`jaxgpt train shakespeare_char`); `--help` lists every key.
"""

import sys
from typing import Sequence

from jaxgpt.train.loop import TrainingDiverged, config_from_argv, train


def main(argv: Sequence[str]) -> None:
    cfg = config_from_argv(argv)
    try:
        train(cfg)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
