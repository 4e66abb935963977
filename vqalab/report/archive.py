"""Writing a week's files, and keeping earlier ones: nothing already written is overwritten."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

from vqalab.io import new_folder, write_atomically

PREVIOUS_DIR = "previous"  # earlier outputs of the same week, kept when a study runs again


def write_text(path: Path, text: str) -> None:
    """Write through a temporary file and rename; permissions follow the umask (reports are shared)."""
    write_atomically(path, lambda f: f.write(text.encode("utf-8")))


def archive_outputs(week_dir: Path, files: list[Path], copies: list[Path] = ()) -> Path:
    """Move ``files`` (and copy ``copies``) to ``week_dir/previous/<timestamp>/``: a re-run never loses
    earlier outputs. A copied file stays in place until its new version replaces it by a rename, so
    the week always has an index, even when the re-run is killed. Symbolic links are moved or copied
    as links, never followed."""
    target = new_folder(week_dir / PREVIOUS_DIR, dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    for path in files:
        shutil.move(str(path), str(target / path.name))
    for path in copies:
        shutil.copy2(path, target / path.name, follow_symlinks=False)
    return target
