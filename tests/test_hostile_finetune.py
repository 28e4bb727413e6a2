"""finetune.py, sample.py, jaxgpt.viz and train.py's resume under a hostile user (issue 26): each
case pinned on the real command. A refused command prints one line, exits 2 and leaves the run
directories as they were (`digest`: every file's path and bytes); a command that works says what it
could not do (a note on stderr).

Most cases run the scripts' main in this process (helpers.run_script). Three need a process of
their own: a full disk (the echoes of a failed write come at process exit), a read-only run
directory (the privilege to write anywhere is dropped for that process) and a run being trained
by another process (its lock is held by another pid).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from jaxgpt.data.corpus import DataError
from jaxgpt.data.tokenizers import CharTokenizer
from jaxgpt.finetune import classify
from jaxgpt.finetune.classify_data import LabeledTexts, load_labeled, make_splits
from jaxgpt.train import checkpoint as ckpt_lib
from jaxgpt.train.checkpoint import one_line_cause
from jaxgpt.train.run_dir import RunDir
from jaxgpt.viz import figures
from helpers import (FINETUNE_TINY, REPO, TINY, digest, load_script, one_line_exit_2, run_main, run_script,
                     shared_build, spam_rows, write_csv)

SFT_TINY = [os.path.join(REPO, "configs", "finetune_sft.py"), "--n_layer=1", "--n_head=2", "--n_embd=32",
            "--n_per_kind=20", "--batch_size=8", "--eval_iters=1", "--max_iters=2", "--eval_interval=2",
            "--lr_decay_iters=2", "--warmup_iters=1", "--block_size=64", "--progress=False"]
CLASSIFY_ADVICE = "is a classification run (finetune.py --task=classify)"


def finetune(capsys, *args):
    return run_script(capsys, "finetune.py", *args)


def sample(capsys, *args):
    return run_script(capsys, "sample.py", *args)


def train(capsys, *args):
    return run_script(capsys, "train.py", *args)


def viz(capsys, *args):
    return run_main(capsys, figures.main, *args, prog="-m jaxgpt.viz")


@pytest.fixture(scope="module")
def classify_run(tmp_path_factory):
    """A finished tiny classification run, checkpoints at 4 and 8, beside its CSV (shared: copy to change)."""

    def build(path):
        csv = write_csv(path / "sms.csv", spam_rows())
        load_script("finetune.py").main([f"--out_dir={path / 'run'}", f"--dataset={csv}", *FINETUNE_TINY])

    return shared_build(tmp_path_factory, "hostile_classify_run", build) / "run"


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """A finished tiny instruction fine-tuning run (2 iterations)."""

    def build(path):
        load_script("finetune.py").main([*SFT_TINY, f"--out_dir={path / 'run'}"])

    return shared_build(tmp_path_factory, "hostile_sft_run", build) / "run"


@pytest.fixture
def classify_copy(classify_run, tmp_path):
    shutil.copytree(classify_run, tmp_path / "run")
    return tmp_path / "run"


@pytest.fixture
def lm_run(tiny_run):
    """conftest's tiny train.py run (checkpoints 10 and 20): read it, never write it."""
    return tiny_run / "run"


# ------------------------------------------------------------------- 7: a full disk mid-save

# Runs argv[1:] with writes past LIMIT bytes failing (EFBIG) instead of killing the process (SIGXFSZ).
FILE_SIZE_LIMITED = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (int(os.environ["LIMIT"]),) * 2)
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""


def test_a_full_disk_during_a_finetune_checkpoint_is_one_line(classify_copy):
    # The kernel refuses every write past 20 kB: the checkpoint's larger files fail mid-save, as on a full
    # disk, in tensorstore's threads. Before: ~50 "Event loop is closed" tracebacks around the error.
    before = digest(classify_copy / "checkpoints")
    env = dict(os.environ, JAX_ENABLE_COMPILATION_CACHE="false", JAX_PLATFORMS="cpu", LIMIT="20000")
    res = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMITED, os.path.join(REPO, "finetune.py"),
                          f"--out_dir={classify_copy}", "--init_from=resume", "--max_iters=12", "--progress=False"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-3000:]
    assert lines[0] == ("error: could not write checkpoint at step 12: File too large; the previous checkpoint "
                        "(step 8) is intact")
    assert sorted(os.listdir(classify_copy / "checkpoints")) == ["4", "8"]  # no half-written step left
    assert digest(classify_copy / "checkpoints") == before


