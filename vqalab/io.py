"""Files and records, below every other layer (data caches, run folders and report weeks alike):
atomic replacement with fsync, permissions from the umask, and a full disk named as such
(``write_atomically``); a JSON record read back with its damage named (``read_json_record``); the
one short digest of a JSON-able value (``json_digest``: config hashes, data fingerprints, cache and
freeze keys); a new folder no other caller shares (``new_folder``), an exclusive lock on one
(``lock_folder``), and files opened without following a planted link (``open_no_follow``)."""

from __future__ import annotations

import errno
import fcntl
import gc
import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vqalab.registry import ConfigError

LOCK_FILE = ".lock"  # in a locked folder: who holds it (``lock_folder``)
# A failed write with less free space than this on its file system is reported as "disk full":
# torch's zip writer hides the ENOSPC behind "unexpected pos N vs M".
DISK_FULL_BYTES = 16 * 2**20


class DiskFullError(OSError):
    """A write stopped because the device holding ``path`` is full (or the quota is exhausted)."""

    def __init__(self, path: Path):
        super().__init__(errno.ENOSPC, f"no space left on device while writing {path}")
        self.path = path

    def __str__(self) -> str:
        return self.strerror


def file_mode() -> int:
    """Permissions of a newly created file under the current umask (``mkstemp`` forces 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def free_bytes(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def is_disk_full(err: BaseException, folder: Path) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(err, RuntimeError) and ("unexpected pos" in str(err) or "No space left" in str(err)):
        try:
            return free_bytes(folder) < DISK_FULL_BYTES
        except OSError:
            return False
    return False


def write_atomically(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file, fsync it, then rename it over ``path``: a
    reader sees the old file or the new one, never half of one. Permissions follow the umask."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except Exception as err:
        disk_full = is_disk_full(err, path.parent)  # asked before the partial file frees its space
        Path(tmp).unlink(missing_ok=True)
        if disk_full:
            raise DiskFullError(path) from err
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def json_digest(value: Any, *, length: int) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``value``'s canonical JSON: keys sorted,
    the separators ``", "`` and ``": "`` (json's defaults, so config hashes and freeze keys written
    before this function keep their values), ASCII only, and ``str()`` of anything JSON has no
    type for (a Path, a date). Equal values give equal digests whatever their key order."""
    text = json.dumps(value, sort_keys=True, separators=(", ", ": "), ensure_ascii=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def load_large_json(path: Path) -> Any:
    """``json.loads`` of a file of millions of entries, with the cyclic garbage collector paused:
    each new dict and list counts towards a collection, and the full collections that follow find
    nothing to free (parsed JSON holds no cycles). Halves the parse of VQA v2's 336 MB annotations."""
    text = path.read_text()
    enabled = gc.isenabled()
    gc.disable()
    try:
        return json.loads(text)
    finally:
        if enabled:
            gc.enable()


def read_json_record(path: Path) -> dict:
    """A JSON object kept in a file (a run's or a week's ``summary.json``), refused as a
    ``ConfigError`` naming the file when it is not UTF-8, not JSON, or not an object."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})") from None
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(record, dict):
        raise ConfigError(f"{path}: expected a JSON object, got {type(record).__name__}")
    return record


def new_folder(parent: Path, stem: str) -> Path:
    """A new folder ``parent/stem`` (``stem-1``, ``stem-2``… when taken): ``mkdir`` fails on an
    existing folder, so two callers, even in the same second, never share one."""
    parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1000):
        candidate = parent / (stem if attempt == 0 else f"{stem}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new folder under {parent}")


class FolderBusy(ConfigError):
    """Another process holds the folder's lock."""


@contextmanager
def lock_folder(folder: Path, what: str, lock_file: Path | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``what``: "run folder", "report week") or refuse.

    ``flock`` on ``lock_file`` (default ``folder/.lock``): the operating system drops it when the
    holder ends, even when killed, so a stale lock never blocks anyone. The file records the
    holder's PID for the message.
    """
    path = lock_file or folder / LOCK_FILE
    fd = open_no_follow(path, os.O_RDWR, "lock file")
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise FolderBusy(f"{what} {folder} is in use by another process ({holder}): wait for it to "
                             "finish, or stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"PID {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


# A symlink at the path is not followed (O_NOFOLLOW); a new file is created with O_EXCL, so nothing
# slipped in at that name between a check and the open is written through.
NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # O_NONBLOCK: a FIFO there cannot hang the open


def open_no_follow(path: Path, flags: int, what: str) -> int:
    """File descriptor of ``path`` opened with ``flags`` (``os.O_RDWR``, ``os.O_WRONLY | os.O_APPEND``):
    created new with ``O_EXCL`` when missing, else opened without following a symbolic link.

    A symbolic link, a folder or anything but a regular file at ``path`` is refused with a
    ConfigError naming it (``what``: "lock file", "log file"): on a shared machine a link planted
    there would otherwise have its target overwritten with this user's rights.
    """
    for _ in range(2):  # the file may vanish between the two opens: then create it again
        try:
            fd = os.open(path, flags | NO_FOLLOW | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            try:
                fd = os.open(path, flags | NO_FOLLOW)
            except FileNotFoundError:
                continue
            except OSError as err:
                raise ConfigError(_refused_file(path, what, err)) from None
        except OSError as err:
            raise ConfigError(_refused_file(path, what, err)) from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ConfigError(f"{what} {path} is not a regular file: remove it (the file is created anew)")
        return fd
    raise ConfigError(f"{what} {path} kept disappearing while it was opened: is another process removing it?")


def _refused_file(path: Path, what: str, err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return f"{what} {path} is a symbolic link: not followed; remove it (the file is created anew)"
    if err.errno == errno.EISDIR:
        return f"{what} {path} is a folder, not a file: remove it (the file is created anew)"
    if err.errno == errno.ENXIO:  # a FIFO or socket with no reader
        return f"{what} {path} is not a regular file: remove it (the file is created anew)"
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{what} {path} cannot be written by this user ({err.strerror})"
    if err.errno == errno.ENOTDIR:
        return f"{what} {path}: a part of the path is a file, not a folder"
    return f"{what} {path}: {err.strerror or err}"
