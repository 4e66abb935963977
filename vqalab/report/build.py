"""``run_report``: check every study, run each notebook, write the week's folder."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from vqalab.io import lock_folder
from vqalab.notebook import FRESH_ENV, RUN_LOG_ENV
from vqalab.paths import project_root
from vqalab.provenance import code_fingerprint
from vqalab.registry import ConfigError
from vqalab.report.archive import PREVIOUS_DIR, archive_outputs, write_text
from vqalab.report.data import (
    ask_inventory,
    choose_data,
    read_run_log,
    read_run_points,
    study_specs,
)
from vqalab.report.execute import (
    LOGS_DIR,
    STATUS_FAILED,
    STATUS_SKIPPED,
    STATUS_TIMED_OUT,
    check_kernel,
    execute_study,
    read_findings,
    read_notebook,
)
from vqalab.report.freeze import (
    FREEZE_INPUTS,
    FREEZE_KEY,
    KEPT_FROM,
    freeze_inputs,
    freeze_key,
    kept_record,
    rerun_reason,
)
from vqalab.report.lanes import default_jobs, run_lanes, study_experiment
from vqalab.report.pages import (
    INDEX_FILE,
    REPORT_FILE,
    RUN_POINTS,
    error_page,
    render_study,
    render_week,
    skipped_page,
)
from vqalab.report.pdf import PDF_FILE, write_pdf
from vqalab.report.post import write_post
from vqalab.report.presets import REPORT_KEY, RUNS_ROOT_PARAM, plan_studies
from vqalab.report.progress import ProgressLine
from vqalab.report.since import SUMMARY_FILE, figures_since, last_week_summary, read_summary
from vqalab.report.weeks import check_week, iso_week

log = logging.getLogger(__name__)

# Exit status of run_report (and `vqalab report`); 2 is a bad command line or params file.
EXIT_OK, EXIT_FAILED, EXIT_SKIPPED = 0, 1, 3


@contextmanager
def environment_variables(**values: str | None):
    """Set (or, for None, leave alone) environment variables; papermill's kernels inherit them."""
    before = {k: os.environ.get(k) for k in values}
    os.environ.update({k: v for k, v in values.items() if v is not None})
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def skipped_record(study: dict, preset: str, data: dict) -> dict:
    """The record of a study not run because its data set is missing."""
    return {"name": study["name"], "title": study["title"], "preset": preset, "parameters": study["parameters"],
            "notebook": None, "html": f"{study['name']}.html", "status": STATUS_SKIPPED,
            "started": dt.datetime.now().isoformat(timespec="seconds"), "duration_s": None, "data": data,
            "error": f"data set {data['name']} not found at {data['root']}: {data['expected']}"}


