"""Every course notebook (notebooks/*.ipynb) runs end to end on CPU with its small settings
(JAXGPT_NOTEBOOK_SMALL=1), one test per notebook so pytest-xdist spreads them, under Jupyter's inline
matplotlib backend, and every cell that shows a figure has an image in its outputs; each has one
settings cell tagged "parameters", ends with `chapter_results` (printed as a JSON line of finite
numbers) and prints no mesh or MFU-peak lines; the committed files carry no outputs and equal what
notebooks/build_notebooks.py writes; scripts/run_course.py runs them and collects the results."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys

import nbformat
import pytest
from nbclient import NotebookClient  # the test extra installs nbclient, nbformat and ipykernel

from helpers import REPO, load_script

run_course = load_script("scripts/run_course.py")

NOTEBOOK_DIR = REPO / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
CHAPTERS = ("00", "01", "02", "03", "04", "05", "06", "07", "08")
# What a kernel started by Jupyter draws with: ipykernel's default backend, chosen here explicitly so
# a caller's MPLBACKEND (Agg on a headless machine) cannot hide a library that switches it.
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
# The keys of each chapter's chapter_results (its last code cell).
RESULT_KEYS = {
    "00": {"max_weight_error", "gpt_parameters"},
    "01": {"counted_bigram_val_loss", "learned_bigram_val_loss", "uniform_val_loss", "finetune_10_steps_scratch_loss",
           "finetune_10_steps_pretrained_loss", "instruction_tuned_response_loss"},
    "02": {"char_vocab", "bpe_vocab", "gpt2_vocab", "hand_bpe_chars_per_token", "bpe_chars_per_token", "gpt2_chars_per_token"},
    "03": {"heads_loop_vs_vmap_difference", "max_weight_difference", "max_output_difference", "trained_val_loss",
           "trained_future_weight"},
    "04": {"max_logit_difference", "max_grad_difference", "untrained_loss", "hand_gpt_val_loss", "parameters"},
    "05": {"hand_loop_val_loss", "val_loss", "val_ppl", "course_model_iters", "greedy_repeated_fraction",
           "sampled_repeated_fraction"},
    "06": {"dataset", "chosen_start", "test_accuracy", "scratch_test_accuracy", "course_model_test_accuracy",
           "adapted_test_accuracy", "scratch_seconds", "course_model_seconds", "adapted_seconds"},
    "07": {"exact_match", "exact_match_reverse", "exact_match_sort", "exact_match_add", "exact_match_uppercase",
           "test_loss", "iters"},
    "08": {"kv_cache_speedup", "naive_tokens_per_s", "cached_tokens_per_s", "greedy_repeated_fraction",
           "sampled_repeated_fraction", "penalized_repeated_fraction", "unknown_word_fraction", "top_token_probability",
           "top_k_5_kept", "top_p_0.9_kept", "max_draw_frequency_error"},
}
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
        assert_settings_and_results_cells(path.name, nb)
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
    # training output is short: the header's mesh/devices and MFU-peak lines are left out
    assert "MFU peak" not in text and " | mesh {" not in text
    results = run_course.chapter_results_of(nb)
    assert results is not None and set(results) == RESULT_KEYS[path.name[:2]], (path.name, results)
    assert run_course.finite_numbers(results), (path.name, results)


def assert_settings_and_results_cells(name: str, nb: dict) -> None:
    """One code cell tagged "parameters", before any other code but the install cell, assigning
    SMALL; the last code cell assigns `chapter_results` and prints it."""
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    tagged = [i for i, c in enumerate(code) if "parameters" in c["metadata"].get("tags", [])]
    assert tagged == [1], (name, tagged)  # right after the install cell
    assert "SMALL" in assigned_names("".join(code[1]["source"])), name
    last = "".join(code[-1]["source"])
    assert "chapter_results" in assigned_names(last) and 'print("chapter_results:"' in last, name


def assigned_names(source: str) -> set:
    return {t.id for node in ast.parse(source).body if isinstance(node, ast.Assign) for t in node.targets
            if isinstance(t, ast.Name)}


def test_run_course_runs_a_notebook_sets_its_parameters_and_prints_its_results(tmp_path):
    """scripts/run_course.py --small on chapter 00: its executed copy (with outputs) and its results line."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "run_course.py"), "--small", "--only=00",
                        f"--out_dir={tmp_path / 'out'}", f"--work_dir={tmp_path / 'work'}"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [line for line in r.stdout.splitlines() if line.startswith("chapter_results: ")]
    assert len(lines) == 1 and set(json.loads(lines[0].split(": ", 1)[1])) == RESULT_KEYS["00"], r.stdout
    assert re.search(r"^00_passo_zero +\d+ +\{", r.stdout, re.MULTILINE), r.stdout  # the final table
    executed = nbformat.read(str(tmp_path / "out" / "00_passo_zero.ipynb"), as_version=4)
    assert run_course.chapter_results_of(executed) == json.loads(lines[0].split(": ", 1)[1])
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "run_course.py"), "--only=42"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--only names no notebook: 42" in bad.stderr


def test_run_course_sets_a_data_path_in_the_parameters_cell():
    nb = nbformat.read(str(NOTEBOOK_DIR / "06_fine_tuning.ipynb"), as_version=4)
    assert run_course.set_parameters(nb, {"SMS_PATH": "/data/SMSSpamCollection", "NOT_THERE": 1}) == ["SMS_PATH"]
    namespace = {}
    exec(run_course.parameters_cell(nb).source, namespace)  # the derived DATASET sees the new path
    assert namespace["SMS_PATH"] == namespace["DATASET"] == "/data/SMSSpamCollection"


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
