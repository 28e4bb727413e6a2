"""What every chapter's source shares: the repository's home (the one place it is named), the
cell constructors (md, code, parameters, results) and the opening cells of a chapter."""

from __future__ import annotations

import codecs
import re
from pathlib import Path
from typing import List, Tuple

HERE = Path(__file__).resolve().parents[1]  # notebooks/
# The repository's home (GitHub "owner/name"): the one place it is named. The Colab badges, the
# links and the install cell all derive from it. "OWNER" is a placeholder while the project has no
# public home: set the real owner here, then rerun this script.
REPO_HOME = "OWNER/jaxgpt"
PLACEHOLDER_OWNER = "OWNER"  # REPO_HOME's owner until then
REPO_URL = f"https://github.com/{REPO_HOME}"
# What the install cell installs from: nothing while the home is the placeholder (pip would fail on
# it), and the cell then says in one line what to do.
INSTALL_URL = "" if REPO_HOME.split("/")[0] == PLACEHOLDER_OWNER else REPO_URL
COLAB_NOTEBOOKS = f"https://colab.research.google.com/github/{REPO_HOME}/blob/main/notebooks/"
# Pages outside notebooks/ that link the notebooks on Colab: this script keeps their links on REPO_HOME.
LINKING_PAGES = (HERE.parent / "README.md",)
COLAB_LINK = re.compile(r"https://colab\.research\.google\.com/github/[^/\s]+/[^/\s]+/blob/main/notebooks/")

Cell = Tuple[str, str]  # ("md" | "code" | "parameters", source)
# The tag papermill (and scripts/run_course.py) looks for: the one code cell that holds the settings.
PARAMETERS_TAG = "parameters"


def md(text: str) -> Cell:
    return ("md", text.strip("\n"))


def code(text: str) -> Cell:
    return ("code", text.strip("\n"))


def parameters(text: str) -> Cell:
    """The notebook's settings cell, tagged "parameters": a tool that sets them inserts its values
    right after it."""
    return ("parameters", text.strip("\n"))


def results(entries: str) -> List[Cell]:
    """The notebook's closing cells: `chapter_results`, a dict of the chapter's key numbers (entries:
    the dict's body), printed as one JSON line that scripts/run_course.py and the tests read."""
    return [
        md("""
## Results

The chapter's key numbers, in one dict (`scripts/run_course.py` collects every chapter's):
"""),
        code(f"""
import json

chapter_results = {{
{entries.strip(chr(10))}
}}
print("chapter_results:", json.dumps(chapter_results))
"""),
    ]


def hidden(solution: str) -> str:
    """A Python literal of `solution` rot13-encoded: an exercise's checking cell runs the reference
    solution from it (`exec(codecs.decode(<literal>, "rot13"))`) when the learner's answer is still a
    stub, without printing it where the learner reads (the collapsed <details> block explains it)."""
    return repr(codecs.encode(solution.strip("\n"), "rot13"))


def colab_url(name: str) -> str:
    return f"{COLAB_NOTEBOOKS}{name}.ipynb"


def with_current_home(text: str) -> str:
    """`text` with every Colab link to a notebook pointing at REPO_HOME."""
    return COLAB_LINK.sub(COLAB_NOTEBOOKS, text)



def preamble(name: str, number: str, title_pt: str, what: str, small_settings: str) -> List[Cell]:
    """Title (the course chapter in Portuguese), badge, install cell, the parameters cell (SMALL,
    WORK, then small_settings: the chapter's sizes and data paths), devices."""
    return [
        md(f"""
# Capítulo {number} — {title_pt}

**Capítulo {number} — {title_pt}** of the course *Fazendo um LLM do Zero*, rebuilt in functional JAX with
[jaxgpt]({REPO_URL}).

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({colab_url(name)})

{what}
"""),
        code(f"""
# Install jaxgpt when it is missing (Colab); a local checkout has it already (pip install -e .).
JAXGPT_HOME = "{INSTALL_URL}"  # the repository to install from, e.g. "https://github.com/<owner>/jaxgpt"
try:
    import jaxgpt
except ImportError:
    if not JAXGPT_HOME:
        raise SystemExit("jaxgpt is not installed and JAXGPT_HOME is not set: set JAXGPT_HOME = "
                         "'https://github.com/<owner>/jaxgpt' in this cell, or run from a clone (pip install -e .)")
    import subprocess, sys
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", f"git+{{JAXGPT_HOME}}"])
    import jaxgpt
"""),
        parameters(f"""
import os, tempfile

# The chapter's settings, in the cell tagged "parameters" (papermill's convention; scripts/run_course.py sets them).
# One switch for small settings: the test suite runs every notebook with JAXGPT_NOTEBOOK_SMALL=1
# (seconds on a CPU). Leave it unset for the chapter's real settings.
SMALL = os.environ.get("JAXGPT_NOTEBOOK_SMALL", "0") == "1"
WORK = os.environ.get("JAXGPT_NOTEBOOK_DIR") or tempfile.mkdtemp(prefix="jaxgpt-{number}-")  # runs and figures
{small_settings}
"""),
        code("""
import jax
import jax.numpy as jnp
import numpy as np

os.makedirs(WORK, exist_ok=True)
print("JAX", jax.__version__, "on", jax.default_backend(), "->", jax.devices())
"""),
    ]


def show_png() -> Cell:
    return code("""
from IPython.display import Image, display

def show(path):
    display(Image(filename=path))
""")
