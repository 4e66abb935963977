"""The package's layers (docs/ARCHITECTURE.md, "Layers"): import-linter's contracts in pyproject.toml
hold, they see imports inside functions, and every module of the package has its place in them."""

import shutil
import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")  # the dev extra installs it beside python


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` on the package under ``root`` with that tree's pyproject.toml, no cache."""
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
                          check=False, cwd=root, env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)


def layer_contract() -> dict:
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    return next(c for c in contracts if c["type"] == "layers")


def test_the_import_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_import_inside_a_function_against_the_layers_breaks_them(tmp_path):
    shutil.copytree(REPO / "vqalab", tmp_path / "vqalab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    layers = tmp_path / "vqalab" / "models" / "layers.py"
    layers.write_text(layers.read_text() + "\n\ndef _later():\n    from vqalab.train import fit\n\n    return fit\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "vqalab.models is not allowed to import vqalab.train" in result.stdout
    assert "vqalab.models.layers -> vqalab.train" in result.stdout


def test_every_module_of_the_package_is_in_a_layer():
    placed = {name.strip() for layer in layer_contract()["layers"] for name in layer.split("|")}
    modules = {f"vqalab.{p.stem}" for p in (REPO / "vqalab").glob("*.py") if p.stem != "__init__"}
    packages = {f"vqalab.{p.parent.name}" for p in (REPO / "vqalab").glob("*/__init__.py")}
    assert sorted((modules | packages) - placed) == [], "add the new module to a layer in pyproject.toml"
    assert sorted(placed - modules - packages) == [], "a layer names a module that is gone"


def test_a_new_way_from_the_report_to_torch_breaks_the_contract(tmp_path):
    shutil.copytree(REPO / "vqalab", tmp_path / "vqalab", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    since = tmp_path / "vqalab" / "report" / "since.py"
    since.write_text(since.read_text() + "\n\ndef _iou():\n    from vqalab.metrics import iou\n\n    return iou\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert "vqalab.report is not allowed to import torch" in result.stdout
    assert "vqalab.report.since -> vqalab.metrics" in result.stdout


def test_importing_the_report_loads_no_torch():
    # every module of the report package, as `vqalab report` and its lane processes load them
    modules = sorted(f"vqalab.report.{p.stem}" for p in (REPO / "vqalab" / "report").glob("*.py") if p.stem != "__init__")
    code = (f"import importlib, sys\nfor name in {modules!r}:\n    importlib.import_module(name)\n"
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], check=False, cwd=REPO, capture_output=True, text=True,
                            env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert result.returncode == 0, result.stderr
