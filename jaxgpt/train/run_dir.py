"""A run directory (train.py's and finetune.py's --out_dir): every file name in it, its typed
metadata, its checkpoint bookkeeping, and who may write it. No other module spells these names.

    run = RunDir(out_dir)
    run.checkpoint_dir, run.metrics_path, run.loss_png, ...    # where each file is
    run.write_run_config(cfg.run_options()); run.read_run_config()   # ConfigError naming the file
    run.write_tokenizer(tok); run.read_tokenizer()                     # TokenizerError
    run.checkpoint_steps(), run.latest_step()      # the best step: jaxgpt.train.checkpoint (orbax's records)

One writer at a time: `RunDirLock` takes an exclusive `fcntl.flock` on `<out_dir>/.lock`
(jaxgpt.files.FileLock). The kernel drops the lock when its process dies, however it dies, so a
stale lock from a killed run never blocks the next one; while a run is live, a second writer is
refused with the holder's pid. The file holds the pid only while the lock is held, so a finished
run leaves it empty (and the directory's contents as the run left them).

Readers (sample.py, --classify, jaxgpt.viz, a fine-tuning backbone) take no lock: they read the newest
committed checkpoint (jaxgpt.train.checkpoint.read_newest) and say when a live writer holds the lock
(`RunDir.writer_pid`, `being_written_note`). A run's kind, from its saved options (`run_task`:
classify, sft or lm), tells a tool handed the wrong kind what to use instead (`what_the_run_is`).
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from typing import Any, Dict, List, Optional

from jaxgpt.cli import ConfigError
from jaxgpt.data.tokenizers import TOKENIZER_FILE, Tokenizer, load_tokenizer
from jaxgpt.files import FileLock, check_folder_target, read_json_object, write_json_atomic

__all__ = ["RunDir", "RunDirError", "RunDirLock", "check_out_dir", "clear_run_files", "committed_steps",
           "run_task", "what_the_run_is", "being_written_note", "note_if_being_written",
           "RUN_FILES", "LOCK_NAME", "CHECKPOINTS", "METRICS_FILE", "LOSS_PNG", "RUN_CONFIG_FILE",
           "TOKENIZER_FILE", "DATA_META_FILE", "SFT_CONFIG_FILE", "RESPONSES_FILE", "CONFUSION_PNG",
           "SET_ASIDE_DIR", "WANDB_DIR", "TFEVENTS_PREFIX"]

CHECKPOINTS = "checkpoints"  # orbax's steps, one folder each (jaxgpt.train.checkpoint)
METRICS_FILE = "metrics.jsonl"  # one JSON event a line (jaxgpt.train.metrics)
LOSS_PNG = "loss.png"
RUN_CONFIG_FILE = "run_config.json"  # the run options of the newest checkpoint
DATA_META_FILE = "data_meta.json"  # the prepared data's meta (corpus sha256, token counts, labels...)
SFT_CONFIG_FILE = "sft.json"  # instruction fine-tuning: template and EOS (jaxgpt.finetune.instruct)
RESPONSES_FILE = "responses.jsonl"  # instruction fine-tuning: the test split's responses
CONFUSION_PNG = "confusion_matrix.png"  # classification fine-tuning: the test split's
SET_ASIDE_DIR = "checkpoints-set-aside"  # --resume_step: the later checkpoints, kept, not deleted
WANDB_DIR = "wandb"  # --wandb_log: W&B's own files, and the run's W&B id (jaxgpt.train.tracking)
WANDB_ID_FILE = "run_id"
# --tensorboard: tensorboardX's event files, straight in out_dir (`tensorboard --logdir=SWEEP_DIR` names
# each member's run by its folder); one file per invocation, so they are matched by this prefix
TFEVENTS_PREFIX = "events.out.tfevents."
LOCK_NAME = ".lock"
# What a run writes into out_dir (and --overwrite=True removes), with the TFEVENTS_PREFIX files;
# nothing else there is touched.
RUN_FILES = (CHECKPOINTS, METRICS_FILE, LOSS_PNG, RUN_CONFIG_FILE, TOKENIZER_FILE, DATA_META_FILE,
             SFT_CONFIG_FILE, RESPONSES_FILE, CONFUSION_PNG, WANDB_DIR)


class RunDirError(ConfigError):
    """The run directory cannot be used: one line naming it."""


# What each kind of run is, and the command that uses it (a tool handed the wrong kind says this).
_TASK_USES = {
    "classify": "a classification run (finetune.py --task=classify): it predicts labels, not text; classify a text "
                "with: python finetune.py --out_dir={out_dir} --classify=TEXT",
    "sft": "an instruction fine-tuning run (finetune.py --task=sft): ask it with: python sample.py "
           "--out_dir={out_dir} --instruction=TEXT",
    "lm": "a language-model run (train.py): sample it with: python sample.py --out_dir={out_dir}",
}


def run_task(options: Dict[str, Any]) -> str:
    """"classify", "sft" or "lm" (pretraining) from a run's saved options (run_config.json, or a
    checkpoint's run_config): finetune.py's runs record their task, train.py's have none."""
    task = options.get("task") if isinstance(options, dict) else None
    return task if task in ("classify", "sft") else "lm"


