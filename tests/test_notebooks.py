"""Every course notebook (notebooks/*.ipynb) runs end to end on CPU with its small settings
(JAXGPT_NOTEBOOK_SMALL=1), one test per notebook so pytest-xdist spreads them; the committed
files carry no outputs and equal what notebooks/build_notebooks.py writes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient  # the test extra installs nbclient, nbformat and ipykernel

from helpers import REPO

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CHAPTERS = ("00", "01", "02", "03", "04", "05", "06", "07", "08")


def test_every_chapter_has_one_notebook():
    numbers = [p.name[:2] for p in NOTEBOOKS]
    assert numbers == sorted(set(numbers))
    missing = [c for c in CHAPTERS if c not in numbers]
    assert not missing, f"chapters without a notebook: {missing}"


def test_notebooks_are_stored_without_outputs_and_match_their_generator():
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text(encoding="utf-8"))
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None, path.name
        first = "".join(nb["cells"][0]["source"]).splitlines()
        # the title and the first line name the course chapter in Portuguese
        assert re.fullmatch(rf"# Capítulo {path.name[:2]} — .+", first[0]), (path.name, first[0])
        assert first[2].startswith(f"**Capítulo {path.name[:2]} — "), (path.name, first[2])
        assert f"blob/main/notebooks/{path.name}" in "".join(nb["cells"][0]["source"])  # the Colab badge
    r = subprocess.run([sys.executable, str(NOTEBOOK_DIR / "build_notebooks.py"), "--check"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("JAXGPT_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("JAXGPT_NOTEBOOK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(str(path), as_version=4)
    # the kernel inherits this environment (the suite's data cache and XLA compilation cache too)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "CpuDevice" in text or "TFRT_CPU" in text  # the devices cell printed jax.devices()