def run_report(*, preset: str = "cpu", only: list[str] | None = None, week: str | None = None,
               force: bool = False, root: str | Path | None = None, notebooks_dir: str | Path | None = None,
               params_dir: str | Path | None = None, reports_dir: str | Path | None = None,
               runs_root: str | Path | None = None, data: str | None = None, fresh: bool = False,
               jobs: int | None = 1) -> int:
    """Execute the studies and write the week's report.

    Returns ``EXIT_OK`` (0) when every study ran, ``EXIT_FAILED`` (1) when a notebook failed or ran past its time
    budget (``time_budget_s`` in its preset), else
    ``EXIT_SKIPPED`` (3) when a study was skipped because its data set is missing.

    ``preset``: the preset of each ``params/<name>.yaml`` to run (quick, cpu, gpu).
    ``only``: study names to run (default: every study); other studies already reported this
    week stay in the index. ``week``: ``YYYY-Www`` folder (default: the current ISO week).
    A week runs again incrementally, as Quarto's freeze does (``vqalab.report.freeze``): a study
    reported earlier this week whose run succeeded and whose notebook file, preset values (and files
    they name), training code, own code, templates and data identity are unchanged (its ``freeze_key`` in
    ``summary.json``) keeps its files,
    and the index says "kept from <time>"; any other study runs again, its earlier files first moved
    to ``previous/<timestamp>/`` with the index, report and summary they belonged to. Nothing already
    written is lost, and a second run in a week is never refused for what it holds.
    ``force``: run every planned study again, changed or not (earlier files move as above).
    ``root``: working folder of the notebooks (default: the project
    root); ``notebooks_dir``, ``params_dir``, ``reports_dir`` default to its ``notebooks/``,
    ``params/``, ``reports/``. ``runs_root``: passed to notebooks that declare a ``runs_root``
    parameter their preset does not set (default: the notebook's own, ``runs/`` of the project).
    ``data``: run the studies of this data set's family on it (rafdb: the FER studies; vqa_v2:
    vqa_models); None: each study's own (its preset's or notebook's ``dataset``). A study whose data
    set is missing is skipped before any compute, with the path looked at and what goes there.
    ``fresh``: retrain every sweep point instead of reusing finished runs (``VQALAB_FRESH``); it
    implies ``force``. ``jobs``: studies run at once, in lanes (``vqalab.report.lanes``: studies
    sharing an experiment in one lane, each lane's runs on its share of the cores); 1: one after the
    other, in the report's order. The pages and ``summary.json`` are the same either way, the studies
    listed in the report's order; None: ``default_jobs`` (one lane where the runs go to a GPU, else
    the cores free now). Bad input raises ConfigError before any notebook runs.

    The data sets and the device are asked of a child process (``ask_inventory``): the report
    imports no torch.
    """
    if jobs is not None and (isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1):
        raise ConfigError(f"--jobs {jobs!r}: expected a whole number of studies at once, 1 or more")
    root = Path(root).resolve() if root is not None else project_root()
    notebooks_dir = Path(notebooks_dir) if notebooks_dir is not None else root / "notebooks"
    params_dir = Path(params_dir) if params_dir is not None else root / "params"
    reports_dir = Path(reports_dir) if reports_dir is not None else root / "reports"
    week = check_week(week) if week else iso_week()
    check_week_folder(reports_dir, week)
    plan = plan_studies(preset=preset, only=only, notebooks_dir=notebooks_dir, params_dir=params_dir,
                        runs_root=runs_root)
    if data is not None:  # the studies of the data set's family, on it: their data sections change
        catalogue = ask_inventory([], root)["datasets"]  # families and keywords only: no status checked twice
        plan = choose_data(plan, data, only=only, datasets=catalogue)
    found = ask_inventory(study_specs(plan), root)
    statuses = {study["name"]: status for study, status in zip(plan, found["statuses"], strict=True)}
    jobs = jobs if jobs is not None else default_jobs(found["environment"]["device"])
    for name, status in statuses.items():
        if status is not None and not status["found"]:
            log.warning("%s: skipped: data set %s not found at %s (%s)", name, status["name"], status["root"],
                        status["expected"])
    check_kernel()

    week_dir = reports_dir / week
    force = force or fresh  # a kept study would retrain nothing
    with week_lock(reports_dir, week):
        return _run_locked(plan=plan, statuses=statuses, environment=found["environment"], week=week,
                           week_dir=week_dir, reports_dir=reports_dir, root=root, preset=preset, force=force,
                           fresh=fresh, jobs=jobs)


def check_week_folder(reports_dir: Path, week: str) -> None:
    """Refuse, before anything runs, a week folder (or its ``logs/``, ``previous/``) that is a file or
    a symbolic link: the report writes only into real folders of its own (a link planted there
    would send the week's files into another user's folder)."""
    week_dir = reports_dir / week
    if reports_dir.exists() and not reports_dir.is_dir():
        raise ConfigError(f"reports folder {reports_dir} is a file, not a folder: move it away or pass another one")
    for path in (week_dir, week_dir / LOGS_DIR, week_dir / PREVIOUS_DIR):
        if path.is_symlink():
            raise ConfigError(f"week folder {path} is a symbolic link: not followed; remove it (the report "
                              "creates the folder)")
        if path.exists() and not path.is_dir():
            raise ConfigError(f"week folder {path} is a file, not a folder: move it away (the report creates the folder)")


def week_lock(reports_dir: Path, week: str):
    """One report of a week at a time: a second (even with other --only studies) is refused, so no
    page or summary is overwritten by a run that started from an older state. The lock file sits
    beside the week's folder (``reports/.<week>.lock``): a refused run leaves the folder untouched."""
    reports_dir.mkdir(parents=True, exist_ok=True)
    return lock_folder(reports_dir / week, "report week", lock_file=reports_dir / f".{week}.lock")


