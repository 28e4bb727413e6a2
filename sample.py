"""Sample text from a trained jaxgpt run or a GPT-2 checkpoint: `python sample.py [--key=value ...]`
(see --help; the command line is jaxgpt.sample.cli).
"""

import jaxgpt.course.bigram  # noqa: F401  registers --model=bigram's family: the core never imports the course
from jaxgpt.cli import main_guard
from jaxgpt.sample.cli import OPTIONS, main  # noqa: F401 (OPTIONS: the script's keys, for tests and tools)

if __name__ == "__main__":
    main_guard(main)
