"""What several test files share: the repository's path, the command-line runners, the tiny run's
settings, run-directory checks and session-wide builds. Not a test module: no test imports another.

The in-process runners: a script's main under jaxgpt.cli.main_guard, with sys.argv set, is what
`python script.py ...` runs, minus the interpreter start and the jax import: the cheap way to pin
exit codes and the one-line errors. Each CLI keeps at least one real-process test too (run_cli),
for what only a process shows (stray tracebacks at exit, several processes at once)."""

import fcntl
import functools
import hashlib
import importlib.util
import os
import pathlib
import random
import shutil
import subprocess
import sys

from jaxgpt.cli import main_guard
from jaxgpt.train.metrics import WALL_CLOCK_KEYS, read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]

# A tiny train.py run: seconds on 2 cores.
TINY = ["--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--eval_iters=2",
        "--eval_interval=10", "--log_interval=5", "--sample_tokens=20", "--num_samples=1", "--progress=False",
        "--warmup_iters=5", "--lr_decay_iters=40"]
# A tiny finetune.py classification run from scratch (1 layer), and its data: spam_rows in a CSV.
FINETUNE_TINY = ["--init_from=scratch", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=8",
                 "--eval_iters=2", "--eval_interval=4", "--log_interval=2", "--max_iters=8", "--lr_decay_iters=8",
                 "--warmup_iters=2", "--learning_rate=3e-3", "--progress=False"]
HAM = "hello see you later ok lunch home soon love thanks".split()
SPAM = "win free prize call now cash claim urgent txt reply".split()


def write_csv(path, rows, header="text,label"):
    path.write_text(header + "\n" + "".join(f"{t},{l}\n" for t, l in rows), encoding="utf-8")
    return str(path)


def spam_rows(n=120, seed=0):
    """(text, label) rows, ham and spam alternating, texts of 3 to 8 words drawn from each label's ten."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "spam" if i % 2 else "ham"
        words = SPAM if label == "spam" else HAM
        rows.append((" ".join(rng.choice(words) for _ in range(rng.randint(3, 8))), label))
    return rows


# ------------------------------------------------------------------------------ command lines

@functools.lru_cache(maxsize=None)
def load_script(filename: str):
    """REPO/filename (train.py, sample.py, ...) as a module, loaded once per test process."""
    spec = importlib.util.spec_from_file_location(f"script_{pathlib.Path(filename).stem}", REPO / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(capsys, main, *args: str, prog: str = "script"):
    """main(argv) under main_guard with sys.argv = [prog, *args]: (exit code, stdout, stderr)."""
    capsys.readouterr()
    argv, sys.argv = sys.argv, [prog, *args]
    try:
        main_guard(main)
        code = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return code, out.out, out.err


def run_script(capsys, filename: str, *args: str):
    """`python filename *args` in this process: (exit code, stdout, stderr)."""
    return run_main(capsys, load_script(filename).main, *args, prog=filename)


def train_cli(capsys, *args):
    """train.py's main in this process: (exit code, stdout, stderr)."""
    return run_script(capsys, "train.py", *args)


def run_cli(script, *args, timeout=300):
    """`python REPO/script *args` in a real process, from REPO: the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, os.path.join(REPO, script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def one_line_exit_2(result, expected: str):
    """result = (exit code, stdout, stderr) of a refused command: exit 2 and one line holding `expected`."""
    code, _out, err = result
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    assert expected in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------ run directories

def loss_events(path):
    """Metrics without the wall-clock fields (tokens/s, MFU), which legitimately differ."""
    return [{k: v for k, v in e.items() if k not in WALL_CLOCK_KEYS} for e in read_metrics(path)]


def digest(path) -> str:
    """sha256 over every file's relative path and bytes under path (the lock file included)."""
    h = hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            h.update(os.path.relpath(full, path).encode() + b"\0")
            with open(full, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def snapshot(path):
    """{relative path: (bytes, mtime_ns)} of every file under path, and {folder/: None} of every folder
    (None when path does not exist): what a refused command must leave as it was."""
    if not os.path.exists(path):
        return None
    found = {}
    for root, dirs, files in os.walk(path):
        found.update({os.path.relpath(os.path.join(root, d), path) + "/": None for d in dirs})
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                found[os.path.relpath(full, path)] = (f.read(), os.stat(full).st_mtime_ns)
    return found


def shared_build(tmp_path_factory, name: str, build) -> pathlib.Path:
    """A folder `name` made by build(path) once per session, even under pytest-xdist: the first
    worker to ask builds it under a file lock, the others wait for it and reuse it. Callers that
    change what they get must work on a copy (shutil.copytree)."""
    base = tmp_path_factory.getbasetemp()
    # under pytest's own temporary folder; workers share its parent
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "session_builds"
    root.mkdir(exist_ok=True)
    path, done = root / name, root / f"{name}.done"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not done.exists():
                shutil.rmtree(path, ignore_errors=True)  # a build that failed part way
                path.mkdir()
                build(path)
                done.touch()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path
