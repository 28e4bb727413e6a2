"""No command can damage a run directory: each case of the hostile-user review, pinned.

Every failing case must print one line and exit 2 (or work), and leave out_dir exactly as it was:
`digest` hashes every file's path and bytes. Most cases run train.py's main in-process through
main_guard (fast: jax is imported once); the stray-traceback and two-writer cases use real
processes, since what they pin happens at process exit or across processes.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from jaxgpt.cli import parse_args
from jaxgpt.train.metrics import read_metrics
from jaxgpt.train.config import INVOCATION_KEYS, OPTIONS, RUN_KEYS, TrainConfig
from jaxgpt.train.run_dir import RunDirLock
from helpers import REPO, TINY, digest, load_script, one_line_exit_2, train_cli


BASE = [*TINY, "--num_samples=0", "--max_iters=20"]


@pytest.fixture(scope="module")
def trained(tiny_run):
    """A finished tiny run (BASE: checkpoints at 10 and 20) beside its own copy of the corpus,
    shared by the session (conftest.tiny_run): tests work on copies of it (`run`)."""
    return tiny_run


@pytest.fixture
def run(trained, tmp_path):
    """A private copy of the trained run: (out_dir, corpus path). The copy still trains on the
    fixture's corpus file (its run options name that path)."""
    shutil.copytree(trained, tmp_path / "copy")
    return tmp_path / "copy" / "run", tmp_path / "copy" / "corpus.txt"


def test_failed_resume_leaves_the_run_as_it_was(run, capsys):
    out, corpus = run
    before = digest(out)
    line = one_line_exit_2(train_cli(capsys, f"--out_dir={out}", "--init_from=resume", "--tokenizer=bpe",
                                     "--bpe_vocab_size=300"), "cannot resume")
    assert "--tokenizer='bpe' (the run has 'char')" in line
    one_line_exit_2(train_cli(capsys, f"--out_dir={out}", "--init_from=resume", "--n_embd=64"), "--n_embd=64")
    assert digest(out) == before
    sample = subprocess.run([sys.executable, os.path.join(REPO, "sample.py"), f"--out_dir={out}", "--num_samples=1",
                             "--max_new_tokens=5"], capture_output=True, text=True, cwd=REPO)
    assert sample.returncode == 0, sample.stderr


def test_overwrite_validates_everything_before_deleting(run, capsys, tmp_path):
    out, corpus = run
    before = digest(out)
    one_line_exit_2(train_cli(capsys, f"--out_dir={out}", *BASE, "--overwrite=True",
                              f"--dataset={tmp_path / 'typo.txt'}"),
                    "typo.txt")
    one_line_exit_2(train_cli(capsys, f"--out_dir={out}", *BASE, "--overwrite=True", f"--dataset={corpus}",
                              "--block_size=100000"), "block_size")
    assert digest(out) == before


def test_resume_refuses_an_edited_corpus(tmp_path, capsys, corpus_text):
    corpus, out = tmp_path / "corpus.txt", tmp_path / "run"
    corpus.write_text(corpus_text, encoding="utf-8")
    code, _, err = train_cli(capsys, f"--out_dir={out}", f"--dataset={corpus}", *BASE, "--max_iters=10")
    assert code == 0, err
    before = digest(out)
    corpus.write_text(corpus.read_text(encoding="utf-8").replace("z", "7"), encoding="utf-8")
    one_line_exit_2(train_cli(capsys, f"--out_dir={out}", "--init_from=resume", "--max_iters=30"), "corpus")
    assert digest(out) == before