def what_the_run_is(out_dir: str, task: str) -> str:
    """'<out_dir> is a classification run ...: classify a text with: ...' (a tool's refusal)."""
    return f"{out_dir} is {_TASK_USES[task].format(out_dir=out_dir)}"


def being_written_note(out_dir: str) -> Optional[str]:
    """A note for a reader of a run that a live process is training (it holds the run's lock):
    readers take no lock and read the newest committed checkpoint; None when no one writes."""
    pid = RunDir(out_dir).writer_pid()
    if pid is None:
        return None
    return (f"note: {out_dir} is being written by another process (pid {pid}): reading its newest complete "
            "checkpoint; later ones are not in this result")


def note_if_being_written(out_dir: str) -> None:
    """being_written_note's line on stderr, when there is one (sample.py's and jaxgpt.viz's)."""
    note = being_written_note(out_dir)
    if note:
        print(note, file=sys.stderr)


def committed_steps(checkpoint_dir: str) -> List[int]:
    """The steps committed in a checkpoint folder, ascending: orbax renames a step's folder to its
    number once complete, so its temporary folders (and a missing folder) count for nothing."""
    if not os.path.isdir(checkpoint_dir):
        return []
    return sorted(int(name) for name in os.listdir(checkpoint_dir)
                  if name.isdigit() and os.path.isdir(os.path.join(checkpoint_dir, name)))


