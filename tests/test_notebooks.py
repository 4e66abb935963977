"""Every study notebook runs three ways: papermill from the repo root with its quick preset (the
report), a kernel started in notebooks/ (as JupyterLab does), and top to bottom with its own defaults.
Its quick preset gives the headline figures recorded in tests/data/quick_headlines.json."""

import json
import shutil
from pathlib import Path

import nbformat
import papermill
import pytest

from vqalab.report.presets import PARAMETER_TYPES, read_presets

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (REPO / "notebooks").glob("*.ipynb"))
FINDINGS_MIME = "application/vnd.vqalab.findings+json"
CODE_LINES = 40  # code lines outside the parameters cell: the analysis lives in vqalab.studies
# Headline figures of the quick presets, recorded before the study analysis moved into
# vqalab.studies; figures that time something are not recorded.
QUICK_HEADLINES = json.loads((REPO / "tests" / "data" / "quick_headlines.json").read_text(encoding="utf-8"))


def outputs_of(path: Path) -> list[dict]:
    nb = nbformat.read(path, as_version=4)
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def assert_ran_with_findings(path: Path) -> dict:
    outs = outputs_of(path)
    errors = [o for o in outs if o.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue")
    published = [o["data"][FINDINGS_MIME] for o in outs if FINDINGS_MIME in o.get("data", {})]
    assert len(published) == 1, "a study notebook publishes its findings exactly once"
    assert published[0]["text"], "findings come with at least one sentence"
    assert any(o.get("data", {}).get("image/png") for o in outs), "a study shows at least one plot"
    return published[0]


def quick_preset(notebook: Path) -> dict:
    """The quick preset as the report passes it: over its base's (params/fer_base.yaml)."""
    return read_presets(REPO / "params" / f"{notebook.stem}.yaml")["quick"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean_with_declared_presets(notebook):
    nb = json.loads(notebook.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert not any(c.get("outputs") or c.get("execution_count") for c in code), "strip outputs before committing"
    assert "parameters" in code[0].get("metadata", {}).get("tags", []), "first code cell is tagged parameters"
    declared = papermill.inspect_notebook(str(notebook))
    assert all(p["help"] for p in declared.values()), "every parameter has a # help comment"
    presets = read_presets(REPO / "params" / f"{notebook.stem}.yaml")
    assert set(presets) >= {"quick", "cpu", "gpu"}
    for preset, values in presets.items():
        unknown = set(values or {}) - set(declared)
        assert not unknown, f"params/{notebook.stem}.yaml preset {preset}: not notebook parameters: {unknown}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin_with_typed_parameters(notebook):
    nb = nbformat.read(notebook, as_version=4)
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# "), "a title cell first"
    code = [c.source for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]
    lines = [line for source in code for line in source.splitlines()
             if line.strip() and not line.strip().startswith("#")]
    assert len(lines) <= CODE_LINES, f"{len(lines)} lines of code: move analysis into vqalab.studies"
    assert not any("set_num_threads" in line for line in lines), "threads come from train.num_threads"
    for name, parameter in papermill.inspect_notebook(str(notebook)).items():
        base_type = parameter["inferred_type_name"].split("[", 1)[0]
        assert base_type in PARAMETER_TYPES, f"{name}: annotate it (`{name}: float = ...  # help`)"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_from_repo_root_with_quick_preset(notebook, tmp_path):
    out = tmp_path / notebook.name
    parameters = dict(quick_preset(notebook) or {})
    declared = papermill.inspect_notebook(str(notebook))
    if "runs_root" in declared:
        parameters["runs_root"] = str(tmp_path / "runs")
    papermill.execute_notebook(str(notebook), str(out), parameters=parameters, cwd=str(REPO),
                               kernel_name="python3", progress_bar=False)
    published = assert_ran_with_findings(out)
    # same seeds, same figures (a study added after the recording has none)
    for figure, expected in QUICK_HEADLINES.get(notebook.stem, {}).items():
        got = published["headline"][figure]
        assert got == (pytest.approx(expected, rel=1e-9) if isinstance(expected, float) else expected), figure
    if "runs_root" in declared:
        assert any((tmp_path / "runs").rglob("summary.json")), "runs were written where runs_root points"


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_notebooks_folder_with_its_own_defaults(notebook, tmp_path):
    # A copy of the project layout, so relative paths resolve to tmp_path, not to the repo.
    shutil.copytree(REPO / "params", tmp_path / "params")
    (tmp_path / "notebooks").mkdir()
    shutil.copy(notebook, tmp_path / "notebooks" / notebook.name)
    out = tmp_path / "out.ipynb"
    papermill.execute_notebook(str(tmp_path / "notebooks" / notebook.name), str(out),
                               cwd=str(tmp_path / "notebooks"), kernel_name="python3", progress_bar=False)
    assert_ran_with_findings(out)
    declared = papermill.inspect_notebook(str(notebook))
    if "runs_root" in declared:
        assert any((tmp_path / "runs").rglob("summary.json")), "relative runs_root resolves to the project root"
        assert not (tmp_path / "notebooks" / "runs").exists(), "nothing is written next to the notebook"
