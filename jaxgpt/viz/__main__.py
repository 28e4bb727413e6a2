"""`python -m jaxgpt.viz`: the figures' command line (jaxgpt.viz.figures.main)."""

import jaxgpt.course.bigram  # noqa: F401  registers --model=bigram's family: the core never imports the course
from jaxgpt.cli import main_guard
from jaxgpt.viz.figures import main

if __name__ == "__main__":
    main_guard(main)
