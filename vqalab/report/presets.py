"""Studies and their presets: all checked before any notebook runs."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from vqalab.params import read_yaml
from vqalab.registry import ConfigError, did_you_mean
from vqalab.report.data import DATASET_KWARGS_PARAM, DATASET_PARAM, notebook_default

log = logging.getLogger(__name__)

PARAMS_FILE_KEYS = ("base", "presets", "report")
# ``base: fer_base.yaml`` (beside the study's params file): a file of ``presets:`` shared by several
# studies. Each preset of the study starts from the base's preset of the same name; a study may add
# keys but not repeat the base's, so what the studies share is defined once.
BASE_KEY = "base"
# The optional ``report:`` section of a study's params file: front matter of the week's blog post
# (``post/index.md``), lists of words (the post takes each study's, in order, once).
REPORT_KEY = "report"
REPORT_FIELDS = ("categories", "tags")
RUNS_ROOT_PARAM = "runs_root"
EXPERIMENT_PARAM = "experiment"  # runs/<experiment>/: studies sharing one reuse each other's finished runs
# A preset key that is not a notebook parameter: seconds after which the study is stopped.
TIME_BUDGET_KEY = "time_budget_s"

# Annotations a notebook parameter may carry; a preset value must have that type (an int may
# stand for a float).
PARAMETER_TYPES = {"bool": bool, "int": int, "float": float, "str": str, "list": list, "dict": dict}


def discover_studies(notebooks_dir: Path, params_dir: Path) -> dict[str, tuple[Path, Path]]:
    """Study name → (notebook, params file): every ``*.ipynb`` with a ``params/<stem>.yaml``."""
    studies = {}
    for notebook in sorted(Path(notebooks_dir).glob("*.ipynb")):
        params_file = Path(params_dir) / f"{notebook.stem}.yaml"
        if params_file.is_file():
            studies[notebook.stem] = (notebook, params_file)
        else:
            log.info("%s has no %s: not a study of the report", notebook, params_file)
    return studies


def annotated_type(name: str, parameter: dict, notebook: Path) -> type:
    """The Python type a notebook parameter is annotated with (``lr: float = 1e-3  # help``);
    ``list[float]`` counts as list. ConfigError names the notebook when there is none to check."""
    annotation = str(parameter.get("inferred_type_name") or "None")  # papermill's "None": no annotation
    expected = PARAMETER_TYPES.get(annotation.split("[", 1)[0].strip())
    if expected is None:
        found = "has no type annotation" if annotation == "None" else f"is annotated {annotation!r}"
        raise ConfigError(f"{notebook}: parameter '{name}' {found}: expected one of {', '.join(PARAMETER_TYPES)} "
                          f"(e.g. `{name}: float = {parameter.get('default')}  # help`)")
    return expected


def _type_mismatch(value: Any, expected: type) -> bool:
    """Whether ``value`` cannot stand for a parameter of type ``expected`` (None always can)."""
    if value is None:
        return False
    if expected is bool or isinstance(value, bool):
        return not (isinstance(value, bool) and expected is bool)
    if expected is float:
        return not isinstance(value, (int, float))
    return not isinstance(value, expected)


def _preset_tree(params_file: Path) -> dict[str, Any]:
    """``presets`` of one params file, checked to be a mapping of preset names to mappings."""
    tree = read_yaml(params_file)
    if not isinstance(tree, dict) or "presets" not in tree:
        raise ConfigError(f"{params_file}: expected a mapping with 'presets: {{quick: ..., cpu: ..., gpu: ...}}'")
    for key in tree:
        if key not in PARAMS_FILE_KEYS:
            raise ConfigError(f"{params_file}: unknown key '{key}': {did_you_mean(str(key), PARAMS_FILE_KEYS)}")
    presets = tree["presets"]
    if not isinstance(presets, dict) or not presets:
        raise ConfigError(f"{params_file}: 'presets' must map preset names (quick, cpu, gpu) to parameters")
    for name, values in presets.items():
        if values is not None and not isinstance(values, dict):
            raise ConfigError(f"{params_file}: presets.{name} must map notebook parameters to values, "
                              f"got {type(values).__name__}")
    return tree


def base_file(params_file: Path) -> Path | None:
    """The file named by ``base:`` in ``params_file`` (relative to its folder), or None."""
    tree = read_yaml(params_file)
    name = tree.get(BASE_KEY) if isinstance(tree, dict) else None
    if name is None:
        return None
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{params_file}: {BASE_KEY} = {name!r}: expected the file name of a params file of "
                          "shared presets, e.g. fer_base.yaml")
    path = Path(params_file).parent / name
    if not path.is_file():
        raise ConfigError(f"{params_file}: {BASE_KEY} = {name!r}: {path} not found")
    return path


def read_presets(params_file: Path) -> dict[str, dict[str, Any]]:
    """Preset name → parameter values of ``params_file``, each preset over its base's preset of the
    same name (``base:``). Only the study's own preset names count: a preset the base has and the
    study does not is not the study's. ConfigError names the file: a base with a base of its own,
    or a study preset repeating a key its base sets (change it in the base, for every study)."""
    presets = _preset_tree(params_file)["presets"]
    base_path = base_file(params_file)
    if base_path is None:
        return {name: dict(values or {}) for name, values in presets.items()}
    base_tree = _preset_tree(base_path)
    if BASE_KEY in base_tree:
        raise ConfigError(f"{base_path}: a base of {params_file} has a '{BASE_KEY}' of its own: one level only")
    merged = {}
    for name, values in presets.items():
        shared = dict(base_tree["presets"].get(name) or {})
        repeated = sorted(set(shared) & set(values or {}))
        if repeated:
            raise ConfigError(f"{params_file}: presets.{name} sets {', '.join(repeated)}, which its base {base_path} "
                              f"sets for every study: change {'it' if len(repeated) == 1 else 'them'} there, "
                              "or take the key out of the base")
        merged[name] = {**shared, **(values or {})}
    return merged


def load_preset(params_file: Path, preset: str, notebook_params: dict[str, dict]) -> dict[str, Any]:
    """Validate ``presets.<preset>`` of ``params_file`` (over its base's, ``read_presets``) against
    the notebook's parameters.

    ``notebook_params``: ``papermill.inspect_notebook(...)`` of the notebook (name → default,
    help) with each parameter's ``annotated_type`` under ``type``. Returns the preset's parameter
    values, the base's included. Errors name the file, the key and what was expected.
    """
    presets = read_presets(params_file)
    if preset not in presets:
        raise ConfigError(f"{params_file}: no preset '{preset}' under 'presets' "
                          f"(it has: {', '.join(map(str, presets))})")
    values = dict(presets[preset])
    base_path = base_file(params_file)
    base_keys = set(_preset_tree(base_path)["presets"].get(preset) or {}) if base_path is not None else set()

    def origin(key: str) -> str:  # the file a bad value was written in
        return f"{base_path} (base of {params_file})" if key in base_keys else str(params_file)

    budget = values.pop(TIME_BUDGET_KEY, None)
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or budget <= 0):
        raise ConfigError(f"{origin(TIME_BUDGET_KEY)}: presets.{preset}.{TIME_BUDGET_KEY} = {budget!r}: expected a "
                          "positive number of seconds")
    for key, value in values.items():
        if key not in notebook_params:
            valid = list(notebook_params) or ["(the notebook has no parameters cell)"]
            raise ConfigError(f"{origin(key)}: presets.{preset}: unknown parameter '{key}': "
                              f"{did_you_mean(str(key), valid)}")
        expected = notebook_params[key]["type"]
        if _type_mismatch(value, expected):
            raise ConfigError(f"{origin(key)}: presets.{preset}.{key} = {value!r}: expected {expected.__name__} "
                              f"(the notebook's default is {notebook_params[key].get('default', '')})")
    if budget is not None:
        values[TIME_BUDGET_KEY] = budget
    return values


def load_report_section(params_file: Path) -> dict[str, list[str]]:
    """``report: {categories: [...], tags: [...]}`` of ``params_file`` (both optional; each a list of
    non-empty strings). ConfigError names the file and key otherwise."""
    tree = read_yaml(params_file)
    section = tree.get(REPORT_KEY) if isinstance(tree, dict) else None
    if section is None:
        return {field: [] for field in REPORT_FIELDS}
    if not isinstance(section, dict):
        raise ConfigError(f"{params_file}: '{REPORT_KEY}' must map {' and '.join(REPORT_FIELDS)} to lists of "
                          f"words, got {type(section).__name__}")
    for key in section:
        if key not in REPORT_FIELDS:
            raise ConfigError(f"{params_file}: unknown key '{REPORT_KEY}.{key}': "
                              f"{did_you_mean(str(key), REPORT_FIELDS)}")
    values = {}
    for field in REPORT_FIELDS:
        words = section.get(field) or []
        if not isinstance(words, list) or not all(isinstance(w, str) and w.strip() for w in words):
            raise ConfigError(f"{params_file}: {REPORT_KEY}.{field} = {words!r}: expected a list of non-empty "
                              f"strings, e.g. [lab meeting]")
        values[field] = [w.strip() for w in words]
    return values


def has_preset(params_file: Path, preset: str) -> bool:
    """Whether ``params_file`` defines ``presets.<preset>`` (malformed files are checked later)."""
    try:
        tree = read_yaml(params_file)
    except ConfigError:
        return True  # let load_preset report the error
    presets = tree.get("presets") if isinstance(tree, dict) else None
    return not isinstance(presets, dict) or preset in presets  # the study's own names, not its base's


def notebook_title(notebook) -> str | None:
    """The first markdown heading of a notebook (its title cell), without the ``#``."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.strip().startswith("#"):
                    return line.strip().lstrip("#").strip() or None
            return None
    return None


def plan_studies(*, preset: str, only: list[str] | None, notebooks_dir: Path, params_dir: Path,
                 runs_root: str | Path | None) -> list[dict]:
    """The studies to run with their checked parameters; raises ConfigError before any compute."""
    import nbformat
    import papermill

    available = discover_studies(notebooks_dir, params_dir)
    if only:
        for name in only:
            if name not in available:
                if (Path(notebooks_dir) / f"{name}.ipynb").is_file():
                    raise ConfigError(f"--only {name}: {Path(params_dir) / (name + '.yaml')} not found "
                                      "(a study needs a params file with presets)")
                choices = list(available) or [f"(no study in {notebooks_dir})"]
                raise ConfigError(f"--only {name}: no such study: {did_you_mean(name, choices)}")
        names = list(dict.fromkeys(only))
    else:
        names = list(available)
        having = [name for name in names if has_preset(available[name][1], preset)]
        if having and len(having) < len(names):  # a lab preset (rafdb-24gb) exists for some studies only
            log.info("preset %s: left out %s (no such preset)", preset,
                     ", ".join(n for n in names if n not in having))
            names = having
    if not names:
        raise ConfigError(f"no study found: {notebooks_dir}/*.ipynb with a {params_dir}/<name>.yaml")
    plan = []
    for name in names:
        notebook, params_file = available[name]
        papermill_log = logging.getLogger("papermill")
        level = papermill_log.level
        papermill_log.setLevel(logging.WARNING)  # inspecting logs "Input Notebook" for every study
        try:
            notebook_params = papermill.inspect_notebook(str(notebook))
        finally:
            papermill_log.setLevel(level)
        for key, parameter in notebook_params.items():
            parameter["type"] = annotated_type(key, parameter, notebook)
        parameters = load_preset(params_file, preset, notebook_params)
        time_budget_s = parameters.pop(TIME_BUDGET_KEY, None)
        if runs_root is not None and RUNS_ROOT_PARAM in notebook_params and RUNS_ROOT_PARAM not in parameters:
            parameters[RUNS_ROOT_PARAM] = str(runs_root)
        title = notebook_title(nbformat.read(notebook, as_version=4)) or name
        defaults = {k: notebook_default(p) for k, p in notebook_params.items()  # its data set and runs folder
                    if k in (DATASET_PARAM, DATASET_KWARGS_PARAM, EXPERIMENT_PARAM)}
        plan.append({"name": name, "title": title, "notebook": notebook, "params_file": params_file,
                     "parameters": parameters, "report": load_report_section(params_file), "defaults": defaults, "time_budget_s": time_budget_s})
    return plan
