"""HTML pages: a study's page exported with nbconvert, the week's index and one-file report."""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import html
import itertools
import math
import re
from pathlib import Path
from typing import Any

import nbformat

from vqalab.params import parameter_rows, yaml_inline
from vqalab.report.archive import PREVIOUS_DIR, write_text
from vqalab.report.html import SCOPE_PREFIX, sanitize_html
from vqalab.report.progress import format_seconds
from vqalab.report.since import NO_FIGURE
from vqalab.report.trend import week_trends

TEMPLATE_DIR = Path(__file__).resolve().parents[1] / "report_templates"
STUDY_TEMPLATE = "vqalab_study"  # nbconvert template: lab page without CDN scripts
INDEX_FILE = "index.html"
REPORT_FILE = "report.html"
BODY_START, BODY_END = "<!-- vqalab:body-start -->", "<!-- vqalab:body-end -->"
RUN_POINTS = "run_points"  # a study record's sweep points: [{"run_dir", "logged"}]
RUNS_MIME = "text/html"  # the runs list added under a figure or table goes through sanitize_html too


def _study_exporter(study: str):
    """nbconvert's exporter with its ``clean_html`` step (applied to each HTML or Markdown output and
    each Markdown cell on its own) replaced by ``sanitize_html`` with a scope per output."""
    from nbconvert import HTMLExporter

    prefix = f"{SCOPE_PREFIX}{hashlib.sha256(study.encode()).hexdigest()[:8]}-"  # unique per study in report.html
    outputs = itertools.count()

    def clean_output(html: str) -> str:
        return sanitize_html(str(html), scope=f"{prefix}{next(outputs)}")

    return HTMLExporter(extra_template_basedirs=[str(TEMPLATE_DIR)], template_name=STUDY_TEMPLATE,
                        exclude_input_prompt=True, exclude_output_prompt=True, embed_images=True,
                        sanitize_html=True, filters={"clean_html": clean_output})


def render_study(notebook, record: dict, week: str) -> str:
    """A study's full HTML page: code hidden except the cell that raised, outputs embedded."""
    nb = copy.deepcopy(notebook)
    for cell in nb.cells:
        if cell.cell_type == "code":
            raised = any(o.get("output_type") == "error" for o in cell.get("outputs", []))
            # nbconvert drops a cell's source when this flag is set; the failing cell stays readable
            cell.metadata.setdefault("transient", {})["remove_source"] = not raised
    add_run_lists(nb, record.get(RUN_POINTS) or [])
    nb.metadata["title"] = f"{record['title']} · {week}"
    resources = {"vqalab": {"week": week, "name": record["name"], "preset": record["preset"],
                            "status": record["status"], "error": record.get("error"),
                            "data": data_line(record.get("data")),
                            "alt": f"figure of {record['title']}"}}
    page, _ = _study_exporter(record["name"]).from_notebook_node(nb, resources=resources)
    start, end = page.find(BODY_START), page.rfind(BODY_END)
    if start < 0 or end < start:
        raise RuntimeError(f"{TEMPLATE_DIR / STUDY_TEMPLATE}: body markers missing from the rendered page")
    start += len(BODY_START)
    # once more over the whole body: anything the template let through unscoped is dropped here
    return page[:start] + sanitize_html(page[start:end]) + page[end:]


def _cell_time(cell, key: str) -> dt.datetime | None:
    value = cell.metadata.get("papermill", {}).get(key)
    try:
        return dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _is_figure_or_table(output) -> bool:
    data = output.get("data", {})
    markup = data.get("text/html")
    markup = "".join(markup) if isinstance(markup, list) else markup
    return "image/png" in data or (isinstance(markup, str) and "<table" in markup.lower())


def runs_list(points: list[dict], *, in_own_cell: bool) -> str:
    """The collapsed list naming the run folders behind a figure or table, and how to redo one.
    ``points``: the sweeps of one cell (one ``logged`` time per sweep); ``in_own_cell``: that cell is
    the output's own, else the latest before it that ran a sweep."""
    folders = list(dict.fromkeys(p["run_dir"] for p in points))
    sweeps = len({p["logged"] for p in points})
    what = "the sweep" if sweeps == 1 else f"the {sweeps} sweeps"
    where = f"{what} of its cell" if in_own_cell else (
        "the latest sweep before it" if sweeps == 1 else f"{what} of the latest cell before it that ran one")
    items = "".join(f"<li><code>{html.escape(f)}</code></li>" for f in folders)
    command = html.escape(f"vqalab train {folders[0]}/params.yaml")
    return (f'<details class="vqalab-runs"><summary>{len(folders)} run folder{"s" if len(folders) != 1 else ""} '
            f"behind this ({where})</summary><ul>{items}</ul>"
            f"<p>One point again: <code>{command}</code></p></details>")