def test_tensorstore_errors_are_read_for_their_cause():
    full = ValueError("RESOURCE_EXHAUSTED: Error writing \"x/0\" in OCDBT database at local file \"/r/8.orbax-"
                      "checkpoint-tmp/\": Failed to write 2869 bytes to file 11: No space left on device "
                      "[os_error_code='28'] [source locations='tensorstore/file.cc:1']")
    assert one_line_cause(full) == "No space left on device"
    short = ValueError("OUT_OF_RANGE: Error opening \"zarr\" driver: Error reading Byte range [0, 2549) of local "
                       "file \"/r/20/params/d/90\": Requested byte range [0, 2549) is not valid for value of size 10 "
                       "[tensorstore_spec='{\"driver\":\"zarr\"}']")
    assert one_line_cause(short) == "/r/20/params/d/90: Requested byte range [0, 2549) is not valid for value of size 10"


# --------------------------------------------- 8: a classifier is not a language model

def test_sample_viz_and_a_backbone_on_a_classifier_say_what_to_use(capsys, classify_run, tmp_path):
    before = digest(classify_run)
    advice = f"classify a text with: python finetune.py --out_dir={classify_run} --classify=TEXT"
    for result in (sample(capsys, f"--out_dir={classify_run}", "--num_samples=1", "--max_new_tokens=3"),
                   sample(capsys, f"--out_dir={classify_run}", "--which=best", "--num_samples=1"),
                   viz(capsys, f"--out_dir={classify_run}", "--what=attention", f"--png={tmp_path / 'a.png'}"),
                   sample(capsys, f"--out_dir={classify_run}", "--instruction=Reverse the word.")):
        line = one_line_exit_2(result, CLASSIFY_ADVICE)
        assert advice in line and "orbax" not in line.lower()
    line = one_line_exit_2(finetune(capsys, f"--out_dir={tmp_path / 'new'}", *FINETUNE_TINY[1:],
                            f"--dataset={classify_run.parent / 'sms.csv'}", f"--init_from={classify_run}"),
                   f"--init_from={classify_run} is a classification run")
    assert "not a language model" in line and not (tmp_path / "new").exists()
    assert digest(classify_run) == before


def test_sample_on_an_sft_run_works_and_names_instruction(capsys, sft_run):
    code, out, err = sample(capsys, f"--out_dir={sft_run}", "--num_samples=1", "--max_new_tokens=3")
    assert code == 0, err
    assert f"note: {sft_run} is an instruction fine-tuning run: --instruction=TEXT" in err
    line = one_line_exit_2(finetune(capsys, f"--out_dir={sft_run}", "--classify=hello"), "is an instruction fine-tuning run")
    assert f"python sample.py --out_dir={sft_run} --instruction=TEXT" in line


# ------------------------------------------------ 9: optimizer-state options on resume

def test_resume_refuses_an_optimizer_state_change_by_name(capsys, lm_run, classify_run):
    before = digest(lm_run), digest(classify_run)
    one_line_exit_2(train(capsys, f"--out_dir={lm_run}", "--init_from=resume", "--max_iters=30", "--grad_clip=0.0"),
            "--grad_clip changed from 1.0 to 0.0: it changes the optimizer's state; resume with --grad_clip=1.0 or "
            "start a new --out_dir")
    one_line_exit_2(finetune(capsys, f"--out_dir={classify_run}", "--init_from=resume", "--max_iters=12", "--trainable=head"),
            "--trainable changed from 'all' to 'head': it changes the optimizer's state")
    assert (digest(lm_run), digest(classify_run)) == before


