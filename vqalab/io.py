"""Files and records, below every other layer (data caches, run folders and report weeks alike):
atomic replacement with fsync, permissions from the umask, and a full disk named as such
(``write_atomically``); a JSON record read back with its damage named (``read_json_record``); the
one short digest of a JSON-able value (``json_digest``: config hashes, data fingerprints, cache and
freeze keys)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from vqalab.registry import ConfigError

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
