"""sweep.py, `python -m jaxgpt.viz`, the bigram's --init_from and every `python -m jaxgpt.X` under
hostile input (issue 26): each refusal is one line on stderr, exit 2, and leaves the directories as
they were; a finished member is reused only while its recorded options equal the member's now.

One finished one-member sweep (1 layer, 16 wide, 2 iterations) is shared by the module; the tests that
train again work on a copy of it."""

import ast
import contextlib
import dataclasses
import io
import json
import os
import pathlib
import runpy
import shutil
import subprocess
import sys
import tempfile
import textwrap
import warnings

import pytest

import jaxgpt
from jaxgpt.cli import ConfigError
from jaxgpt.model import families
from jaxgpt.scale import sweep
from helpers import REPO, load_script, one_line_exit_2, run_main, run_script, snapshot, train_cli

SHAPE = "dict(n_layer=1, n_head=1, n_embd=16)"
MEMBER = "L1-D16-T1e2"  # SHAPE at 128 tokens: 2 iterations of 4 x 16 tokens


def _config(path, dataset, base_extra="", grid=f"shapes = [{SHAPE}]\ntokens = [128]"):
    """A tiny sweep config at path: base on dataset (plus base_extra, e.g. ", learning_rate=0.005"), then grid."""
    path = pathlib.Path(path)
    path.write_text(f"base = dict(dataset={str(dataset)!r}, block_size=16, batch_size=4, eval_interval=2, eval_iters=1, "
                    f"log_interval=1, warmup_iters=0{base_extra})\n{grid}\n")
    return str(path)


def _sweep(capsys, *args):
    return run_script(capsys, "sweep.py", *args)


@dataclasses.dataclass(frozen=True)
class Finished:
    corpus: pathlib.Path
    config: str
    out: pathlib.Path


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus_text):
    root = tmp_path_factory.mktemp("hostile_sweep")
    corpus = root / "corpus.txt"
    corpus.write_text(corpus_text[:50_000], encoding="utf-8")
    config = _config(root / "sweep_config.py", corpus)
    out = root / "sweep"
    with contextlib.redirect_stdout(io.StringIO()):
        load_script("sweep.py").main([config, f"--out_dir={out}", "--fit=False"])
    assert (out / "runs" / MEMBER / "result.json").exists()
    return Finished(corpus, config, out)


# ----------------------------------------------------------------------- the cases

def test_a_finished_member_with_other_options_or_data_is_refused_by_name(finished, capsys, tmp_path):
    """Issue 26.3: a rerun after base changed said "done, skipped" and reported the old results."""
    before = snapshot(finished.out)
    other = tmp_path / "other.txt"
    other.write_text(finished.corpus.read_text()[:40_000])
    lr = _config(tmp_path / "lr.py", finished.corpus, ", learning_rate=0.005")
    for args, expected in (([lr], "(learning_rate: 0.001 -> 0.005): pass --rerun_changed=True"),
                           ([_config(tmp_path / "data.py", other)], f"dataset: {str(finished.corpus)!r} -> "),
                           ([lr, "--task=fit"], "pass --task=run --rerun_changed=True")):
        line = one_line_exit_2(_sweep(capsys, *args, f"--out_dir={finished.out}"), expected)
        assert line.startswith(f"error: sweep member {MEMBER} in {finished.out} ran with other options"), line
    text = finished.corpus.read_text()
    try:  # the same path with other text: the member's data_meta.json recorded the old text's sha256
        finished.corpus.write_text(text + "\nanother line\n")
        one_line_exit_2(_sweep(capsys, finished.config, f"--out_dir={finished.out}"), "the text of dataset")
    finally:
        finished.corpus.write_text(text)
    spec = sweep.SweepSpec.from_file(finished.config)  # the library's run_member checks the text too
    member = sweep.expand(spec, sweep.vocab_size_for(spec.base))[0]
    with pytest.raises(ConfigError, match=r"the text of dataset .* -> 000000000000\.\.\.\)\): pass --rerun"):
        sweep.run_member(member, str(finished.out), 100, data_sha256="0" * 64)
    assert snapshot(finished.out) == before


