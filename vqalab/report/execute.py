"""Executing a study's notebook with papermill and reading its findings back."""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path

from vqalab.notebook import FINDINGS_MIME
from vqalab.registry import ConfigError

log = logging.getLogger(__name__)

KERNEL_NAME = "python3"  # registered by `make venv` (ipykernel install --sys-prefix)
STATUS_OK, STATUS_FAILED = "ok", "failed"
STATUS_SKIPPED = "skipped"  # the study's data set is missing: not run at all
ERROR_TEXT_LIMIT = 2000  # characters of an error message kept in summary.json and the index


def check_kernel(kernel_name: str = KERNEL_NAME) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        raise ConfigError(f"Jupyter kernel '{kernel_name}' not found: run `make venv` or "
                          f"`python -m ipykernel install --sys-prefix --name {kernel_name}`") from None


def execute_study(study: dict, *, out_dir: Path, cwd: Path, preset: str) -> dict:
    """Run one study's notebook into ``out_dir/<name>.ipynb``; never raises for notebook errors.

    Returns the study's record for ``summary.json``: status, duration, parameters, error.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    name = study["name"]
    output = out_dir / f"{name}.ipynb"
    record = {"name": name, "title": study["title"], "preset": preset, "parameters": study["parameters"],
              "notebook": output.name, "html": f"{name}.html",
              "started": dt.datetime.now().isoformat(timespec="seconds"), "error": None}
    log.info("running %s (preset %s)", study["notebook"], preset)
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(study["notebook"]), str(output), parameters=study["parameters"],
                                   kernel_name=KERNEL_NAME, cwd=str(cwd), progress_bar=False)
        record["status"] = STATUS_OK
    except PapermillExecutionError as err:
        record["status"] = STATUS_FAILED
        record["error"] = f"In [{err.exec_count}]: {err.ename}: {err.evalue}"
    except Exception as err:  # noqa: BLE001 -- kernel died or did not start: report what there is
        record["status"] = STATUS_FAILED
        record["error"] = f"{type(err).__name__}: {err}"
    record["duration_s"] = round(time.perf_counter() - start, 2)
    if record["error"] and len(record["error"]) > ERROR_TEXT_LIMIT:
        record["error"] = record["error"][:ERROR_TEXT_LIMIT] + " …"
    log.info("%s: %s in %.1f s%s", name, record["status"], record["duration_s"],
             f" ({record['error']})" if record["error"] else "")
    return record


def read_findings(notebook) -> dict:
    """Headline figures and sentences published by ``vqalab.notebook.findings`` in a notebook."""
    headline: dict = {}
    text: list = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            payload = output.get("data", {}).get(FINDINGS_MIME)
            if isinstance(payload, str):  # some writers keep JSON mime data as text
                payload = json.loads(payload)
            if isinstance(payload, dict):
                figures = payload.get("headline") or {}
                order = [k for k in payload.get("order") or [] if k in figures]
                headline.update({k: figures[k] for k in order + [k for k in figures if k not in order]})
                text += [str(t) for t in payload.get("text") or []]
    return {"headline": headline, "text": text}


def read_notebook(path: Path):
    import nbformat

    try:
        return nbformat.read(path, as_version=4)
    except (OSError, ValueError) as err:  # missing or unreadable: the error is in the record
        log.warning("could not read %s: %s", path, err)
        return None
