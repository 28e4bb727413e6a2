"""A training run's directory: who may write it, and what it holds.

One writer at a time: `RunDirLock` takes an exclusive `fcntl.flock` on `<out_dir>/.lock`. The
kernel drops the lock when its process dies, however it dies, so a stale lock from a killed run
never blocks the next one; while a run is live, a second writer is refused with the holder's pid.
The file holds the pid only while the lock is held, so a finished run leaves it empty (and the
directory's contents as the run left them).
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
from typing import List, Optional

from jaxgpt.cli import ConfigError

__all__ = ["RunDirError", "RunDirLock", "check_out_dir", "clear_run_files", "RUN_FILES", "LOCK_NAME"]

LOCK_NAME = ".lock"
# What a run writes into out_dir (and --overwrite=True removes); nothing else there is touched.
RUN_FILES = ("checkpoints", "metrics.jsonl", "loss.png", "run_config.json", "tokenizer.json", "data_meta.json")


class RunDirError(ConfigError):
    """The run directory cannot be used: one line naming it."""


def _nearest_existing(path: str) -> str:
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_out_dir(out_dir: str) -> None:
    """Refuse an out_dir that cannot become a run directory, before anything is written."""
    path = os.path.abspath(out_dir)
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunDirError(f"--out_dir={out_dir} is a file, not a directory")
    existing = _nearest_existing(path)
    if not os.path.isdir(existing):
        raise RunDirError(f"--out_dir={out_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RunDirError(f"--out_dir={out_dir}: {existing} is not writable")


class RunDirLock:
    """Exclusive writer lock on out_dir (creates out_dir). Use as a context manager or call
    acquire()/release(). `created` says whether this lock made the directory."""

    def __init__(self, out_dir: str):
        self.out_dir = os.path.abspath(out_dir)
        self.path = os.path.join(self.out_dir, LOCK_NAME)
        self.created = False
        self._fd: Optional[int] = None

    def acquire(self) -> "RunDirLock":
        try:
            try:
                os.makedirs(self.out_dir)
                self.created = True
            except FileExistsError:  # there already, or made a moment ago by a run racing this one
                pass
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(f"cannot write to --out_dir={self.out_dir}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirError(f"{self.out_dir} is in use by another run (pid {holder}); wait for it to finish "
                                  "or choose another --out_dir") from None
            raise RunDirError(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:  # a full or read-only disk: the kernel still drops the lock below
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def remove_created_dir(self) -> None:
        """After a failed run that made out_dir: leave no partial directory behind."""
        if self.created:
            shutil.rmtree(self.out_dir, ignore_errors=True)

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def clear_run_files(out_dir: str) -> List[str]:
    """Remove what a run wrote (RUN_FILES); returns the names removed. Call under the lock."""
    removed = []
    for name in RUN_FILES:
        path = os.path.join(out_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    return removed