def test_rerun_changed_trains_again_and_shapes_differing_in_block_size_are_two_members(finished, capsys, tmp_path):
    """Issue 26.3 (--rerun_changed=True) and 26.13: two shapes differing only in block_size were refused
    as "the grid repeats a point"."""
    out = tmp_path / "sweep"
    shutil.copytree(finished.out, out)
    config = _config(tmp_path / "grid.py", finished.corpus, ", learning_rate=0.005",
                     f"shapes = [{SHAPE}, dict(n_layer=1, n_head=1, n_embd=16, block_size=32)]\ntokens = [128]")
    code, stdout, err = _sweep(capsys, config, f"--out_dir={out}", "--rerun_changed=True", "--fit=False")
    assert code == 0, err
    assert f"[1/2] {MEMBER}: training again (--rerun_changed)" in stdout
    assert f"[2/2] {MEMBER}-block_size32: training" in stdout  # the first keeps its name
    for name, block_size in ((MEMBER, 16), (f"{MEMBER}-block_size32", 32)):
        row = json.loads((out / "runs" / name / "result.json").read_text())
        assert row["config"]["learning_rate"] == 0.005 and row["config"]["block_size"] == block_size
    code, stdout, err = _sweep(capsys, config, f"--out_dir={out}", "--fit=False")
    assert code == 0 and stdout.count("done, skipped") == 2, (stdout, err)


BAD_GRIDS = (  # (config text with {D} for the dataset, expected in the error line); none gets to train
    # issue 26.6: an unknown key was a TypeError from TrainConfig; types are checked as the CLI's check_value
    ("base = dict(dataset={D}, lerning_rate=1e-3)\nshapes = [" + SHAPE + "]\ntokens = [128]",
     "unknown key 'lerning_rate' in base of config file {path}"),
    ("base = dict(dataset={D}, learning_rate='fast')\nshapes = [" + SHAPE + "]\ntokens = [128]",
     "'learning_rate' in base of config file {path} must be a number, got 'fast'"),
    ("base = dict(dataset={D})\nshapes = [dict(n_layer='2', n_head=1, n_embd=16)]\ntokens = [128]",
     "'n_layer' in shapes[0] of config file {path} must be an integer, got '2'"),
    ("base = dict(dataset={D})\nshapes = [" + SHAPE + "]\ntokens = [128]\nlearning_rates = ['fast']",
     "'learning_rate' in learning_rates of config file {path} must be a number"),
    # the hostile pass: tracebacks (TypeError, OverflowError, ZeroDivisionError) or a wrong reason before
    ("base = dict(dataset={D})\nshapes = [" + SHAPE + "]\ntokens = 2048", "tokens must be a list, got 2048"),
    ("base = dict(dataset={D})\nshapes = [" + SHAPE + "]\ntokens = [float('inf')]", "positive finite numbers"),
    ("base = dict(dataset={D})\ntarget_params = [1000]\nhead_dim = 0\ntokens = [128]", "head_dim must be an integer >= 1"),
    ("base = 'oops'\nshapes = [" + SHAPE + "]\ntokens = [128]", "base must be a dict of train.py options"),
    ("base = dict(dataset={D}, init_from='resume')\nshapes = [" + SHAPE + "]\ntokens = [128]",
     "'init_from' in base of config file {path}: the sweep sets it for each member"),
    ("base = dict(dataset={D})\nshapes = [dict(n_layer=1, n_head=1, n_embd=16, dataset='shakespeare')]\n"
     "tokens = [128]", "'dataset' in shapes[0] of config file {path}: the members share one dataset"),
    # two budgets that round to the same iterations under two names: the same run trained twice
    ("base = dict(dataset={D}, block_size=16, batch_size=4)\nshapes = [" + SHAPE + "]\ntokens = [949, 951]",
     "the grid repeats a point"),
)


def test_bad_grids_are_one_line_naming_the_key_and_file(finished, capsys, tmp_path):
    out = tmp_path / "never"
    for i, (text, expected) in enumerate(BAD_GRIDS):
        path = tmp_path / f"bad{i}.py"
        path.write_text(text.replace("{D}", repr(str(finished.corpus))))
        one_line_exit_2(_sweep(capsys, str(path), f"--out_dir={out}"), expected.format(path=path))
    assert not out.exists()


