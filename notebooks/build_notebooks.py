"""Writes the course notebooks (notebooks/NN_*.ipynb) from their source in notebooks/chapters/
(chNN.py: one module per chapter), without outputs.

    python notebooks/build_notebooks.py          # rewrite every notebook (and the README's Colab links)
    python notebooks/build_notebooks.py --check  # exit 1 if a committed notebook (or a link) differs

The .ipynb files are committed (Colab opens them from GitHub); notebooks/chapters/ is their source, so a
change to a notebook is a change there. tests/test_notebooks.py runs every notebook end to end with
JAXGPT_NOTEBOOK_SMALL=1 and checks that the committed files equal this script's output.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a script or imported: chapters/ is beside it
from chapters import ch00, ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08  # noqa: E402
from chapters.cells import HERE, LINKING_PAGES, PARAMETERS_TAG, Cell, with_current_home  # noqa: E402

CHAPTERS = (ch00, ch01, ch02, ch03, ch04, ch05, ch06, ch07, ch08)

NOTEBOOKS = {chapter.NAME: chapter.CELLS for chapter in CHAPTERS}


def build(cells: List[Cell]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}, "colab": {"provenance": []}}
    for i, (kind, source) in enumerate(cells):
        cell = nbformat.v4.new_markdown_cell(source) if kind == "md" else nbformat.v4.new_code_cell(source)
        if kind == "parameters":
            cell.metadata["tags"] = [PARAMETERS_TAG]
        cell["id"] = f"cell-{i:02d}"  # stable ids: the files only change when the cells do
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(name: str) -> str:
    return nbformat.writes(build(NOTEBOOKS[name])) + "\n"


def main(argv: List[str]) -> int:
    check = "--check" in argv
    stale = []
    for name in sorted(NOTEBOOKS):
        path = HERE / f"{name}.ipynb"
        text = render(name)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    for page in LINKING_PAGES:
        text = page.read_text(encoding="utf-8")
        if with_current_home(text) != text:
            if check:
                stale.append(page.name)
            else:
                page.write_text(with_current_home(text), encoding="utf-8")
                print(f"wrote {page} (Colab links)")
    if stale:
        print(f"out of date (run python notebooks/build_notebooks.py): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
