"""Run folders, checkpoints and records. Nothing here ever overwrites an earlier result.

A run folder ``runs/<experiment>/<YYYYmmdd-HHMMSS>-<name>/`` is created with ``mkdir`` that fails
if the folder exists, so two runs (even started in the same second) never share one. Files are
written to a temporary name and renamed, so an interrupted write never destroys what was there;
they get the permissions the umask gives, so lab members sharing a machine can read each other's
runs. A folder being written is locked (``folder_lock``): a second writer is refused, naming the
process holding it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from vqalab.paths import resolve
from vqalab.registry import ConfigError

CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"
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


class FolderBusy(ConfigError):
    """Another process holds the folder's lock."""


@contextmanager
def folder_lock(folder: Path, what: str, lock_file: Path | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``folder`` (``what``: "run folder", "report week") or refuse.

    ``flock`` on ``lock_file`` (default ``folder/.lock``): the operating system drops it when the
    holder ends, even when killed, so a stale lock never blocks anyone. The file records the
    holder's PID for the message.
    """
    path = lock_file or folder / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
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


def check_writable_folder(path: str | Path, what: str) -> Path:
    """``path`` resolved, refused now (not after the data loaded) if it cannot hold new folders."""
    folder = resolve(path)
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} = {str(path)!r}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} = {str(path)!r}: {existing} is not writable by this user")
    return folder


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


def safe_name(name: str) -> str:
    """Folder-safe version of a user-typed name (``<script>`` → ``script``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("._")
    return cleaned[:80] or "run"


def new_run_dir(runs_root: str | Path, experiment: str, name: str) -> Path:
    parent = resolve(runs_root) / safe_name(experiment)
    parent.mkdir(parents=True, exist_ok=True)
    stem = f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_name(name)}"
    for attempt in range(1000):
        candidate = parent / (stem if attempt == 0 else f"{stem}-{attempt}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run folder under {parent}")


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file, fsync it, then rename it over ``path``."""
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


def append_text(path: Path, text: str) -> None:
    """Append to a file (e.g. a metrics row), reporting a full disk like ``atomic_write_bytes``."""
    try:
        with open(path, "a", newline="") as f:
            f.write(text)
    except OSError as err:
        if is_disk_full(err, path.parent):
            raise DiskFullError(path) from err
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write(json.dumps(data, indent=2, default=str).encode()))


def write_yaml(path: Path, data: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write(yaml.safe_dump(data, sort_keys=False).encode()))


def save_checkpoint(path: Path, payload: dict) -> None:
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path) -> dict:
    """Checkpoints hold only tensors and plain Python values: ``weights_only=True`` loads them."""
    return torch.load(resolve(path), map_location="cpu", weights_only=True)


def model_from_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from the checkpoint alone (its registry name and resolved kwargs)."""
    from vqalab.models import create_model

    ckpt = load_checkpoint(path)
    model = create_model(ckpt["model_name"], **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    return model, ckpt


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"epoch_{epoch:03d}.pt"


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=resolve("."), timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
