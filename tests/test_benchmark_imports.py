"""Benchmarks run by hand, so nothing else notices when a name they import from vqalab goes away.

Every ``from vqalab… import name`` in ``benchmarks/*.py`` (inside functions too) must name a module
that imports and an attribute it has; so must every ``from data_fixtures import name`` (the
tests' stand-in writers, ``tests/data_fixtures.py``).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).resolve().parents[1] / "benchmarks").glob("*.py"))


def checked_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of each ``from vqalab… import name`` (or ``data_fixtures``) in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in ("vqalab", "data_fixtures"):
            found.extend((node.lineno, node.module, alias.name) for alias in node.names)
    return found


def test_the_benchmarks_are_found():
    assert len(BENCHMARKS) >= 5
    assert any(checked_imports(path) for path in BENCHMARKS)


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_every_vqalab_name_a_benchmark_imports_exists(path):
    missing = []
    for line, module, name in checked_imports(path):
        imported = importlib.import_module(module)
        if not hasattr(imported, name):
            try:  # a submodule of a package: `from vqalab import plots`
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{path.name}:{line}: {module}.{name}")
    assert not missing, "benchmarks import names that no longer exist: " + ", ".join(missing)
