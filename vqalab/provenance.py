"""What a result depends on besides its config: the code that produced it and the data it saw.

``code_fingerprint()`` hashes the source of the ``vqalab`` package (every ``.py`` file, by path and
content): any edit to a model, the loop, a loader or a metric changes it. Runs record it with the
data set's identity (``vqalab.data.data_status(spec).identity()``), and a sweep reuses a finished
run only when its config, its code fingerprint and its data identity all match.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
FINGERPRINT_DIGITS = 12


def code_fingerprint(package_dir: Path | None = None) -> str:
    """Short SHA-256 of every ``.py`` file under the package (relative path and bytes), in path order."""
    root = Path(package_dir) if package_dir is not None else PACKAGE_DIR
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:FINGERPRINT_DIGITS]
