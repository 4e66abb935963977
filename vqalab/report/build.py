"""``run_report``: check every study, run each notebook, write the week's folder."""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

from vqalab.paths import project_root
from vqalab.registry import ConfigError
from vqalab.report.archive import PREVIOUS_DIR, archive_outputs, write_text
from vqalab.report.environment import environment
from vqalab.report.execute import (
    STATUS_FAILED,
    STATUS_OK,
    check_kernel,
    execute_study,
    read_findings,
    read_notebook,
)
from vqalab.report.pages import INDEX_FILE, REPORT_FILE, error_page, render_study, render_week
from vqalab.report.presets import plan_studies
from vqalab.report.since import SUMMARY_FILE, read_summary, since_last_week
from vqalab.report.weeks import check_week, iso_week

log = logging.getLogger(__name__)


def run_report(*, preset: str = "cpu", only: list[str] | None = None, week: str | None = None,
               force: bool = False, root: str | Path | None = None, notebooks_dir: str | Path | None = None,
               params_dir: str | Path | None = None, reports_dir: str | Path | None = None,
               runs_root: str | Path | None = None) -> int:
    """Execute the studies and write the week's report; returns 0, or 1 when a notebook failed.

    ``preset``: the preset of each ``params/<name>.yaml`` to run (quick, cpu, gpu).
    ``only``: study names to run (default: every study); other studies already reported this
    week stay in the index. ``week``: ``YYYY-Www`` folder (default: the current ISO week).
    ``force``: re-run studies already reported this week (their earlier files move to
    ``previous/<timestamp>/``). ``root``: working folder of the notebooks (default: the project
    root); ``notebooks_dir``, ``params_dir``, ``reports_dir`` default to its ``notebooks/``,
    ``params/``, ``reports/``. ``runs_root``: passed to notebooks that declare a ``runs_root``
    parameter their preset does not set (default: the notebook's own, ``runs/`` of the project).
    Bad input raises ConfigError before any notebook runs.
    """
    root = Path(root).resolve() if root is not None else project_root()
    notebooks_dir = Path(notebooks_dir) if notebooks_dir is not None else root / "notebooks"
    params_dir = Path(params_dir) if params_dir is not None else root / "params"
    reports_dir = Path(reports_dir) if reports_dir is not None else root / "reports"
    week = check_week(week) if week else iso_week()
    plan = plan_studies(preset=preset, only=only, notebooks_dir=notebooks_dir, params_dir=params_dir,
                        runs_root=runs_root)
    check_kernel()

    week_dir = reports_dir / week
    earlier = [week_dir / f"{s['name']}{ext}" for s in plan for ext in (".ipynb", ".html")]
    earlier = [p for p in earlier if p.exists()]
    if earlier and not force:
        raise ConfigError(
            f"{week_dir} already holds {', '.join(p.name for p in earlier)} from an earlier run this week; "
            f"nothing was changed. Re-run with --force to run them again (the earlier files are kept "
            f"in {week_dir / PREVIOUS_DIR}/<time>/), or pick another --week.")
    old_summary = read_summary(week_dir / SUMMARY_FILE) if (week_dir / SUMMARY_FILE).is_file() else {}
    if earlier:
        derived = [week_dir / f for f in (INDEX_FILE, REPORT_FILE, SUMMARY_FILE) if (week_dir / f).exists()]
        kept = archive_outputs(week_dir, earlier + derived)
        log.info("earlier outputs of this week moved to %s", kept)
    week_dir.mkdir(parents=True, exist_ok=True)

    env = environment(preset, root)
    studies = dict(old_summary.get("studies", {}))  # studies of this week not re-run stay listed
    for study in plan:
        record = execute_study(study, out_dir=week_dir, cwd=root, preset=preset)
        record["environment"] = env
        record.update(headline={}, text=[])
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
        studies[record["name"]] = record
        # summary and index after every study: an interrupted run still shows what finished
        summary = {"week": week, "generated": dt.datetime.now().isoformat(timespec="seconds"),
                   "environment": env, "studies": studies}
        write_text(week_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str))
        since = since_last_week(reports_dir, week, studies)
        render_week(week_dir, summary, since)

    failed = [name for name in (s["name"] for s in plan) if studies[name]["status"] != STATUS_OK]
    log.info("report: %s", week_dir / INDEX_FILE)
    if failed:
        log.error("failed: %s (see their pages in %s)", ", ".join(failed), week_dir)
        return 1
    return 0
