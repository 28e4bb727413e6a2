"""Train a GPT: `python train.py [configs/NAME.py] [--key=value ...]` (see --help).

With no arguments: a small character-level GPT on Tiny Shakespeare (shipped with the package,
offline), a few minutes on 2 CPU cores, then a few samples.
"""

import sys

import jaxgpt.course.bigram  # noqa: F401  registers --model=bigram's family: the core never imports the course
from jaxgpt.cli import main_guard
from jaxgpt.train.loop import TrainingDiverged, config_from_argv, train


def main(argv):
    cfg = config_from_argv(argv)
    try:
        train(cfg)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main_guard(main)