def test_resume_runs_under_the_script_that_made_them(capsys, lm_run, classify_run):
    before = digest(lm_run), digest(classify_run)
    one_line_exit_2(train(capsys, f"--out_dir={classify_run}", "--init_from=resume", "--max_iters=12"),
            f"{classify_run} is a finetune.py run (task 'classify'): resume it with python finetune.py")
    one_line_exit_2(finetune(capsys, f"--out_dir={lm_run}", "--init_from=resume", "--max_iters=30"),
            f"{lm_run} is a train.py run: resume it with python train.py")
    one_line_exit_2(train(capsys, f"--out_dir={lm_run.parent / 'other'}", f"--init_from={lm_run}", *TINY),
            "is a jaxgpt run directory, not a Hugging Face GPT-2 one")
    assert (digest(lm_run), digest(classify_run)) == before


# ------------------------------------------------------ 15, 17, 18: data and texts

def test_a_missing_pretrain_dataset_names_the_option(capsys, classify_run, tmp_path):
    missing = tmp_path / "nofile.txt"
    one_line_exit_2(finetune(capsys, f"--out_dir={tmp_path / 'new'}", f"--dataset={classify_run.parent / 'sms.csv'}",
                     "--init_from=pretrain", f"--pretrain_dataset={missing}"),
            f"--pretrain_dataset: no file {missing} (give a text file or one of ['stdlib', 'shakespeare', 'task'])")
    assert not (tmp_path / "new").exists()


def test_classify_notes_what_the_model_cannot_read(capsys, classify_run):
    code, out, err = finetune(capsys, f"--out_dir={classify_run}", "--classify=@@@@")
    assert code == 0 and set(dict(line.split("\t") for line in out.splitlines())) == {"ham", "spam"}
    assert "note: 4 of 4 characters of the text are unknown to the model's vocabulary" in err
    assert "the probabilities say nothing about it" in err
    text = "@@ win cash " + "now " * 20
    code, _, err = finetune(capsys, f"--out_dir={classify_run}", f"--classify={text}")
    assert code == 0 and f"note: 2 of {len(text)} characters of the text are unknown" in err
    assert "say nothing" not in err
    assert "the model reads" not in err  # finetune.py's default --long_text=chunks reads all of it, in windows
    # a run that cuts long texts says what it reads of them
    notes = classify._reading_notes(CharTokenizer("abc"), ["abc" * 20], 32, "head_tail")
    assert notes == ["note: the text has 60 tokens; the model reads 32 of them (its head and tail, the run's --long_text)"]


def test_rows_with_an_empty_text_are_dropped_and_counted(tmp_path):
    rows = [("" if i % 6 == 0 else "   " if i % 3 == 0 else t, label) for i, (t, label) in enumerate(spam_rows(300))]
    data = load_labeled(write_csv(tmp_path / "blank.csv", rows))
    assert len(data.texts) == 200 and all(t.strip() for t in data.texts)
    assert data.description.endswith("(300 rows); 100 with an empty text dropped")  # the run's "data: ..." line


# ------------------------------------------------------------------ 22: the file system