class RunDir:
    """The files of one run directory (nothing is read or written until asked)."""

    def __init__(self, path: str):
        self.path = os.fspath(path)

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    # ------------------------------------------------------------------------------- where
    @property
    def checkpoint_dir(self) -> str:
        return self._file(CHECKPOINTS)

    @property
    def metrics_path(self) -> str:
        return self._file(METRICS_FILE)

    @property
    def loss_png(self) -> str:
        return self._file(LOSS_PNG)

    @property
    def run_config_path(self) -> str:
        return self._file(RUN_CONFIG_FILE)

    @property
    def tokenizer_path(self) -> str:
        return self._file(TOKENIZER_FILE)

    @property
    def data_meta_path(self) -> str:
        return self._file(DATA_META_FILE)

    @property
    def sft_config_path(self) -> str:
        return self._file(SFT_CONFIG_FILE)

    @property
    def responses_path(self) -> str:
        return self._file(RESPONSES_FILE)

    @property
    def confusion_png(self) -> str:
        return self._file(CONFUSION_PNG)

    @property
    def set_aside_dir(self) -> str:
        return self._file(SET_ASIDE_DIR)

    @property
    def tensorboard_dir(self) -> str:
        return self.path

    @property
    def wandb_dir(self) -> str:
        return self._file(WANDB_DIR)

    @property
    def wandb_id_path(self) -> str:
        return os.path.join(self.wandb_dir, WANDB_ID_FILE)

    def tensorboard_files(self) -> List[str]:
        """The TensorBoard event files' names, oldest first (their names start with a timestamp)."""
        if not os.path.isdir(self.path):
            return []
        return sorted(name for name in os.listdir(self.path)
                      if name.startswith(TFEVENTS_PREFIX) and os.path.isfile(self._file(name)))

    @property
    def lock_path(self) -> str:
        return self._file(LOCK_NAME)

    def writer_pid(self) -> Optional[int]:
        """The pid of the live process that holds this run's lock (RunDirLock), else None. Read
        from the lock file without locking it: a reader never makes a writer wait or fail. A killed
        writer's pid stays in the file, so the pid must also be a live process."""
        try:
            with open(self.lock_path, "rb") as f:
                text = f.read(64).decode(errors="replace").strip()
        except OSError:
            return None
        if not text.isdigit() or int(text) == os.getpid():
            return None
        try:
            os.kill(int(text), 0)
        except ProcessLookupError:
            return None
        except PermissionError:  # alive, another user's
            pass
        return int(text)

    def task(self) -> Optional[str]:
        """"classify", "sft" or "lm" from run_config.json (jaxgpt.train.run_dir.run_task); None when
        out_dir holds no readable run_config.json."""
        try:
            return run_task(self.read_run_config())
        except (ConfigError, OSError):
            return None

    def holds_a_run(self) -> bool:
        """A train.py/finetune.py run directory (a checkpoint folder, or the run's options)."""
        return os.path.isdir(self.checkpoint_dir) or os.path.isfile(self.run_config_path)

    # ---------------------------------------------------------------------- typed metadata
    def read_run_config(self) -> Dict[str, Any]:
        """run_config.json's options (ConfigError naming the file when unreadable)."""
        return read_json_object(self.run_config_path, error=ConfigError)

    def write_run_config(self, options: Dict[str, Any]) -> None:
        write_json_atomic(self.run_config_path, options)

    def read_data_meta(self) -> Dict[str, Any]:
        """data_meta.json (ConfigError naming the file when unreadable)."""
        return read_json_object(self.data_meta_path, error=ConfigError)

    def write_data_meta(self, meta: Dict[str, Any]) -> None:
        write_json_atomic(self.data_meta_path, meta)

    def read_tokenizer(self) -> Tokenizer:
        """The run's tokenizer (TokenizerError naming the file when missing or malformed)."""
        return load_tokenizer(self.tokenizer_path)

    def write_tokenizer(self, tokenizer: Tokenizer) -> None:
        tokenizer.save(self.tokenizer_path)

    # ------------------------------------------------------------------------- checkpoints
    def checkpoint_steps(self) -> List[int]:
        """Steps of the committed checkpoints, ascending (orbax's temporary folders excluded)."""
        return committed_steps(self.checkpoint_dir)

    def set_aside_checkpoints_after(self, step: int) -> List[int]:
        """Move the checkpoints later than `step` into set_aside_dir (as `<step>-<unix time>`), so a
        run resumed from `step` goes on from there without deleting them; returns their steps."""
        later = [s for s in self.checkpoint_steps() if s > step]
        if later:
            os.makedirs(self.set_aside_dir, exist_ok=True)
            stamp = int(time.time())
            for s in later:
                os.replace(os.path.join(self.checkpoint_dir, str(s)), os.path.join(self.set_aside_dir, f"{s}-{stamp}"))
        return later

    def latest_step(self) -> Optional[int]:
        steps = self.checkpoint_steps()
        return steps[-1] if steps else None


def check_out_dir(out_dir: str, key: str = "out_dir") -> None:
    """Refuse an out_dir that cannot become a run directory, before anything is written (key: the
    option the error names; `jaxgpt export --to` checks its directory the same way)."""
    check_folder_target(out_dir, f"--{key}={out_dir}", error=RunDirError)


class RunDirLock:
    """Exclusive writer lock on out_dir (creates out_dir). Use as a context manager or call
    acquire()/release(). `created` says whether this lock made the directory."""

    def __init__(self, out_dir: str):
        self.out_dir = os.path.abspath(out_dir)
        self.path = RunDir(self.out_dir).lock_path
        self.created = False
        self._lock = FileLock(self.path, error=RunDirError, make_dirs=False,
                              busy="{folder} is in use by another run (pid {pid}); wait for it to finish "
                                   "or choose another --out_dir",
                              unwritable="cannot write to --out_dir={folder}: {reason}")

    def acquire(self) -> "RunDirLock":
        try:
            os.makedirs(self.out_dir)
            self.created = True
        except FileExistsError:  # there already, or made a moment ago by a run racing this one
            pass
        except OSError as exc:
            raise RunDirError(f"cannot write to --out_dir={self.out_dir}: {exc.strerror or exc}") from None
        self._lock.acquire()
        return self

    def release(self) -> None:
        self._lock.release()

    def remove_created_dir(self) -> None:
        """After a failed run that made out_dir: leave no partial directory behind."""
        if self.created:
            shutil.rmtree(self.out_dir, ignore_errors=True)

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def clear_run_files(out_dir: str) -> List[str]:
    """Remove what a run wrote (RUN_FILES and TensorBoard's event files); returns the names
    removed. Call under the lock."""
    removed = []
    for name in RUN_FILES + tuple(RunDir(out_dir).tensorboard_files()):
        path = os.path.join(out_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    return removed
