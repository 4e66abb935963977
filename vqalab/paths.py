"""Where relative paths point: the project root, so notebooks run the same from anywhere.

JupyterLab starts a kernel in ``notebooks/``; papermill from the repo root. Both must find
``params/``, ``runs/`` and ``reports/``. Relative paths are therefore resolved against the project
root: ``$VQALAB_ROOT`` when set, else the nearest ancestor of the working directory holding a
``params/`` folder or a ``pyproject.toml``, else the working directory.

Local data sets and weights live under one data root: ``$VQALAB_DATA`` when set, else ``data/``
under the project root. Relative data and weights paths (``RAF-DB/basic``, ``weights/ir50.pth``)
are taken from it.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT_MARKERS = ("params", "pyproject.toml")
CACHE_KEY_DIGITS = 16  # hex digits of the key (``io.json_digest``) in a cache file's name


def project_root(start: str | Path | None = None) -> Path:
    env = os.environ.get("VQALAB_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if any((folder / marker).exists() for marker in ROOT_MARKERS):
            return folder
    return here


def resolve(path: str | Path) -> Path:
    """An absolute path for ``path``; relative paths are taken from the project root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else project_root() / path


def data_root() -> Path:
    """Where local data sets and weights are: ``$VQALAB_DATA``, else ``data/`` under the project root."""
    env = os.environ.get("VQALAB_DATA")
    return Path(env).expanduser().resolve() if env else project_root() / "data"


def resolve_data(path: str | Path) -> Path:
    """An absolute path for a data set or weights file; relative paths are taken from the data root."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else data_root() / path


def cache_dir() -> Path:
    """Derived data (decoded images, feature caches); safe to delete."""
    return Path(os.environ.get("VQALAB_CACHE", resolve(".cache")))