DRIVER = """
import contextlib, io, json, sys
sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
from helpers import load_script
from jaxgpt.cli import main_guard
results = []
for script, args in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    sys.argv = [script, *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main_guard(load_script(script).main)
            code = 0
        except SystemExit as exc:
            code = exc.code
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""


def run_unprivileged(commands):
    """[(script, args)] run by one process that may not write where the file modes forbid it: as root (CI),
    the capabilities that override file modes are dropped from it; another user is that already."""
    prefix = (["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else [])
    res = subprocess.run([*prefix, sys.executable, "-c", DRIVER, str(REPO), json.dumps(commands)], capture_output=True,
                         text=True, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def set_modes(top, folders: int, files: int) -> None:
    for root, dirs, names in os.walk(top):
        for name in names:
            os.chmod(os.path.join(root, name), files)
        for name in dirs:
            os.chmod(os.path.join(root, name), folders)
    os.chmod(top, folders)


def test_a_read_only_run_is_read_and_never_written(classify_copy, tmp_path):
    before = digest(classify_copy)
    set_modes(classify_copy, 0o555, 0o444)
    try:
        classified, resumed, plotted = run_unprivileged([
            ("finetune.py", [f"--out_dir={classify_copy}", "--classify=win cash now"]),
            ("finetune.py", [f"--out_dir={classify_copy}", "--init_from=resume", "--max_iters=12"]),
            ("jaxgpt/viz/__main__.py", [f"--out_dir={classify_copy}", "--what=loss"])])
    finally:
        set_modes(classify_copy, 0o755, 0o644)
    assert classified[0] == 0 and set(dict(line.split("\t") for line in classified[1].splitlines())) == {"ham", "spam"}
    one_line_exit_2(resumed, f"--out_dir={classify_copy} is not writable")
    # before: "error: Permission denied: <out_dir>/loss.tmp1234.png", after the figure was drawn
    one_line_exit_2(plotted, f"--png={classify_copy / 'loss.png'}: the folder {classify_copy} is not writable")
    assert digest(classify_copy) == before


def test_a_corrupt_backbone_checkpoint_is_one_line_naming_run_and_step(capsys, lm_run, classify_run, tmp_path):
    backbone = tmp_path / "backbone"
    shutil.copytree(lm_run, backbone)
    for step in ("10", "20"):
        for root, _dirs, files in os.walk(backbone / "checkpoints" / step / "params"):
            for name in files:
                if os.path.basename(root) == "d":
                    os.truncate(os.path.join(root, name), 10)
    line = one_line_exit_2(finetune(capsys, f"--out_dir={tmp_path / 'new'}", *FINETUNE_TINY[1:], f"--init_from={backbone}",
                            f"--dataset={classify_run.parent / 'sms.csv'}"), f"--init_from={backbone}: checkpoint at step ")
    assert f"in {backbone / 'checkpoints'} is unreadable" in line
    assert "is not valid for value of size 10" in line and "OUT_OF_RANGE" not in line  # the cause, not the dump
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------ 22: a run being trained

@pytest.fixture
def held_lock(classify_copy):
    """Another live process holding the run's lock, as a training run does."""
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time\n"
                               f"fd = os.open({str(RunDir(classify_copy).lock_path)!r}, os.O_RDWR | os.O_CREAT)\n"
                               "fcntl.flock(fd, fcntl.LOCK_EX); os.ftruncate(fd, 0); os.write(fd, str(os.getpid()).encode())\n"
                               "print('held', flush=True); time.sleep(120)"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield holder.pid
    holder.kill()
    holder.wait()


def test_reading_a_run_being_trained_reads_its_newest_complete_checkpoint(capsys, classify_copy, held_lock,
                                                                         monkeypatch):
    real = ckpt_lib.Checkpointer.restore_params
    pruned = []

    def restore_params(self, abstract, step=None):
        if not pruned:  # the trainer saves 10 and 12 and prunes the step being read, meanwhile
            for old, new in ((4, 10), (8, 12)):
                os.rename(os.path.join(self.directory, str(old)), os.path.join(self.directory, str(new)))
            pruned.append(step)
        return real(self, abstract, step)

    monkeypatch.setattr(ckpt_lib.Checkpointer, "restore_params", restore_params)
    code, out, err = finetune(capsys, f"--out_dir={classify_copy}", "--classify=win cash")
    assert code == 0 and pruned, err  # before: "no checkpoint at step 8 ... (have [10, 12])"
    assert set(dict(line.split("\t") for line in out.splitlines())) == {"ham", "spam"}
    assert f"note: {classify_copy} is being written by another process (pid {held_lock})" in err


def test_a_run_being_trained_without_a_checkpoint_yet_says_so(capsys, classify_copy, held_lock):
    shutil.rmtree(classify_copy / "checkpoints")  # what --overwrite leaves before the first save
    line = one_line_exit_2(finetune(capsys, f"--out_dir={classify_copy}", "--classify=win cash"), "no checkpoint")
    assert f"is being written by another process, pid {held_lock}: try again once it has saved a checkpoint" in line


def test_a_killed_writer_leaves_a_run_that_reads_without_a_note(capsys, classify_copy):
    (classify_copy / "checkpoints" / "12.orbax-checkpoint-tmp" / "params").mkdir(parents=True)  # killed mid-save
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (classify_copy / ".lock").write_text(dead.stdout.strip())  # kill -9 leaves its pid in the lock file
    code, out, err = finetune(capsys, f"--out_dir={classify_copy}", "--classify=win cash")
    assert code == 0 and "being written" not in err and len(out.splitlines()) == 2