def test_one_off_options_do_not_stick_and_changes_are_logged(run, capsys):
    out, _ = run
    code, stdout, _ = train_cli(capsys, f"--out_dir={out}", "--init_from=resume", "--eval_only=True")
    assert code == 0 and "eval: train" in stdout
    saved = json.loads((out / "run_config.json").read_text())
    assert set(saved) == set(RUN_KEYS) and not set(saved) & set(INVOCATION_KEYS)
    # A diverging learning rate stops before any save, so it never becomes the run's.
    code, stdout, err = train_cli(capsys, f"--out_dir={out}", "--init_from=resume", "--learning_rate=1e6",
                                  "--max_iters=40")
    assert code == 1 and "loss became" in err and "resume: learning_rate: 0.001 -> 1000000.0" in stdout
    code, stdout, err = train_cli(capsys, f"--out_dir={out}", "--init_from=resume", "--max_iters=30")
    assert code == 0, err
    assert "resume: max_iters: 20 -> 30" in stdout and "learning_rate" not in stdout
    events = read_metrics(str(out / "metrics.jsonl"))
    assert max(e["iter"] for e in events) == 30 and all(e["lr"] <= 1e-3 for e in events if "lr" in e)
    assert json.loads((out / "run_config.json").read_text())["max_iters"] == 30


def test_one_writer_per_run_directory(run, capsys):
    out, _ = run
    lock = RunDirLock(str(out)).acquire()  # a live run: this process holds the lock
    try:
        before = digest(out)
        line = one_line_exit_2(train_cli(capsys, f"--out_dir={out}", "--init_from=resume", "--max_iters=30"), "in use")
        assert f"pid {os.getpid()}" in line
        assert digest(out) == before
    finally:
        lock.release()
    # A stale lock (its process is gone: the kernel dropped the flock) blocks nothing.
    (out / ".lock").write_text("999999999")
    code, _, err = train_cli(capsys, f"--out_dir={out}", "--init_from=resume", "--max_iters=30")
    assert code == 0, err
    assert (out / ".lock").read_text() == ""  # released: it holds a pid only while held


