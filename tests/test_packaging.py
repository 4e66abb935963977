"""environment.yml (conda) and pyproject.toml describe the same environment."""

from pathlib import Path

import tomllib
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_environment_yml_lists_exactly_the_project_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert set(pip_section) - {"-e ."} == wanted
    assert "-e ." in pip_section, "the package itself is installed"
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert python == "python=3.11" and project["requires-python"] == ">=3.10"


def test_makefile_creates_the_venv_for_both_entry_points():
    makefile = (REPO / "Makefile").read_text()
    assert "report: venv" in makefile and "test: venv" in makefile
    assert "-m venv" in makefile and 'pip install --quiet -e ".[dev]"' in makefile