# ------------------------------------------------------------- the hostile pass: more cases

def test_classify_and_instruction_on_the_wrong_run_say_what_it_is(capsys, lm_run, tmp_path):
    one_line_exit_2(finetune(capsys, f"--out_dir={tmp_path / 'none'}", "--classify=hello"),
            f"no run directory at {tmp_path / 'none'}: train a classifier there first")
    line = one_line_exit_2(finetune(capsys, f"--out_dir={lm_run}", "--classify=hello"), f"{lm_run} is a language-model run")
    assert f"sample it with: python sample.py --out_dir={lm_run}" in line
    one_line_exit_2(sample(capsys, f"--out_dir={lm_run}", "--instruction=Reverse it."), f"{lm_run} is a language-model run")
    assert not (tmp_path / "none").exists()


def test_hand_edited_run_files_do_not_change_what_classify_reads(capsys, classify_copy):
    code, expected, err = finetune(capsys, f"--out_dir={classify_copy}", "--classify=win cash")
    assert code == 0, err
    options = json.loads((classify_copy / "run_config.json").read_text())
    (classify_copy / "run_config.json").write_text(json.dumps({**options, "trainable": "lora", "lora_rank": "x"}))
    meta = json.loads((classify_copy / "data_meta.json").read_text())
    (classify_copy / "data_meta.json").write_text(json.dumps({**meta, "labels": ["a", "b", "c"]}))
    # before: an orbax tree dump (trainable), a traceback (lora_rank), a shape mismatch (labels)
    assert finetune(capsys, f"--out_dir={classify_copy}", "--classify=win cash") == (0, expected, "")


def test_the_same_column_for_text_and_label_is_refused(capsys, classify_run, tmp_path):
    one_line_exit_2(finetune(capsys, f"--out_dir={tmp_path / 'new'}", f"--dataset={classify_run.parent / 'sms.csv'}",
                     *FINETUNE_TINY, "--text_column=label"),
            "--text_column and --label_column both name 'label': the model would read its answer")
    assert not (tmp_path / "new").exists()


def test_labels_the_train_split_lacks_are_listed_briefly():
    texts = tuple(f"text {i}" for i in range(60))  # e.g. --label_column naming the text column
    data = LabeledTexts("t", texts, texts, "0" * 64, "every text its own label", "60 rows")
    with pytest.raises(DataError) as info:
        make_splits(data, 0, 0.1, 0.2)
    message = str(info.value)  # before: all of them, thousands of characters for a real file
    assert " and 1 more that the train split lacks" in message and "60 labels in 60 examples" in message
    assert len(message) < 400


def test_resuming_a_finished_run_says_there_is_nothing_to_train(capsys, classify_copy):
    code, out, err = finetune(capsys, f"--out_dir={classify_copy}", "--init_from=resume", "--max_iters=6")
    assert code == 0, err
    assert "note: the checkpoint is at iteration 8, already >= --max_iters=6: nothing to train" in out


def test_sft_that_leaves_no_room_for_a_response_is_refused(capsys, tmp_path):
    one_line_exit_2(finetune(capsys, *SFT_TINY, f"--out_dir={tmp_path / 'sft'}", "--block_size=8"),
            "max_length=8 (finetune.py's --block_size) leaves no room for a response: the prompt alone fills it")
    assert not (tmp_path / "sft").exists()


def test_a_png_that_cannot_be_written_is_refused_before_any_work(capsys, lm_run, tmp_path):
    (tmp_path / "file").write_text("x")
    one_line_exit_2(viz(capsys, f"--out_dir={lm_run}", "--what=loss", f"--png={tmp_path / 'file' / 'loss.png'}"),
            f"--png={tmp_path / 'file' / 'loss.png'}: the folder {tmp_path / 'file'} is a file, not a directory")
    one_line_exit_2(viz(capsys, f"--out_dir={lm_run}", "--what=loss", f"--png={tmp_path}"),
                    f"--png={tmp_path} is a directory")