def _run_locked(*, plan: list[dict], statuses: dict[str, dict | None], environment: dict, week: str, week_dir: Path,
                reports_dir: Path, root: Path, preset: str, force: bool, fresh: bool, jobs: int) -> int:
    old_summary = read_summary(week_dir / SUMMARY_FILE) if (week_dir / SUMMARY_FILE).is_file() else {}
    earlier_records = old_summary.get("studies", {})
    code = code_fingerprint()
    inputs = {s["name"]: freeze_inputs(s, preset=preset, data=statuses[s["name"]], code=code, root=root) for s in plan}
    kept = {} if force else {
        s["name"]: record for s in plan
        if (record := kept_record(earlier_records.get(s["name"]), freeze_key(inputs[s["name"]]), week_dir))}
    to_run = [s for s in plan if s["name"] not in kept]
    earlier = [week_dir / f"{s['name']}{ext}" for s in to_run for ext in (".ipynb", ".html")]
    earlier = [p for p in earlier if os.path.lexists(p)]  # a dangling symlink moves away too
    if earlier:
        logs = [week_dir / LOGS_DIR / f"{study['name']}.log" for study in to_run]
        # index, report and summary are copied: the week keeps them until the new ones replace them
        derived = [week_dir / f for f in (INDEX_FILE, REPORT_FILE, PDF_FILE, SUMMARY_FILE) if (week_dir / f).is_file()]
        moved = archive_outputs(week_dir, earlier + [p for p in logs if os.path.lexists(p)], copies=derived)
        log.info("earlier outputs of this week moved to %s", moved)
    week_dir.mkdir(parents=True, exist_ok=True)

    env = {**environment, "preset": preset}
    # Merged, never replaced: studies of this week not re-run stay listed (the week lock makes the
    # summary read above the latest one).
    studies = dict(old_summary.get("studies", {}))
    order = list(dict.fromkeys([*studies, *(s["name"] for s in plan)]))  # as one study after the other writes it
    last_week = last_week_summary(reports_dir, week)
    last_studies = last_week[1].get("studies", {}) if last_week else {}
    durations = {s["name"]: last_studies.get(s["name"], {}).get("duration_s") for s in plan}

    def study_done(study: dict, record: dict) -> dict:
        """The record into the summary; summary and index written again."""
        name = study["name"]
        if name not in kept:
            record.update({FREEZE_KEY: freeze_key(inputs[name]), FREEZE_INPUTS: inputs[name]})
        record[REPORT_KEY] = study.get(REPORT_KEY) or {}  # the post's front matter words, also for a kept study
        studies[name] = record
        # summary and index after every study: an interrupted run still shows what finished; the
        # studies in the report's order whichever lane ended first
        summary = {"week": week, "generated": dt.datetime.now().isoformat(timespec="seconds"),
                   "environment": env, "studies": {n: studies[n] for n in order if n in studies}}
        write_text(week_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str))
        render_week(week_dir, summary, figures_since(last_week, summary["studies"]))  # last week read once, above
        return summary

    to_execute = []
    summary = None
    for study in plan:
        name, status = study["name"], statuses[study["name"]]
        if name in kept:
            log.info("%s: kept from %s (notebook, preset, code, templates and data unchanged)", name, kept[name][KEPT_FROM])
            summary = study_done(study, kept[name])
            continue
        if not force and name in earlier_records:
            log.info("%s: runs again: %s", name, rerun_reason(earlier_records[name], inputs[name]))
        if status is not None and not status["found"]:
            record = skipped_record(study, preset, status)
            record.update(environment=env, headline={}, noise={}, text=[])
            write_text(week_dir / record["html"], skipped_page(record, week))
            summary = study_done(study, record)
        else:
            to_execute.append(study)

    def study_kwargs(study: dict) -> dict:
        study_runs = Path(study["parameters"].get(RUNS_ROOT_PARAM) or "runs")
        return {"week_dir": week_dir, "cwd": root, "preset": preset, "fresh": fresh,
                "runs_root": study_runs if study_runs.is_absolute() else root / study_runs,
                "last_duration": durations[study["name"]]}

    for study, record in run_lanes(to_execute, jobs=jobs, run_study=run_study, study_kwargs=study_kwargs,
                                   durations=durations, preset=preset):
        record.update(environment=env, data=statuses[study["name"]])
        render_study_page(record, week_dir, week)
        summary = study_done(study, record)

    write_post(week_dir, summary)
    summary["pdf"] = write_pdf(week_dir)
    write_text(week_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str))

    failed = [s["name"] for s in plan if studies[s["name"]]["status"] in (STATUS_FAILED, STATUS_TIMED_OUT)]
    skipped = [s["name"] for s in plan if studies[s["name"]]["status"] == STATUS_SKIPPED]
    log.info("report: %s", week_dir / INDEX_FILE)
    if failed:
        log.error("failed: %s (see their pages in %s)", ", ".join(failed), week_dir)
        return EXIT_FAILED
    if skipped:
        log.error("skipped (data set missing): %s; `vqalab data` says what goes where", ", ".join(skipped))
        return EXIT_SKIPPED
    return EXIT_OK