def test_out_dir_that_is_a_file(finished, capsys, tmp_path):
    """Issue 26.11 (sweep.py; the store's is in test_shards): "error: File exists: PATH"."""
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    for out, expected in ((a_file, f"--out_dir={a_file} is a file, not a directory"),
                          (a_file / "sub", f"--out_dir={a_file / 'sub'}: {a_file} is a file, not a directory")):
        one_line_exit_2(_sweep(capsys, finished.config, f"--out_dir={out}"), expected)
    assert a_file.read_text() == "mine"


def test_fit_on_a_sweep_with_no_finished_runs(finished, capsys, tmp_path):
    """Issue 26.12: --task=fit on an empty sweep named a temporary file."""
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (tmp_path / "missing", empty):
        one_line_exit_2(_sweep(capsys, finished.config, f"--out_dir={out}", "--task=fit"),
                        f"the sweep in {out} has no finished runs to fit yet: run it first (--task=run)")
    assert not (tmp_path / "missing").exists() and snapshot(empty) == {}


def test_bigram_init_from_says_what_the_directory_is(finished, capsys, tmp_path):
    """Issue 26.16: --model=bigram --init_from=A_GPT_RUN said "has no config.json". Also a hub name (it
    tried to download GPT-2) and a bigram run: each refused before any weights are read."""
    gpt_run = finished.out / "runs" / MEMBER
    bigram_run = tmp_path / "bigram_run"
    bigram_run.mkdir()
    (bigram_run / "run_config.json").write_text(json.dumps({"model": "bigram", "block_size": 16}))
    out = tmp_path / "bg"
    bigram_config = str(REPO / "configs" / "bigram.py")
    for init_from, expected in ((gpt_run, "is a GPT run (n_layer=1, n_head=1, n_embd=16), not a bigram run"),
                                ("gpt2", "is the GPT-2 checkpoint 'gpt2', not a bigram run"),
                                (bigram_run, f"is a bigram run, but --model=bigram trains its table from scratch: "
                                             f"to continue that run, pass --out_dir={bigram_run} --init_from=resume")):
        one_line_exit_2(train_cli(capsys, bigram_config, f"--init_from={init_from}", f"--out_dir={out}",
                                  f"--dataset={finished.corpus}"), f"--init_from={init_from} {expected}")
    assert not out.exists()


def _modules_run_as_main():
    """Every module `python -m` runs with a __main__ block of its own: `if __name__ == "__main__"` at
    its top level, or a package's __main__.py."""
    root = pathlib.Path(jaxgpt.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if path.name == "__main__.py":
            found.append(".".join(parts[:-1]))
            continue
        tree = ast.parse(path.read_text(), str(path))
        if any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body):
            found.append(".".join(parts))
    return found


def test_every_module_run_as_main_has_a_help(capsys):
    """Issue 26.21: `python -m jaxgpt.course.bigram --help` printed nothing and exited 0. Each module with a
    __main__ block, run as __main__ in this process, prints its usage for --help and exits 0."""
    modules = _modules_run_as_main()
    assert {"jaxgpt.course.bigram", "jaxgpt.data.store", "jaxgpt.sample.cli", "jaxgpt.viz"} <= set(modules), modules
    registered = families.registered_families()
    argv = sys.argv
    try:
        for module in modules:
            sys.argv = [module, "--help"]
            code = 0  # a module that returns from --help exits 0 (`python -m jaxgpt --help`)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # runpy: the module is imported already
                try:
                    runpy.run_module(module, run_name="__main__", alter_sys=True)
                except SystemExit as exc:
                    code = exc.code
            out = capsys.readouterr().out
            assert code in (0, None) and out.startswith(("usage: python ", "usage: jaxgpt")), (module, out)
    finally:
        sys.argv = argv
        for name, family in registered.items():  # the bigram's second copy registered itself: put the first back
            families.register_family(name, family)


# ------------------------------------------------------------------------ the hostile pass

