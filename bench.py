"""Benchmarks (not tests): `python bench.py --task=sample|train|step [config.py ...] [--key=value ...]`.

The checkout's shim for `jaxgpt bench`: the tasks and their docs are in jaxgpt/bench/ (the command
line is jaxgpt.bench.cli).
"""

import jaxgpt.course.bigram  # noqa: F401  registers --model=bigram's family: the core never imports the course
from jaxgpt.bench.cli import main
from jaxgpt.cli import main_guard

if __name__ == "__main__":
    main_guard(main)