def publish_week(*, week: str | None = None, pdf: bool = True, post: bool = False, root: str | Path | None = None,
                 reports_dir: str | Path | None = None) -> int:
    """``vqalab report --pdf`` / ``--post``: write ``report.pdf`` and/or ``post/`` of an already
    reported week from its files (no study runs).

    Returns ``EXIT_OK``, or ``EXIT_FAILED`` when the PDF was asked for and Chromium is missing or
    failed (the reason is logged and kept under ``pdf`` in ``summary.json``). ConfigError when the
    week has no report.
    """
    root = Path(root).resolve() if root is not None else project_root()
    reports_dir = Path(reports_dir) if reports_dir is not None else root / "reports"
    week = check_week(week) if week else iso_week()
    check_week_folder(reports_dir, week)
    week_dir = reports_dir / week
    if not (week_dir / REPORT_FILE).is_file() or not (week_dir / SUMMARY_FILE).is_file():
        raise ConfigError(f"{week_dir}: no {REPORT_FILE} and {SUMMARY_FILE} to publish: run `vqalab report "
                          f"--week {week}` first")
    with week_lock(reports_dir, week):
        summary = read_summary(week_dir / SUMMARY_FILE)
        if post:
            print(write_post(week_dir, summary))
        if pdf:
            summary["pdf"] = write_pdf(week_dir)
            write_text(week_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str))
    if pdf and summary["pdf"]["file"] is None:
        log.error("%s not written: %s", PDF_FILE, summary["pdf"]["skipped"])
        return EXIT_FAILED
    if pdf:
        print(week_dir / PDF_FILE)
    return EXIT_OK


def run_study(study: dict, *, week_dir: Path, cwd: Path, preset: str, fresh: bool, runs_root: Path | None,
              last_duration: float | None, line: ProgressLine | None = None) -> dict:
    """Execute one study; its record says how many of its sweep runs were reused, and from when.

    runs_root: where the study's runs go (the progress line reads the current one there, in the
    study's experiment folder). last_duration: the study's time last week, for the ETA. line: the
    progress line (default: rewritten in place on a terminal).
    """
    with tempfile.TemporaryDirectory(prefix="vqalab-runs-") as tmp:
        run_log = Path(tmp) / "runs.jsonl"
        with environment_variables(**{RUN_LOG_ENV: str(run_log), FRESH_ENV: "1" if fresh else None}):
            record = execute_study(study, out_dir=week_dir, cwd=cwd, preset=preset, runs_root=runs_root,
                                   last_duration=last_duration, line=line, experiment=study_experiment(study))
        record["runs"] = read_run_log(run_log)
        record[RUN_POINTS] = read_run_points(run_log)
    return record


def render_study_page(record: dict, week_dir: Path, week: str) -> None:
    """Read the executed notebook's findings into ``record`` and write its HTML page."""
    record.update(headline={}, noise={}, text=[])
    notebook = read_notebook(week_dir / record["notebook"])
    page = None
    if notebook is not None:
        record.update(read_findings(notebook))
        try:
            page = render_study(notebook, record, week)
        except Exception as err:  # one page that cannot render must not sink the week
            log.exception("could not render %s", record["notebook"])
            record.update(status=STATUS_FAILED, error=f"HTML rendering failed: {type(err).__name__}: {err}")
    write_text(week_dir / record["html"], page or error_page(record, week))
