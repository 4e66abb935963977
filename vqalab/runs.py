"""Run folders, checkpoints and records. Nothing here ever overwrites an earlier result.

A run folder ``runs/<experiment>/<YYYYmmdd-HHMMSS>-<name>/`` is created with ``mkdir`` that fails
if the folder exists, so two runs (even started in the same second) never share one. Files are
written to a temporary name and renamed, so an interrupted write never destroys what was there.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from vqalab import distributed
from vqalab.paths import resolve

CHECKPOINT_DIR = "checkpoints"


def safe_name(name: str) -> str:
    """Folder-safe version of a user-typed name (``<script>`` → ``script``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("._")
    return cleaned[:80] or "run"


def new_run_dir(runs_root: str | Path, experiment: str, name: str) -> Path:
    """A new, empty run folder (under torchrun: rank 0's, shared with the other ranks)."""
    return distributed.share_run_dir(lambda: _create_run_dir(runs_root, experiment, name))


def _create_run_dir(runs_root: str | Path, experiment: str, name: str) -> Path:
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
    """Call ``write(file_object)`` on a temporary file, fsync it, then rename it over ``path``.

    Under torchrun only rank 0 writes (the ranks hold the same state); the others skip the write.
    """
    if not distributed.is_main():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