def add_run_lists(nb, points: list[dict]) -> None:
    """Under each figure and table output, the run folders of the latest sweep that ran before or in
    its cell: each point is matched to the cell whose papermill start/end times hold its log time."""
    logged = [(dt.datetime.fromisoformat(p["logged"]), p) for p in points if p.get("logged")]
    latest: list[dict] = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        start, end = _cell_time(cell, "start_time"), _cell_time(cell, "end_time")
        own = [p for t, p in logged if start is not None and end is not None and start <= t <= end]
        latest = own or latest
        if not latest:
            continue
        outputs = []
        for output in cell.get("outputs", []):
            outputs.append(output)
            if _is_figure_or_table(output):
                listed = runs_list(latest, in_own_cell=bool(own))
                outputs.append(nbformat.v4.new_output("display_data", data={RUNS_MIME: listed}))
        cell.outputs = outputs


def split_page(page: str) -> tuple[str, str]:
    """(the ``<style>`` blocks of a study page's head, the notebook part of its body)."""
    head = page.split("</head>", 1)[0]
    styles = "\n".join(re.findall(r"<style[^>]*>.*?</style>", head, flags=re.DOTALL))
    start, end = page.find(BODY_START), page.rfind(BODY_END)
    body = page[start + len(BODY_START):end] if start >= 0 and end > start else ""
    return styles, body


def data_line(data: dict | None) -> str:
    """``rafdb at /data/RAF-DB/basic (28 train images, 14 test images, 7 classes; fingerprint 3f2a…)``."""
    if not data:
        return ""
    counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in data["counts"].items())
    details = "; ".join(part for part in (counts, f"fingerprint {data['fingerprint']}" if data["fingerprint"] else "",
                                          data.get("detail", "")) if part)
    return f"{data['name']} at {data['root']}" + (f" ({details})" if details else "")


def skipped_page(record: dict, week: str) -> str:
    """A study page when the study was not run because its data set is missing."""
    return _jinja().get_template("skipped.html.j2").render(record=record, week=week)


def error_page(record: dict, week: str) -> str:
    """A study page when there is no executed notebook to render at all."""
    env = _jinja()
    return env.get_template("error.html.j2").render(record=record, week=week)


def _jinja():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                             autoescape=True,  # every user-typed string is shown as text
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = format_figure
    env.filters["figure"] = format_headline
    env.filters["duration"] = format_duration
    env.filters["data_line"] = data_line
    return env


def format_figure(value: Any) -> str:
    """A figure or parameter as short readable text (floats to 4 significant digits)."""
    if isinstance(value, bool) or value is None:
        return yaml_inline(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (int, str)):
        return str(value)
    return yaml_inline(value)


def format_headline(value: Any) -> str:
    """A headline figure as ``format_figure`` writes it; "–" where it has no value."""
    return NO_FIGURE if value is None else format_figure(value)


def format_duration(seconds: float | None) -> str:
    """A study's time on the pages, as the progress line writes it (``format_seconds``); "–": unknown."""
    return "–" if seconds is None else format_seconds(seconds)


def render_week(week_dir: Path, summary: dict, since: dict | None) -> None:
    """Write ``index.html`` and ``report.html`` of a week from its summary and executed notebooks
    (with the trends over every earlier week in ``week_dir``'s parent)."""
    env = _jinja()
    studies = [summary["studies"][name] for name in sorted(summary["studies"])]
    sections, styles = [], ""
    for record in studies:
        page_path = week_dir / record["html"]
        page = page_path.read_text(encoding="utf-8") if page_path.is_file() else ""
        page_styles, body = split_page(page)
        styles = styles or page_styles  # every study page carries the same notebook CSS
        sections.append({"record": record, "body": body})
    previous = week_dir / PREVIOUS_DIR
    archived = sorted(p.name for p in previous.iterdir() if p.is_dir()) if previous.is_dir() else []
    context = {"summary": summary, "studies": studies, "since": since, "parameters": parameter_rows(),
               "trends": week_trends(week_dir.parent, summary["week"], summary),
               "generated": summary["generated"], "environment": summary["environment"],
               "archived": [f"{PREVIOUS_DIR}/{name}/" for name in archived]}
    write_text(week_dir / INDEX_FILE, env.get_template("index.html.j2").render(**context))
    import markupsafe

    report = env.get_template("report.html.j2").render(
        **context, notebook_css=markupsafe.Markup(styles),
        sections=[{"record": s["record"], "body": markupsafe.Markup(s["body"])} for s in sections])
    write_text(week_dir / REPORT_FILE, report)
