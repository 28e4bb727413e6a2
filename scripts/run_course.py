"""Runs the course's nine notebooks and keeps the executed copies: `python scripts/run_course.py`.

Each notebook (notebooks/NN_*.ipynb) runs from top to bottom in a fresh kernel under Jupyter's
inline matplotlib backend (what a learner's Jupyter uses, so every figure is drawn), one after
another, at the chapter's full settings (--small: the test suite's small ones). The executed copy,
outputs included, is written to --out_dir/NN_name.ipynb (default docs/course/, what the README's
course table links; --small writes to a temporary folder unless --out_dir is given: small runs are
not the published copies). For each notebook it prints the wall time and the notebook's
`chapter_results: {...}` line, then a table of all of them.

    python scripts/run_course.py                          # all nine, full settings (CPU: about an hour)
    python scripts/run_course.py --only=05,06 --small     # a subset, small settings
    python scripts/run_course.py --sms_path=SMSSpamCollection --instructions_path=instructions.json

Data paths are the notebooks' parameters (the code cell tagged "parameters"): --sms_path sets
chapter 06's SMS_PATH (a local copy instead of the download), --instructions_path chapter 07's
INSTRUCTIONS_PATH. Each notebook's runs and figures go to a temporary folder (--work_dir to keep
them). Exit code 0 when every notebook ran, 1 when one failed (its copy is still written, with the
error in its outputs), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
PUBLISHED_DIR = REPO / "docs" / "course"
PARAMETERS_TAG = "parameters"  # the tag of each notebook's settings cell (notebooks/build_notebooks.py)
RESULTS_PREFIX = "chapter_results: "  # each notebook's last code cell prints this, then one JSON object
# What a kernel started by Jupyter draws with (ipykernel's default), named explicitly so that a
# caller's MPLBACKEND (Agg on a headless machine) cannot hide a figure that is not drawn.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
# The notebooks' data paths, by the option that sets them.
DATA_PARAMETERS = {"sms_path": "SMS_PATH", "instructions_path": "INSTRUCTIONS_PATH"}
# The kernels import this checkout's jaxgpt (a fresh clone runs without pip install -e .).
KERNEL_PYTHONPATH = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def notebooks(only: Optional[List[str]] = None) -> List[Path]:
    """The course notebooks in chapter order; `only`: chapter numbers ("05") to keep."""
    found = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if only is None:
        return found
    unknown = sorted(set(only) - {p.name[:2] for p in found})
    if unknown:
        raise ValueError(f"--only names no notebook: {', '.join(unknown)} (chapters: "
                         f"{', '.join(p.name[:2] for p in found)})")
    return [p for p in found if p.name[:2] in only]


def parameters_cell(nb) -> Optional[nbformat.NotebookNode]:
    """The code cell tagged "parameters", or None."""
    tagged = [c for c in nb.cells if c.cell_type == "code" and PARAMETERS_TAG in c.metadata.get("tags", [])]
    return tagged[0] if tagged else None


def set_parameters(nb, values: Mapping[str, object]) -> List[str]:
    """Set each NAME of `values` that the parameters cell assigns (`NAME = ...` at the start of a
    line), in place, so the lines after it that derive from NAME see the new value (papermill would
    add a cell after it instead). Returns the names set."""
    cell = parameters_cell(nb)
    if cell is None:
        return []
    done = []
    for name, value in values.items():
        line = re.compile(rf"^{re.escape(name)} = .*$", re.MULTILINE)
        if line.search(cell.source):
            setting = f"{name} = {value!r}  # set by scripts/run_course.py"
            cell.source = line.sub(lambda _: setting, cell.source, count=1)
            done.append(name)
    return done


def chapter_results_of(nb) -> Optional[Dict[str, object]]:
    """The dict of the executed notebook's last `chapter_results: {...}` output line, or None."""
    found = None
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if output.get("output_type") != "stream":
                continue
            for line in output.get("text", "").splitlines():
                if line.startswith(RESULTS_PREFIX):
                    found = json.loads(line[len(RESULTS_PREFIX):])
    return found


