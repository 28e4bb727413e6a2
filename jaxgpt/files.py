"""Files written whole or not at all, JSON read with one clear error, downloads checked by sha256, and
exclusive file locks: the one place jaxgpt does each of these.

    with atomic_write("out/meta.json") as f: ...     # a temporary beside the target, renamed into place
    write_json_atomic(path, value)                   # the same, for JSON
    save_figure_atomic(fig, "out/loss.png")          # matplotlib infers the format: the temporary keeps the suffix
    with atomic_directory("out/hf") as tmp: ...     # a whole folder: filled beside the target, renamed into place
    read_json_object(path, error=ConfigError)        # a dict, or one line naming the file
    fetch(url, timeout=..., error=..., offline_hint=...)            # the bytes at url, or one line
    fetch_once(url, path, sha256=..., what=..., error=DataError...)  # download once, verify, keep
    with FileLock(path, busy="... is in use"): ...   # one process at a time; the kernel drops it on death
    check_folder_target(out_dir, f"--out_dir={out_dir}", error=ConfigError)  # before the first write

A reader never sees a half-written file: a crash leaves the old file (or nothing) and at most a
`<name>.tmp<pid>` beside it, which the next write replaces.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import urllib.error
import urllib.request
import zipfile
from typing import Any, Callable, Dict, Iterator, Optional, Type

__all__ = ["AtomicFile", "atomic_write", "write_bytes_atomic", "write_json_atomic", "save_figure_atomic", "read_json",
           "read_json_object", "sha256_of_file", "fetch", "fetch_once", "FileLock", "temporary_path",
           "atomic_directory", "check_folder_target"]

ErrorType = Type[Exception]


def temporary_path(path: str, keep_suffix: bool = False) -> str:
    """The temporary beside `path` that an atomic write goes through (same directory: the rename is
    atomic). keep_suffix puts the pid before the extension, for writers that infer a format from it."""
    path = os.fspath(path)
    if keep_suffix:
        root, ext = os.path.splitext(path)
        return f"{root}.tmp{os.getpid()}{ext}"
    return f"{path}.tmp{os.getpid()}"


class AtomicFile:
    """A file written through a temporary beside `path` and renamed over it by commit(); abort()
    (or an exception inside `with`) removes the temporary and leaves `path` as it was. For writers
    that keep the file open across calls (a shard filled document by document); atomic_write is the
    one-block form."""

    def __init__(self, path: str, mode: str = "w", *, encoding: Optional[str] = "utf-8", fsync: bool = False,
                 keep_suffix: bool = False):
        self.path, self.fsync = os.fspath(path), fsync
        self.tmp = temporary_path(self.path, keep_suffix)
        self.file = open(self.tmp, mode, encoding=None if "b" in mode else encoding)

    def commit(self) -> None:
        if self.fsync:
            self.file.flush()
            os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        with contextlib.suppress(OSError):
            os.remove(self.tmp)

    def __enter__(self) -> Any:
        return self.file

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()


def atomic_write(path: str, mode: str = "w", *, encoding: Optional[str] = "utf-8", fsync: bool = False,
                 keep_suffix: bool = False) -> AtomicFile:
    """`with atomic_write(path) as f:` writes a temporary beside `path`; a clean exit renames it over
    `path`, an exception removes it (the old file stays as it was)."""
    return AtomicFile(path, mode, encoding=encoding, fsync=fsync, keep_suffix=keep_suffix)


def write_bytes_atomic(path: str, data: bytes, *, fsync: bool = False) -> None:
    with atomic_write(path, "wb", fsync=fsync) as f:
        f.write(data)


def write_json_atomic(path: str, value: Any, *, indent: Optional[int] = 2, sort_keys: bool = True,
                      fsync: bool = False, trailing_newline: bool = False, ensure_ascii: bool = False) -> None:
    """JSON (UTF-8, non-ASCII kept unless ensure_ascii) written through a temporary and renamed into place."""
    with atomic_write(path, fsync=fsync) as f:
        json.dump(value, f, indent=indent, sort_keys=sort_keys, ensure_ascii=ensure_ascii)
        if trailing_newline:
            f.write("\n")


def save_figure_atomic(fig: Any, path: str, **savefig_kwargs: Any) -> str:
    """fig.savefig through a temporary with the same suffix (matplotlib picks the format from it)."""
    tmp = temporary_path(path, keep_suffix=True)
    try:
        fig.savefig(tmp, **savefig_kwargs)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


@contextlib.contextmanager
def atomic_directory(path: str) -> Iterator[str]:
    """`with atomic_directory(path) as tmp:` fill the new folder tmp (`<path>.tmp<pid>`, beside path); a
    clean exit renames it to path, replacing whatever is there (the caller has decided it may), and an
    exception removes it and leaves path as it was. A killed process leaves path whole, old or new
    (at worst missing between the two renames, with both folders beside it), never half-written."""
    path = os.path.abspath(os.fspath(path))
    tmp = temporary_path(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)  # a killed earlier process with this pid
    os.mkdir(tmp)
    try:
        yield tmp
        if os.path.lexists(path):
            old = f"{tmp}.old"
            os.rename(path, old)
            os.rename(tmp, path)
            if os.path.isdir(old) and not os.path.islink(old):
                shutil.rmtree(old)
            else:
                os.remove(old)
        else:
            os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_json(path: str, *, error: ErrorType = ValueError, what: str = "",
              unreadable: Optional[Callable[[str], str]] = None,
              invalid: Optional[Callable[[str], str]] = None) -> Any:
    """The JSON value in `path`, or `error` with one line naming the file (missing, unreadable, not JSON).
    `unreadable(reason)` / `invalid(reason)` word those two lines instead, for a reader whose message
    also says what to do next."""
    label = f"{what} {path}" if what else str(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        reason = str(exc.strerror or exc)
        raise error(unreadable(reason) if unreadable else f"cannot read {label}: {reason}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(invalid(str(exc)) if invalid else f"{label} is not valid JSON ({exc})") from None


def read_json_object(path: str, *, error: ErrorType = ValueError, what: str = "") -> Dict[str, Any]:
    """Like read_json, and the value must be a JSON object."""
    value = read_json(path, error=error, what=what)
    if not isinstance(value, dict):
        raise error(f"{f'{what} {path}' if what else path} does not hold a JSON object")
    return value


def sha256_of_file(path: str, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, *, timeout: float, error: ErrorType, offline_hint: str,
          check: Optional[Callable[[bytes], None]] = None, what: str = "", member: Optional[str] = None) -> bytes:
    """The bytes at `url` (with `member`: that file of the zip archive there), or `error` with one
    line: what failed and what to do offline (`offline_hint`); `what` names the download in it.
    `check(data)` raises for content that must not be kept (a wrong sha256)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
        if member is not None:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                data = archive.read(member)
    except (urllib.error.URLError, OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        reason = getattr(exc, "reason", None) or exc
        if what:
            raise error(f"could not download {what} ({url}: {reason}): {offline_hint}") from None
        raise error(f"could not download {url} ({reason}): {offline_hint}") from None
    if check is not None:
        check(data)
    return data


def fetch_once(url: str, path: str, *, sha256: str, what: str, timeout: float, error: ErrorType,
               offline_hint: str, wrong_hint: Optional[str] = None, member: Optional[str] = None,
               check: Optional[Callable[[bytes], None]] = None) -> bytes:
    """The bytes kept at `path` when their sha256 is `sha256` (no network); otherwise fetched from
    `url`, verified before anything is kept, and written to `path` atomically (folders made).
    Verified by `check(data)` when given, else by the sha256: a mismatch is `error` ending in
    "not kept. " + (wrong_hint or offline_hint)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise error(f"cannot read {path}: {exc.strerror or exc}") from None
        if hashlib.sha256(data).hexdigest() == sha256:
            return data

    def same_sha256(data: bytes) -> None:
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise error(f"the file downloaded from {url} is not {what} (sha256 {got}, expected {sha256}); "
                        f"not kept. {wrong_hint or offline_hint}")

    data = fetch(url, timeout=timeout, error=error, offline_hint=offline_hint, check=check or same_sha256,
                 what=what, member=member)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_bytes_atomic(path, data)
    return data


def nearest_existing(path: str) -> str:
    """path, or its nearest ancestor that exists."""
    while not os.path.exists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_folder_target(path: str, name: str, error: ErrorType = ValueError) -> None:
    """Refuse a folder that cannot be made or written (a file, a path under a file, a read-only
    ancestor) in one line starting with `name` (e.g. "--out_dir=out"), before anything is written."""
    full = os.path.abspath(path)
    existing = nearest_existing(full)
    where = name if existing == full else f"{name}: {existing}"
    if not os.path.isdir(existing):
        raise error(f"{where} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise error(f"{where} is not writable")


class FileLock:
    """An exclusive, non-blocking `flock` on `path` (created with its folder). While held the file
    holds the holder's pid; the kernel drops the lock when the process dies, however it dies, so a
    stale lock never blocks the next process. A second taker gets `error(busy.format(pid=...))`.
    Both messages are templates: `busy` of {pid}, {path} and {folder}, `unwritable` (the lock file
    cannot be made) of {folder} and {reason}."""

    def __init__(self, path: str, *, busy: str, error: ErrorType = ValueError, make_dirs: bool = True,
                 unwritable: str = "cannot write to {folder}: {reason}"):
        self.path = os.path.abspath(path)
        self.busy, self.error, self.make_dirs, self.unwritable = busy, error, make_dirs, unwritable
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FileLock":
        import fcntl  # POSIX only; imported here so the module imports anywhere

        try:
            if self.make_dirs:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self.error(self.unwritable.format(folder=os.path.dirname(self.path),
                                                    reason=exc.strerror or exc)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                message = self.busy.format(pid=holder, path=self.path, folder=os.path.dirname(self.path))
                raise self.error(message) from None
            raise self.error(f"cannot lock {self.path}: {exc.strerror or exc}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        import fcntl  # POSIX only, as in acquire

        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)  # a finished holder leaves the file empty
        except OSError:  # a full or read-only disk: the kernel still drops the lock below
            pass
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
