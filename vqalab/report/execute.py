"""Executing a study's notebook with papermill and reading its findings back."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from vqalab.io import open_no_follow, write_atomically
from vqalab.notebook import FINDINGS_MIME
from vqalab.registry import ConfigError
from vqalab.report.progress import DEFAULT_TIME_BUDGET_S, ProgressLine, format_seconds, watch

log = logging.getLogger(__name__)

KERNEL_NAME = "python3"  # registered by `make venv` (ipykernel install --sys-prefix)
STATUS_OK, STATUS_FAILED, STATUS_TIMED_OUT = "ok", "failed", "timed_out"  # shown as "timed out"
LOGS_DIR = "logs"  # per-study cell output, streamed while the notebook runs
STATUS_SKIPPED = "skipped"  # the study's data set is missing: not run at all
ERROR_TEXT_LIMIT = 2000  # characters of an error message kept in summary.json and the index


def check_kernel(kernel_name: str = KERNEL_NAME) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        raise ConfigError(f"Jupyter kernel '{kernel_name}' not found: run `make venv` or "
                          f"`python -m ipykernel install --sys-prefix --name {kernel_name}`") from None


def execute_study(study: dict, *, out_dir: Path, cwd: Path, preset: str, runs_root: Path | None,
                  last_duration: float | None = None, line: ProgressLine | None = None,
                  experiment: str | None = None) -> dict:
    """Run one study's notebook into ``out_dir/<name>.ipynb``; never raises for notebook errors.

    The notebook's cell output (stdout and stderr) streams to ``out_dir/logs/<name>.log`` as it
    runs; a progress line shows the current run and epoch (read from ``runs_root``, in
    ``experiment``'s folder when given) and an ETA
    from ``last_duration`` (this study's time last week). Past ``study["time_budget_s"]`` its
    kernel is killed and the study is ``timed out``. Returns the study's record for
    ``summary.json``: status, duration, parameters, error, log.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    name = study["name"]
    output = out_dir / f"{name}.ipynb"
    log_file = out_dir / LOGS_DIR / f"{name}.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    budget = study.get("time_budget_s") or DEFAULT_TIME_BUDGET_S
    record = {"name": name, "title": study["title"], "preset": preset, "parameters": study["parameters"],
              "notebook": output.name, "html": f"{name}.html", "log": f"{LOGS_DIR}/{name}.log",
              "time_budget_s": budget, "started": dt.datetime.now().isoformat(timespec="seconds"),
              "error": None}
    log.info("running %s (preset %s), cell output in %s", study["notebook"], preset, log_file)
    outcome: dict = {}

    # papermill writes its output notebook by path (following a symlink there) as the cells run: it
    # writes into a private folder, and the finished notebook replaces ``output`` by a rename.
    private = Path(tempfile.mkdtemp(prefix=f"vqalab-{name}-"))
    written = private / output.name

    def execute() -> None:
        try:
            log_fd = open_no_follow(log_file, os.O_WRONLY | os.O_APPEND, "log file")
            with open(log_fd, "a", encoding="utf-8", buffering=1) as stream:
                papermill.execute_notebook(str(study["notebook"]), str(written), parameters=study["parameters"],
                                           kernel_name=KERNEL_NAME, cwd=str(cwd), progress_bar=False,
                                           stdout_file=stream, stderr_file=stream)
        except PapermillExecutionError as err:
            outcome["error"] = f"In [{err.exec_count}]: {err.ename}: {err.evalue}"
        except Exception as err:  # noqa: BLE001 -- kernel died or did not start: report what there is
            outcome["error"] = f"{type(err).__name__}: {err}"

    start = time.perf_counter()
    # papermill runs in a thread so that this one can show progress and enforce the budget.
    thread = threading.Thread(target=execute, name=f"study-{name}", daemon=True)
    thread.start()
    line = line or ProgressLine()
    timed_out = watch(name, thread, budget=budget, runs_root=runs_root, last_duration=last_duration, line=line,
                      experiment=experiment)
    record["duration_s"] = round(time.perf_counter() - start, 2)
    try:
        if written.is_file():
            write_atomically(output, lambda f: f.write(written.read_bytes()))
    finally:
        shutil.rmtree(private, ignore_errors=True)
    if timed_out:
        record["status"] = STATUS_TIMED_OUT
        record["error"] = (f"stopped after its time budget of {format_seconds(budget)}; "
                           f"the log up to then is {record['log']}")
    elif "error" in outcome:
        record["status"] = STATUS_FAILED
        record["error"] = outcome["error"]
    else:
        record["status"] = STATUS_OK
    if record["error"] and len(record["error"]) > ERROR_TEXT_LIMIT:
        record["error"] = record["error"][:ERROR_TEXT_LIMIT] + " …"
    line.done(f"{name}: {record['status']} in {format_seconds(record['duration_s'])}"
              + (f" ({record['error']})" if record["error"] else ""))
    return record


def read_findings(notebook) -> dict:
    """Headline figures, their noise (for measured ones) and sentences published by
    ``vqalab.notebook.findings`` in a notebook."""
    headline: dict = {}
    noise: dict = {}
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
                noise.update({k: v for k, v in (payload.get("noise") or {}).items() if v is not None})
                text += [str(t) for t in payload.get("text") or []]
    return {"headline": headline, "noise": noise, "text": text}


def read_notebook(path: Path):
    import nbformat

    try:
        return nbformat.read(path, as_version=4)
    except (OSError, ValueError) as err:  # missing or unreadable: the error is in the record
        log.warning("could not read %s: %s", path, err)
        return None