def test_two_sweeps_on_one_out_dir(finished, capsys):
    with sweep.sweep_lock(str(finished.out)):  # as a sweep.py running there holds it
        before = snapshot(finished.out)
        one_line_exit_2(_sweep(capsys, finished.config, f"--out_dir={finished.out}"),
                        f"{finished.out} is in use by another sweep (pid {os.getpid()})")
        assert snapshot(finished.out) == before


def test_worker_options_and_a_failed_worker_are_one_line(finished, capsys, tmp_path, monkeypatch):
    one_line_exit_2(_sweep(capsys, finished.config, "--worker=5", "--workers=2"),
                    "--worker must be in [0, --workers=2), got 5")  # it trained nothing, silently
    one_line_exit_2(_sweep(capsys, "--task=coord_check", "--steps=-1", f"--out_dir={tmp_path / 'c'}"),
                    "--steps must be >= 0, got -1")  # a numpy error from deep inside before
    failing = tmp_path / "fails.py"  # a worker process that exits 2, as one refusing its member does
    failing.write_text("import sys\nsys.exit(2)\n")
    monkeypatch.setattr(sys, "argv", [str(failing)])
    result = run_main(capsys, lambda argv: sweep.run_workers("c.py", [], 2, lambda i: {}))
    one_line_exit_2(result, "sweep worker(s) [0, 1] failed (exit codes [2, 2]); rerun the same command")


def test_viz_png_and_out_dir_targets(finished, capsys, tmp_path):
    from jaxgpt.viz.figures import main as viz_main

    run_dir = finished.out / "runs" / MEMBER
    a_file = tmp_path / "a_file"
    a_file.write_text("mine")
    before = snapshot(run_dir)
    for args, expected in (([f"--png={tmp_path}"], f"--png={tmp_path} is a directory: name a .png file"),
                           ([f"--png={a_file / 'x.png'}"], f"the folder {a_file} is a file, not a directory"),
                           ([f"--out_dir={a_file}"], f"--out_dir={a_file} is a file, not a run directory")):
        one_line_exit_2(run_main(capsys, viz_main, f"--out_dir={run_dir}", "--what=next_token", *args), expected)
    assert snapshot(run_dir) == before and a_file.read_text() == "mine"


READ_ONLY_CHECK = textwrap.dedent("""
    import json, os, sys
    from jaxgpt.cli import main_guard
    from jaxgpt.data.store_cli import main as store
    from jaxgpt.scale.cli import main as sweep
    from jaxgpt.viz.figures import main as viz
    folder = sys.argv[1]
    if os.geteuid() == 0:  # root writes anywhere: drop to nobody, everything imported first
        os.setgroups([]); os.setresgid(65534, 65534, 65534); os.setresuid(65534, 65534, 65534)
    codes = {}
    for name, main, args in (("sweep", sweep, ["any_config.py", f"--out_dir={folder}/sweep"]),
                             ("store", store, [f"--source={folder}", f"--out_dir={folder}/store"]),
                             ("viz", viz, [f"--out_dir={folder}", f"--png={folder}/x.png"])):
        sys.argv = [name, *args]
        try:
            main_guard(main)
        except SystemExit as exc:
            codes[name] = exc.code
    print(json.dumps(codes))
""")


def test_read_only_out_dirs_are_refused_before_any_work():
    """sweep.py, the store and viz into a folder this user cannot write: one line each, before reading
    a config, a source or a model. As root (CI) the check runs as uid 65534 in a child process; as
    another user the folder is made read-only."""
    folder = tempfile.mkdtemp(prefix="jaxgpt_read_only_")  # under /tmp: uid 65534 can reach it
    try:
        os.chmod(folder, 0o755 if os.geteuid() == 0 else 0o555)
        proc = subprocess.run([sys.executable, "-c", READ_ONLY_CHECK, folder], capture_output=True, text=True,
                              cwd=REPO, timeout=300)
        assert json.loads(proc.stdout) == {"sweep": 2, "store": 2, "viz": 2}, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert lines == [f"error: --out_dir={folder}/sweep: {folder} is not writable",
                         f"error: --out_dir={folder}/store: {folder} is not writable",
                         f"error: --png={folder}/x.png: the folder {folder} is not writable"], proc.stderr
        assert os.listdir(folder) == []
    finally:
        os.chmod(folder, 0o755)
        shutil.rmtree(folder)
