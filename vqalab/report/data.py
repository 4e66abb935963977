"""Which data set each study uses, whether it is there, and which of its runs were reused.

A study's data set is its notebook's ``dataset`` parameter (with ``dataset_kwargs``), as the
preset sets it or the notebook defaults it. ``vqalab report --data NAME`` runs the studies of
NAME's family (faces or vqa) on NAME. Before any notebook runs, every study's data set is checked;
a study whose data set is missing is marked skipped, with the path looked at and what goes there. It
is never run on other data.

The data sets' families, builder keywords and status checks live with their loaders, which need
torch; the report asks them in a child process (``ask_inventory``, ``vqalab.inventory``).
"""

from __future__ import annotations

import ast
import json
import logging
import subprocess
import sys
from pathlib import Path

from vqalab.registry import ConfigError, did_you_mean
from vqalab.studies.sections import study_data_section

log = logging.getLogger(__name__)

DATASET_PARAM, DATASET_KWARGS_PARAM = "dataset", "dataset_kwargs"
FROZEN_FEATURES = "frozen_features"  # wraps an image data set named in dataset_kwargs.source


def notebook_default(parameter: dict):
    """The Python value of a notebook parameter's default (None when it is not a literal)."""
    try:
        return ast.literal_eval(parameter.get("default", "None"))
    except (ValueError, SyntaxError):
        return None


def study_dataset(study: dict) -> dict | None:
    """The data section a study's runs use (``studies.sections.study_data_section`` of its parameters:
    the preset's, else the notebook's defaults); None when the notebook takes no ``dataset``
    parameter (e.g. a study driven by a params file)."""
    defaults = study.get("defaults", {})
    if DATASET_PARAM not in defaults:
        return None
    return study_data_section({**defaults, **study["parameters"]})


INVENTORY_MODULE = "vqalab.inventory"  # run as a child process: it imports the loaders and torch


def ask_inventory(specs: list[dict | None], root: Path) -> dict:
    """``vqalab.inventory``'s answer, from a child process: ``environment``, ``datasets`` (each data
    set's ``family`` and builder ``keywords``) and ``statuses`` (a record per spec, None for None).
    A bad data section raises its ConfigError here."""
    request = json.dumps({"specs": specs, "root": str(root)})
    child = subprocess.run([sys.executable, "-m", INVENTORY_MODULE], input=request, capture_output=True, text=True,
                           check=False)
    lines = child.stdout.strip().splitlines()
    answer = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    if "error" in answer:
        raise ConfigError(answer["error"])
    if child.returncode != 0 or not answer:
        raise RuntimeError(f"python -m {INVENTORY_MODULE} (the data sets and devices this report's runs will "
                           f"find) ended with exit status {child.returncode}: {child.stderr.strip()[-2000:]}")
    return answer


def study_specs(plan: list[dict]) -> list[dict | None]:
    """The data section of each study of ``plan``, in its order (None: it names no data set)."""
    return [study_dataset(study) for study in plan]


def with_data(study: dict, name: str, datasets: dict[str, dict]) -> dict:
    """The study set to run on data set ``name``: ``dataset`` replaced, or, for cached features,
    their ``source``; of ``dataset_kwargs``, those the new data set's builder takes are kept
    (``datasets``: the inventory's catalogue, each data set's builder ``keywords``)."""
    spec = study_dataset(study)
    parameters = dict(study["parameters"])
    if spec["name"] == FROZEN_FEATURES and name != FROZEN_FEATURES:
        kwargs = dict(parameters.get(DATASET_KWARGS_PARAM, {}))
        source = dict(kwargs.get("source", {}))
        if source.get("name") != name:
            source = {"name": name}  # keywords of another data set do not carry over
        parameters[DATASET_KWARGS_PARAM] = {**kwargs, "source": source}
    elif spec["name"] != name:
        parameters[DATASET_PARAM] = name
        accepted = datasets[name]["keywords"]  # e.g. max_train_samples carries over, num_train does not
        kwargs = parameters.get(DATASET_KWARGS_PARAM, study.get("defaults", {}).get(DATASET_KWARGS_PARAM)) or {}
        parameters[DATASET_KWARGS_PARAM] = {k: v for k, v in kwargs.items() if k in accepted}
    return {**study, "parameters": parameters}


def choose_data(plan: list[dict], name: str, *, only: list[str] | None, datasets: dict[str, dict]) -> list[dict]:
    """The studies of ``name``'s family, each set to run on ``name``; ConfigError before any compute
    for an unknown name, for a study named with ``--only`` that cannot use it, or when none can.
    ``datasets``: the inventory's catalogue (each data set's ``family`` and builder ``keywords``)."""
    if name not in datasets:
        raise ConfigError(f"--data {name}: unknown data set: {did_you_mean(name, list(datasets))}")
    wanted = datasets[name]["family"]
    chosen, left_out = [], []
    for study in plan:
        spec = study_dataset(study)
        if spec is not None and datasets.get(spec["name"], {}).get("family") == wanted:
            chosen.append(with_data(study, name, datasets))
        else:
            left_out.append(study["name"])
    if only:
        wrong = [s for s in left_out if s in only]
        if wrong:
            raise ConfigError(f"--data {name}: {', '.join(wrong)} cannot run on it (studies of the {wanted} "
                              f"family: {', '.join(s['name'] for s in chosen) or 'none'})")
    if not chosen:
        raise ConfigError(f"--data {name}: no study of the {wanted} family among {', '.join(left_out)}")
    if left_out:
        log.info("--data %s: left out %s (not studies of the %s family)", name, ", ".join(left_out), wanted)
    return chosen


def read_run_log(path: Path) -> dict:
    """How many sweep runs were reused and trained, and the dates the reused ones finished."""
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    reused = [e for e in entries if e["reused"]]
    dates = sorted(e["finished"][:10] for e in reused if e.get("finished"))
    return {"runs": len(entries), "reused": len(reused), "trained": len(entries) - len(reused),
            "reused_from": dates[0] if dates else None, "reused_to": dates[-1] if dates else None}


def read_run_points(path: Path) -> list[dict]:
    """Each sweep point a study's notebook ran or reused: ``{"run_dir", "logged"}`` (when its sweep
    logged it, UTC), in the order logged; the study page names them under its figures and tables."""
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return [{"run_dir": str(e["run_dir"]), "logged": e.get("logged")} for e in entries]
