"""What a result depends on besides its config: the code that produced it and the data it saw.

``code_fingerprint()`` hashes the source of the modules that can change a trained result
(``RESULT_CODE``: the modules ``fit`` imports: models, data, the loop, schedules, metrics, config…).
The report, the CLI, the studies, monitoring, the sweep queue and the measurement tools are outside
it, so an edit there reuses every finished run; ``tests/test_provenance.py`` checks the list against
``fit``'s import closure, so a module ``fit`` starts to import cannot be left out unnoticed.
Runs record it with the data set's identity (``vqalab.data.data_status(spec).identity()``), and a
sweep reuses a finished run only when its config hash (which holds the content digest of every
weights file the model loads, ``file_digest``), its code fingerprint and its data identity all match.

``source_fingerprint(modules)`` hashes the modules named and every ``vqalab`` module they import,
read from the source (nothing is imported): the report's freeze key uses it for a study's own code.
"""

from __future__ import annotations

import ast
import hashlib
import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE = "vqalab"
FINGERPRINT_DIGITS = 12

# Files and subpackages (paths under vqalab/) whose source can change a trained result.
RESULT_CODE = ("config.py", "data", "devices.py", "distributed.py", "engine.py", "metrics.py", "models",
               "params.py", "paths.py", "registry.py", "runs.py", "schedules.py", "text.py", "train.py")
# Imported by ``fit`` but unable to change what it trains or records as a result, with the reason.
NOT_RESULT_CODE = {
    "__init__.py": "the package docstring and version",
    "monitor.py": "TensorBoard view of a run (metrics.csv and summary.json are written by train.py and runs.py)",
    "provenance.py": "computes this fingerprint",
    "bench.py": "imported only for batch_size auto, whose measured choice is recorded in the run's summary",
    "threads.py": "chooses the CPU thread count, which the run's summary records",
    "io.py": "writes a file atomically (the bytes are the caller's), reads a JSON record back, digests JSON",
}

HASH_CHUNK = 1 << 20  # bytes read at a time when hashing a file
_DIGESTS: dict[tuple, str] = {}  # (path, size, mtime_ns, inode) → SHA-256
_IMPORTS: dict[tuple, list[str]] = {}  # (path, size, mtime_ns, inode) → the vqalab modules it imports


def _source_files(entry: Path) -> list[Path]:
    """A module file, or every ``.py`` file of a package folder."""
    if entry.is_dir():
        return sorted(p for p in entry.rglob("*.py") if "__pycache__" not in p.parts)
    return [entry] if entry.is_file() else []


def _hash_files(files, root: Path) -> str:
    """Short SHA-256 over the files' paths (relative to ``root``) and bytes, in path order."""
    digest = hashlib.sha256()
    for path in sorted(set(files)):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:FINGERPRINT_DIGITS]


def result_code_files(package_dir: Path | None = None) -> list[Path]:
    root = Path(package_dir) if package_dir is not None else PACKAGE_DIR
    return [f for entry in RESULT_CODE for f in _source_files(root / entry)]


def code_fingerprint(package_dir: Path | None = None) -> str:
    """Short SHA-256 of the ``RESULT_CODE`` source (relative path and bytes of each file)."""
    root = Path(package_dir) if package_dir is not None else PACKAGE_DIR
    return _hash_files(result_code_files(root), root)


def tree_fingerprint(folder: Path) -> str:
    """Short SHA-256 of every file under ``folder`` (relative path and bytes): templates, style."""
    return _hash_files([p for p in Path(folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts], folder)


def module_file(name: str, root: Path) -> Path | None:
    """The source file of module ``vqalab.x.y`` under ``root`` (the package folder), None if none."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py") if len(parts) > 1 else None, base / "__init__.py"):
        if candidate is not None and candidate.is_file():
            return candidate
    return None


def imported_names(source: str) -> list[str]:
    """Every ``vqalab`` module (or module attribute) a source text imports, lazy imports included."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return [n for n in names if n.split(".")[0] == PACKAGE]


def import_closure(names, package_dir: Path | None = None) -> list[Path]:
    """Source files of the ``vqalab`` modules ``names``, their packages and everything they import."""
    root = Path(package_dir) if package_dir is not None else PACKAGE_DIR
    seen: set[Path] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        path = module_file(name, root)
        if path is None or path in seen:
            continue  # an attribute (a function imported from a module), or done already
        seen.add(path)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a and a.b
        todo += _file_imports(path)
    return sorted(seen)


def _file_imports(path: Path) -> list[str]:
    """``imported_names`` of a source file, cached by path, size and modification time (parsing is
    the slow part: a report reads the same modules for every study)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _IMPORTS:
        _IMPORTS[key] = imported_names(path.read_text(encoding="utf-8"))
    return _IMPORTS[key]


def source_fingerprint(names, package_dir: Path | None = None) -> str:
    """Short SHA-256 of the ``import_closure`` of ``names``."""
    root = Path(package_dir) if package_dir is not None else PACKAGE_DIR
    return _hash_files(import_closure(names, root), root)


def file_digest(path: Path) -> str | None:
    """SHA-256 of a file's bytes (None: no such file), cached by path, size and modification time
    so that hashing a config again (every sweep point) does not read a large weights file again."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(HASH_CHUNK):
                digest.update(chunk)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]
