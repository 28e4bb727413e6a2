"""Run a scaling sweep or muP's checks: `python sweep.py configs/sweep_cpu.py --out_dir=DIR [--key=value ...]`
(see --help; the command line is jaxgpt.scale.cli).
"""

import os

# The fits' L-BFGS hands tiny matrices to scipy's OpenBLAS, whose spinning worker threads made them
# 5-18x slower on a busy machine (minutes for a 6-run sweep on 2 cores); OpenBLAS reads this once,
# when numpy first loads it: so before jaxgpt (and numpy) is imported.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jaxgpt.course.bigram  # noqa: E402,F401  registers --model=bigram's family: the core never imports the course
from jaxgpt.cli import main_guard  # noqa: E402
from jaxgpt.scale.cli import OPTIONS, main  # noqa: E402,F401 (OPTIONS: the script's keys, for tests and tools)

if __name__ == "__main__":
    main_guard(main)