def finite_numbers(results: Mapping[str, object]) -> bool:
    """Every value is a string or a finite int/float (what chapter_results may hold)."""
    return all(isinstance(v, str) or (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v))
               for v in results.values())


def execute(path: Path, *, small: bool, work_dir: str, cell_timeout: int, values: Mapping[str, object]):
    """(executed notebook, error text or None): `path` run in a fresh kernel, inline backend, with
    the small or full settings and the data parameters `values`."""
    nb = nbformat.read(str(path), as_version=4)
    set_parameters(nb, values)
    os.makedirs(work_dir, exist_ok=True)
    # The kernel inherits os.environ: set what the notebooks read, and this checkout's jaxgpt first.
    os.environ.update({"JAXGPT_NOTEBOOK_SMALL": "1" if small else "0", "JAXGPT_NOTEBOOK_DIR": work_dir,
                       "MPLBACKEND": INLINE_BACKEND, "PYTHONPATH": KERNEL_PYTHONPATH})
    client = NotebookClient(nb, timeout=cell_timeout, kernel_name="python3",
                            resources={"metadata": {"path": work_dir}})
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as exc:
        return nb, str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return nb, None


def parse_args(argv: List[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="run_course.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="the small settings (JAXGPT_NOTEBOOK_SMALL=1)")
    parser.add_argument("--only", default="", help="chapters to run, comma-separated (e.g. 05,06); default all")
    parser.add_argument("--out_dir", default="", help="where the executed copies go (default docs/course/; "
                                                      "with --small a temporary folder)")
    parser.add_argument("--work_dir", default="", help="where the notebooks' runs and figures go (default: "
                                                       "a temporary folder)")
    parser.add_argument("--cell_timeout", type=int, default=1800, help="seconds one cell may run")
    parser.add_argument("--sms_path", default=None, help="chapter 06: a local copy of the SMS Spam Collection")
    parser.add_argument("--instructions_path", default=None, help="chapter 07: a JSON/JSONL file of instructions")
    return parser.parse_args(argv)


def main(argv: List[str]) -> int:
    args = parse_args(argv)
    try:
        paths = notebooks([c.strip() for c in args.only.split(",") if c.strip()] or None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    values = {name: os.path.abspath(getattr(args, option)) for option, name in DATA_PARAMETERS.items()
              if getattr(args, option) is not None}
    out_dir = Path(args.out_dir or (tempfile.mkdtemp(prefix="jaxgpt-course-small-") if args.small else PUBLISHED_DIR))
    work_root = args.work_dir or tempfile.mkdtemp(prefix="jaxgpt-course-work-")
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"{len(paths)} notebook(s), {'small' if args.small else 'full'} settings; executed copies -> {out_dir}",
          flush=True)
    rows = []
    for path in paths:
        start = time.time()
        nb, error = execute(path, small=args.small, work_dir=os.path.join(work_root, path.stem),
                            cell_timeout=args.cell_timeout, values=values)
        seconds = time.time() - start
        results = chapter_results_of(nb)
        if error is None and results is None:
            error = f"no '{RESULTS_PREFIX.strip()}' line in the outputs"
        nbformat.write(nb, str(out_dir / path.name))
        rows.append((path.stem, seconds, error, results))
        print(f"{path.stem}: {seconds:.0f} s, {'ok' if error is None else 'FAILED: ' + error}", flush=True)
        if results is not None:
            print(RESULTS_PREFIX + json.dumps(results), flush=True)
    print(f"\n{'notebook':24s} {'seconds':>8s}  result")
    for stem, seconds, error, results in rows:
        print(f"{stem:24s} {seconds:8.0f}  {json.dumps(results) if error is None else 'FAILED: ' + error}")
    print(f"{'total':24s} {sum(r[1] for r in rows):8.0f}")
    return 1 if any(error is not None for _, _, error, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
