"""Train a GPT: `python train.py [configs/NAME.py] [--key=value ...]` (see --help).

The checkout's shim for `jaxgpt train` (the command line is jaxgpt.train.cli). With no arguments: a
small character-level GPT on Tiny Shakespeare (shipped with the package, offline), a few minutes on
2 CPU cores, then a few samples.
"""

import jaxgpt.course.bigram  # noqa: F401  registers --model=bigram's family: the core never imports the course
from jaxgpt.cli import main_guard
from jaxgpt.train.cli import main

if __name__ == "__main__":
    main_guard(main)