def test_two_fresh_runs_on_one_out_dir(tmp_path, corpus_path):
    """Two real processes start together: one trains, the other gets one line and exit 2."""
    out = tmp_path / "shared_run"
    args = [sys.executable, os.path.join(REPO, "train.py"), f"--out_dir={out}", f"--dataset={corpus_path}", *BASE]
    procs = [subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    refused = [err for code, err in results if code == 2]
    if codes == [0, 0]:  # the first finished before the second resolved: it saw a finished run
        pytest.fail("both runs trained into one out_dir")
    assert codes == [0, 2], results
    lines = refused[0].strip().splitlines()
    assert len(lines) == 1 and ("in use by another run" in lines[0] or "already holds this run" in lines[0]), lines
    assert max(e["iter"] for e in read_metrics(str(out / "metrics.jsonl"))) == 20


def test_file_system_errors_are_one_line(run, capsys, tmp_path, corpus_path):
    out, _ = run
    before = digest(out)
    one_line_exit_2(train_cli(capsys, f"--out_dir={out / 'metrics.jsonl'}", *BASE), "is a file")
    one_line_exit_2(train_cli(capsys, "--out_dir=", *BASE), "--out_dir")
    one_line_exit_2(train_cli(capsys, "--out_dir=/proc/jaxgpt_run", *BASE, f"--dataset={corpus_path}"),
                    "/proc/jaxgpt_run")
    fresh = tmp_path / "fresh"
    one_line_exit_2(train_cli(capsys, f"--out_dir={fresh}", *BASE, "--data_dir=/proc/jaxgpt_cache"), "--data_dir")
    assert not fresh.exists()  # failed runs leave no partial out_dir
    assert digest(out) == before


def test_a_full_disk_while_plotting_does_not_stop_the_run(tmp_path, capsys, corpus_path, monkeypatch):
    import errno

    import jaxgpt.train.hooks

    def full_disk(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(jaxgpt.train.hooks, "plot_losses", full_disk)  # the loss-plot hook's writer
    code, _, err = train_cli(capsys, f"--out_dir={tmp_path / 'run'}", *BASE, f"--dataset={corpus_path}")
    assert code == 0 and "warning: could not write loss.png: No space left on device" in err
    assert (tmp_path / "run" / "checkpoints" / "20").is_dir()


def test_shape_mismatch_prints_no_stray_tracebacks(run):
    out, _ = run
    for _ in range(2):  # the checkpoint manager's shutdown printed them in about half the runs
        res = subprocess.run([sys.executable, os.path.join(REPO, "train.py"), f"--out_dir={out}",
                              "--init_from=resume", "--n_embd=64"], capture_output=True, text=True, cwd=REPO)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_values_are_parsed_by_the_keys_declared_type():
    opts = parse_args(OPTIONS, ["--out_dir=1e3", "--dataset=0x41", "--learning_rate=3.10", "--n_layer=12"])
    assert opts["out_dir"] == "1e3" and opts["dataset"] == "0x41"
    assert opts["learning_rate"] == 3.1 and opts["n_layer"] == 12
    sample_script = load_script("sample.py")
    sample_opts = parse_args(sample_script.OPTIONS, ["--start=3.10", "--top_k=None"])
    assert sample_opts["start"] == "3.10" and sample_opts["top_k"] is None
    assert parse_args(sample_script.OPTIONS, ["--start=0x41"])["start"] == "0x41"
    for bad, message in ((["--n_layer=0x10"], "--n_layer must be an integer"),
                         (["--n_layer=2.0"], "--n_layer must be an integer"),
                         (["--bias=maybe"], "--bias must be True or False"),
                         (["--learning_rate=nan"], "finite")):
        with pytest.raises(ValueError, match=message):
            parse_args(OPTIONS, bad)


def test_no_contradictory_advice_after_a_run_without_checkpoints(tmp_path, capsys, corpus_path):
    out = tmp_path / "run"
    common = [f"--out_dir={out}", *TINY, "--num_samples=0", f"--dataset={corpus_path}"]
    code, _, err = train_cli(capsys, *common, "--max_iters=0")
    assert code == 0, err
    one_line_exit_2(train_cli(capsys, f"--out_dir={out}", "--init_from=resume"), "without --init_from=resume")
    code, stdout, err = train_cli(capsys, *common, "--max_iters=10")  # the way out the message names
    assert code == 0 and "held no checkpoint" in stdout, err


def test_minor_cases_name_the_key_or_file(run, capsys):
    out, _ = run
    with pytest.raises(ValueError, match="--seed must be >= 0, got -1"):
        TrainConfig(seed=-1)
    # run_config.json edited by hand (a string where a number belongs, or broken JSON)
    before = digest(out)
    original = (out / "run_config.json").read_bytes()
    saved = json.loads(original)
    (out / "run_config.json").write_text(json.dumps({**saved, "n_layer": "2"}))
    one_line_exit_2(train_cli(capsys, f"--out_dir={out}", *BASE), "'n_layer' in")
    (out / "run_config.json").write_text("{not json")
    one_line_exit_2(train_cli(capsys, f"--out_dir={out}", *BASE), "run_config.json")
    (out / "run_config.json").write_bytes(original)
    assert digest(out) == before
    # a metrics.jsonl whose last line was cut short by a kill: the resume drops that line
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"iter": 21, "train_lo')
    code, _, err = train_cli(capsys, f"--out_dir={out}", "--init_from=resume", "--max_iters=30")
    assert code == 0, err
    assert [e["iter"] for e in read_metrics(str(out / "metrics.jsonl"))][-1] == 30


def test_a_corrupt_latest_checkpoint_offers_the_earlier_one(run, capsys):
    out, _ = run
    for root, _dirs, files in os.walk(out / "checkpoints" / "20"):
        for name in files:
            with open(os.path.join(root, name), "wb") as f:
                f.write(b"garbage")
    before = digest(out)
    one_line_exit_2(train_cli(capsys, f"--out_dir={out}", "--init_from=resume", "--max_iters=30"), "--resume_step=10")
    assert digest(out) == before
    code, stdout, err = train_cli(capsys, f"--out_dir={out}", "--init_from=resume", "--resume_step=10",
                                  "--max_iters=30")
    assert code == 0, err
    assert "later checkpoint(s) [20] moved to" in stdout  # set aside, never deleted
    assert len(os.listdir(out / "checkpoints-set-aside")) == 1
    assert 30 in [int(p) for p in os.listdir(out / "checkpoints") if p.isdigit()]
