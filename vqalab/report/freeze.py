"""Re-running a week incrementally, as Quarto's freeze does: an unchanged study keeps its pages.

A study's freeze key hashes what its pages depend on: the notebook file, the preset (its name, the
parameter values passed to the notebook, and the contents of project files those values name, such
as a ``params_file``), the code that trains (``code_fingerprint``), the study's own code (its
``vqalab.studies`` module and every ``vqalab`` module the notebook imports, read from the source:
``provenance.source_fingerprint``), the page templates and style (``vqalab/report_templates/``) and
the identity of its data set (name, root, counts, fingerprint; ``vqalab.data.data_status``). The
report's own Python (``vqalab/report/``) is not in it: an edit there keeps every page. Each
study's record in ``summary.json`` carries its key; the next run of the same week keeps a study
whose key is unchanged and whose earlier run succeeded, with its files as they are. Any other
study runs again (its earlier files move to ``previous/<time>/`` first); ``force`` runs them all.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vqalab import provenance
from vqalab.io import json_digest
from vqalab.provenance import FINGERPRINT_DIGITS
from vqalab.report.execute import STATUS_OK

FREEZE_KEY, FREEZE_INPUTS = "freeze_key", "freeze_inputs"  # keys of a study's record
KEPT_FROM = "kept_from"  # a kept study's record: when its pages were made
DATA_IDENTITY_KEYS = ("name", "root", "counts", "fingerprint", "found")
TEMPLATES = "report_templates"  # under the package: the pages' Jinja and nbconvert templates, style.css


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:FINGERPRINT_DIGITS]


def _json_digest(value) -> str:
    return json_digest(value, length=FINGERPRINT_DIGITS)


def named_files(value, root: Path) -> dict[str, str]:
    """Digest of every file that a parameter value names (a string, also inside lists and dicts),
    as a path from ``root`` or an absolute one: a params file edited in place changes the preset."""
    if isinstance(value, dict):
        return {k: v for item in value.values() for k, v in named_files(item, root).items()}
    if isinstance(value, (list, tuple)):
        return {k: v for item in value for k, v in named_files(item, root).items()}
    if isinstance(value, str) and value and (root / value).is_file():
        return {value: _digest((root / value).read_bytes())}
    return {}


def notebook_imports(notebook: Path) -> list[str]:
    """The ``vqalab`` modules a notebook's code cells import (cells that are not Python, such as
    ``%magic`` lines, are read without those lines)."""
    cells = json.loads(Path(notebook).read_text(encoding="utf-8")).get("cells", [])
    names = []
    for cell in cells:
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else source
        lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
        try:
            names += provenance.imported_names("\n".join(lines))
        except SyntaxError:
            continue
    return names


def freeze_inputs(study: dict, *, preset: str, data: dict | None, code: str, root: Path) -> dict[str, str]:
    """A short hash of each thing a study's pages depend on: notebook, preset, code, the study's
    own code, the templates, data.

    study: a study of ``plan_studies``; data: its ``data_record`` (None: it names no data set);
    code: ``code_fingerprint()``; root: the notebooks' working folder (relative file names start there).
    """
    identity = {k: data.get(k) for k in DATA_IDENTITY_KEYS} if data is not None else None
    preset_tree = {"preset": preset, "parameters": study["parameters"],
                   "files": named_files(study["parameters"], Path(root))}
    return {"notebook": _digest(Path(study["notebook"]).read_bytes()), "preset": _json_digest(preset_tree),
            "code": code, "study": provenance.source_fingerprint(notebook_imports(study["notebook"])),
            "templates": provenance.tree_fingerprint(provenance.PACKAGE_DIR / TEMPLATES),
            "data": _json_digest(identity)}


def freeze_key(inputs: dict[str, str]) -> str:
    return _json_digest(inputs)


def kept_record(earlier: dict | None, key: str, week_dir: Path) -> dict | None:
    """The earlier record of a study, marked kept, when its pages can stay: same freeze key, the run
    succeeded and its executed notebook and page are still there. None: the study runs again."""
    if not earlier or earlier.get(FREEZE_KEY) != key or earlier.get("status") != STATUS_OK:
        return None
    if not all(earlier.get(f) and (week_dir / earlier[f]).is_file() for f in ("notebook", "html")):
        return None
    return {**earlier, KEPT_FROM: earlier["started"]}


def rerun_reason(earlier: dict, inputs: dict[str, str]) -> str:
    """Why a study reported earlier this week runs again, for the log."""
    before = earlier.get(FREEZE_INPUTS) or {}
    changed = [name for name, value in inputs.items() if before.get(name) != value]
    if not before:
        return "its earlier run recorded no freeze key"
    if changed:
        return f"changed: {', '.join(changed)}"
    return f"its earlier run ended {earlier.get('status')}"
