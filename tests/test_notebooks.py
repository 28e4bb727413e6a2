"""Every course notebook (notebooks/*.ipynb) runs end to end on CPU with its small settings
(JAXGPT_NOTEBOOK_SMALL=1), one test per notebook so pytest-xdist spreads them, under Jupyter's inline
matplotlib backend, and every cell that shows a figure has an image in its outputs; the committed
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
# What a kernel started by Jupyter draws with: ipykernel's default backend, chosen here explicitly so
# a caller's MPLBACKEND (Agg on a headless machine) cannot hide a library that switches it.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
# A line that calls plt.show() or the notebooks' show(path) helper (a saved PNG shown with IPython's
# Image), not the helper's own `def show(path):`.
SHOWS_A_FIGURE = re.compile(r"^(?!\s*def\s).*(?:\bplt\.show\(|(?<![\w.])show\()", re.MULTILINE)


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
    monkeypatch.setenv("MPLBACKEND", INLINE_BACKEND)
    nb = nbformat.read(str(path), as_version=4)
    # the kernel inherits this environment (the suite's data cache and XLA compilation cache too)
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "CpuDevice" in text or "TFRT_CPU" in text  # the devices cell printed jax.devices()
    assert not cells_without_their_figure(nb), (path.name, cells_without_their_figure(nb))


def cells_without_their_figure(nb) -> list:
    """The first line of each executed code cell that shows a figure but has no image in its outputs
    (what a cell shows after a library switched the kernel's backend to Agg: nothing, silently)."""
    return [cell.source.splitlines()[0] for cell in nb.cells
            if cell.cell_type == "code" and SHOWS_A_FIGURE.search(cell.source)
            and not any("image/png" in output.get("data", {}) for output in cell.outputs)]


def test_the_figure_check_sees_plt_show_and_the_show_helper():
    def code(source, outputs=()):
        return nbformat.v4.new_code_cell(source, outputs=list(outputs))

    image = nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"})
    printed = nbformat.v4.new_output("stream", text="done\n")
    nb = nbformat.v4.new_notebook(cells=[
        code("def show(path):\n    display(Image(filename=path))"),          # defines the helper: not a figure
        code("fig, ax = plt.subplots()\nax.plot([1, 2]); plt.show()"),     # blank: listed
        code("show(viz.plot_loss_curves([run], 'loss.png'))", [printed]),  # blank: listed
        code("plt.show()", [image]),                                       # drawn
        code("x = 1  # no figure here"),
        nbformat.v4.new_markdown_cell("plt.show()"),
    ])
    assert cells_without_their_figure(nb) == ["fig, ax = plt.subplots()",
                                              "show(viz.plot_loss_curves([run], 'loss.png'))"]
