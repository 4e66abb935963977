"""The weekly report: execute the study notebooks and render ``reports/<ISO year>-W<week>/``.

A study is a notebook ``notebooks/<name>.ipynb`` with a params file ``params/<name>.yaml`` holding
``presets: {quick: {...}, cpu: {...}, gpu: {...}}`` (notebook parameter → value). For the chosen
preset every study is checked first (unknown parameter names, wrong value types, missing preset),
then each notebook runs with papermill (kernel ``python3``, the project root as working folder)
into the week's folder and is rendered to HTML with nbconvert (code hidden, plots as embedded PNG,
no script, style or font fetched from the network). A failing notebook does not stop the others.

The week's folder holds, per study, ``<name>.ipynb`` (executed) and ``<name>.html``, plus
``index.html`` (environment, one section per study with its headline findings),
``report.html`` (every study in one self-contained file, for mail) and ``summary.json`` (the
headline figures, read back next week for the "since last week" section). Nothing is
overwritten: a study already reported this week is re-run only with ``force``, and the earlier
files move to ``previous/<timestamp>/`` first.
"""

from __future__ import annotations

import ast
import copy
import datetime as dt
import html
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from vqalab.config import parameter_table, read_yaml
from vqalab.notebook import FINDINGS_MIME
from vqalab.paths import project_root
from vqalab.registry import ConfigError, did_you_mean

log = logging.getLogger(__name__)

KERNEL_NAME = "python3"  # registered by `make venv` (ipykernel install --sys-prefix)
TEMPLATE_DIR = Path(__file__).parent / "report_templates"
STUDY_TEMPLATE = "vqalab_study"  # nbconvert template: lab page without CDN scripts
WEEK_PATTERN = re.compile(r"^(\d{4})-W(\d{2})$")
PARAMS_FILE_KEYS = ("presets",)
RUNS_ROOT_PARAM = "runs_root"
SUMMARY_FILE = "summary.json"
INDEX_FILE = "index.html"
REPORT_FILE = "report.html"
PREVIOUS_DIR = "previous"  # earlier outputs of the same week, kept on --force
STATUS_OK, STATUS_FAILED = "ok", "failed"
BODY_START, BODY_END = "<!-- vqalab:body-start -->", "<!-- vqalab:body-end -->"
ERROR_TEXT_LIMIT = 2000  # characters of an error message kept in summary.json and the index

# Python type a notebook default must share with a preset value (int is accepted where float is).
_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str", list: "list", dict: "dict"}


# ---------------------------------------------------------------------------------------------
# Weeks


def iso_week(day: dt.date | None = None) -> str:
    """``YYYY-Www`` of ``day`` (default today), with the ISO year (late December may be W01)."""
    year, week, _ = (day or dt.date.today()).isocalendar()
    return f"{year}-W{week:02d}"


def check_week(week: str) -> str:
    """``week`` if it is a valid ISO week such as ``2026-W48``, else ConfigError."""
    match = WEEK_PATTERN.match(week)
    if not match:
        raise ConfigError(f"--week {week!r}: expected an ISO week like {iso_week()} (YYYY-Www)")
    year, number = int(match.group(1)), int(match.group(2))
    try:
        dt.date.fromisocalendar(year, number, 1)
    except ValueError:
        raise ConfigError(f"--week {week!r}: {year} has no ISO week {number}") from None
    return week


# ---------------------------------------------------------------------------------------------
# Studies and their presets (all checked before any notebook runs)


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


def _literal(source: str) -> Any:
    """The value of a notebook default written as a Python literal (``...`` when it is not one)."""
    try:
        return ast.literal_eval(source)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return ...


def _type_mismatch(value: Any, default: Any) -> str | None:
    """What was expected when ``value`` cannot stand for a notebook default, else None."""
    if default is ... or default is None or value is None:
        return None  # no literal default to compare with, or an optional value
    expected = type(default)
    if expected is tuple:
        expected = list  # YAML has no tuples
    if expected not in _TYPE_NAMES:
        return None
    if expected is bool or isinstance(value, bool):
        ok = isinstance(value, bool) and expected is bool
    elif expected is float:
        ok = isinstance(value, (int, float))
    else:
        ok = isinstance(value, expected)
    return None if ok else _TYPE_NAMES[expected]


def load_preset(params_file: Path, preset: str, notebook_params: dict[str, dict]) -> dict[str, Any]:
    """Validate ``presets.<preset>`` of ``params_file`` against the notebook's parameters.

    ``notebook_params``: ``papermill.inspect_notebook(...)`` of the notebook (name → default,
    help). Returns the preset's parameter values. Errors name the file, the key and what was
    expected.
    """
    tree = read_yaml(params_file)
    if not isinstance(tree, dict) or "presets" not in tree:
        raise ConfigError(f"{params_file}: expected a mapping with 'presets: {{quick: ..., cpu: ..., gpu: ...}}'")
    for key in tree:
        if key not in PARAMS_FILE_KEYS:
            raise ConfigError(f"{params_file}: unknown key '{key}': {did_you_mean(str(key), PARAMS_FILE_KEYS)}")
    presets = tree["presets"]
    if not isinstance(presets, dict) or not presets:
        raise ConfigError(f"{params_file}: 'presets' must map preset names (quick, cpu, gpu) to parameters")
    if preset not in presets:
        raise ConfigError(f"{params_file}: no preset '{preset}' under 'presets' "
                          f"(it has: {', '.join(map(str, presets))})")
    values = presets[preset] or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{params_file}: presets.{preset} must map notebook parameters to values, "
                          f"got {type(values).__name__}")
    for key, value in values.items():
        if key not in notebook_params:
            valid = list(notebook_params) or ["(the notebook has no parameters cell)"]
            raise ConfigError(f"{params_file}: presets.{preset}: unknown parameter '{key}': "
                              f"{did_you_mean(str(key), valid)}")
        default_source = notebook_params[key].get("default", "")
        expected = _type_mismatch(value, _literal(default_source))
        if expected:
            raise ConfigError(f"{params_file}: presets.{preset}.{key} = {value!r}: expected {expected} "
                              f"(the notebook's default is {default_source})")
    return dict(values)


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
        parameters = load_preset(params_file, preset, notebook_params)
        if runs_root is not None and RUNS_ROOT_PARAM in notebook_params and RUNS_ROOT_PARAM not in parameters:
            parameters[RUNS_ROOT_PARAM] = str(runs_root)
        title = notebook_title(nbformat.read(notebook, as_version=4)) or name
        plan.append({"name": name, "title": title, "notebook": notebook, "params_file": params_file,
                     "parameters": parameters})
    return plan


def check_kernel(kernel_name: str = KERNEL_NAME) -> None:
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        raise ConfigError(f"Jupyter kernel '{kernel_name}' not found: run `make venv` or "
                          f"`python -m ipykernel install --sys-prefix --name {kernel_name}`") from None


# ---------------------------------------------------------------------------------------------
# Executing and reading back


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


def _read_notebook(path: Path):
    import nbformat

    try:
        return nbformat.read(path, as_version=4)
    except (OSError, ValueError) as err:  # missing or unreadable: the error is in the record
        log.warning("could not read %s: %s", path, err)
        return None


# ---------------------------------------------------------------------------------------------
# HTML


def _study_exporter():
    from nbconvert import HTMLExporter

    return HTMLExporter(extra_template_basedirs=[str(TEMPLATE_DIR)], template_name=STUDY_TEMPLATE,
                        exclude_input_prompt=True, exclude_output_prompt=True, embed_images=True)


def render_study(notebook, record: dict, week: str) -> str:
    """A study's full HTML page: code hidden except the cell that raised, outputs embedded."""
    nb = copy.deepcopy(notebook)
    for cell in nb.cells:
        if cell.cell_type == "code":
            raised = any(o.get("output_type") == "error" for o in cell.get("outputs", []))
            # nbconvert drops a cell's source when this flag is set; the failing cell stays readable
            cell.metadata.setdefault("transient", {})["remove_source"] = not raised
    nb.metadata["title"] = f"{record['title']} · {week}"
    resources = {"vqalab": {"week": week, "name": record["name"], "preset": record["preset"],
                            "status": record["status"], "error": record.get("error"),
                            "alt": f"figure of {record['title']}"}}
    page, _ = _study_exporter().from_notebook_node(nb, resources=resources)
    start, end = page.find(BODY_START), page.rfind(BODY_END)
    if start < 0 or end < start:
        raise RuntimeError(f"{TEMPLATE_DIR / STUDY_TEMPLATE}: body markers missing from the rendered page")
    start += len(BODY_START)
    return page[:start] + neutralize_html(page[start:end]) + page[end:]


# Elements that run code, load other documents or change how the page resolves links: in a
# notebook's outputs they can only come from data (a user-typed name in an HTML table), so they
# are shown as text. nbconvert's own sanitizer also escapes ordinary tags (<p>, <th>).
UNSAFE_ELEMENTS = ("script", "iframe", "frame", "frameset", "object", "embed", "applet", "base", "link",
                   "meta", "form", "noscript", "template")
URL_ATTRIBUTES = ("src", "srcset", "href", "xlink:href", "action", "formaction", "poster", "data",
                  "background", "lowsrc")
_EXTERNAL_CSS = re.compile(r"@import|url\(\s*['\"]?\s*(?:https?:)?//", re.IGNORECASE)


def _unsafe_url(tag: str, attribute: str, value: str) -> bool:
    url = re.sub(r"[\s\x00-\x1f]+", "", value).lower()
    if url.startswith(("javascript:", "vbscript:", "data:text/html", "data:application")):
        return True
    # links may point anywhere (following one is the reader's choice); nothing may be fetched
    return not (tag == "a" and attribute == "href") and url.startswith(("http:", "https:", "//", "ftp:"))


def neutralize_html(fragment: str) -> str:
    """``fragment`` with scripts, external loads and event handlers shown as text or removed."""
    from bs4 import BeautifulSoup, NavigableString

    soup = BeautifulSoup(fragment, "html.parser")
    for element in soup.find_all(UNSAFE_ELEMENTS):
        element.replace_with(NavigableString(str(element)))
    for style in soup.find_all("style"):
        if _EXTERNAL_CSS.search(style.get_text()):
            style.replace_with(NavigableString(str(style)))
    for element in soup.find_all(True):
        for attribute in list(element.attrs):
            value = element.attrs[attribute]
            value = " ".join(value) if isinstance(value, list) else str(value)
            name = attribute.lower()
            if name.startswith("on") \
                    or (name in URL_ATTRIBUTES and _unsafe_url(element.name, name, value)) \
                    or (name == "style" and _EXTERNAL_CSS.search(value)):
                del element.attrs[attribute]
    return str(soup)


def split_page(page: str) -> tuple[str, str]:
    """(the ``<style>`` blocks of a study page's head, the notebook part of its body)."""
    head = page.split("</head>", 1)[0]
    styles = "\n".join(re.findall(r"<style[^>]*>.*?</style>", head, flags=re.DOTALL))
    start, end = page.find(BODY_START), page.rfind(BODY_END)
    body = page[start + len(BODY_START):end] if start >= 0 and end > start else ""
    return styles, body


def error_page(record: dict, week: str) -> str:
    """A study page when there is no executed notebook to render at all."""
    env = _jinja()
    return env.get_template("error.html.j2").render(record=record, week=week)


def _jinja():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATE_DIR)),
                             autoescape=True,  # every user-typed string is shown as text
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = format_value
    env.filters["duration"] = format_duration
    return env


def format_value(value: Any) -> str:
    """A figure or parameter as short readable text (floats to 4 significant digits)."""
    if isinstance(value, bool) or value is None:
        return yaml_inline(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (int, str)):
        return str(value)
    return yaml_inline(value)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{seconds:.1f} s"


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def yaml_inline(value: Any) -> str:
    """``value`` as it would be written in a params file (``[0.9, 0.999]``, ``null``, ``1.0e-08``)."""
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=10_000).strip()
    return text[:-len("...")].strip() if text.endswith("...") else text


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], check=False, capture_output=True, text=True, cwd=root, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(preset: str, root: Path) -> dict:
    """Where the report ran: device, GPU, CPU, torch and CUDA versions, git commit, preset.

    ``root``: the project folder whose git commit (and whether tracked files were changed
    since it) is recorded.
    """
    import torch

    cuda = torch.cuda.is_available()
    changes = _git(root, "status", "--porcelain", "--untracked-files=no")
    return {
        "device": "cuda" if cuda else "cpu",
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "git_commit": _git(root, "rev-parse", "--short", "HEAD") or None,
        "git_dirty": bool(changes),  # tracked files differ from the commit
        "preset": preset,
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def since_last_week(reports_dir: Path, week: str, studies: dict[str, dict]) -> dict | None:
    """How the headline figures moved since the latest earlier week with a ``summary.json``.

    Returns ``{"week": earlier week, "rows": [{study, figure, before, now, change}]}`` or None.
    """
    earlier = sorted(p.parent.name for p in Path(reports_dir).glob(f"*/{SUMMARY_FILE}")
                     if WEEK_PATTERN.match(p.parent.name) and p.parent.name < week)
    if not earlier:
        return None
    try:
        before_summary = _read_summary(Path(reports_dir) / earlier[-1] / SUMMARY_FILE)
    except ConfigError as err:
        log.warning("no 'since last week' section: %s", err)
        return None
    before_studies = before_summary.get("studies", {})
    rows = []
    for name in sorted(set(studies) | set(before_studies)):
        now = studies.get(name, {}).get("headline") or {}
        before = before_studies.get(name, {}).get("headline") or {}
        for figure in list(dict.fromkeys([*now, *before])):
            rows.append({"study": name, "figure": figure, "before": before.get(figure, "–"),
                         "now": now.get(figure, "–"), "change": _change(before.get(figure), now.get(figure))})
    return {"week": earlier[-1], "rows": rows}


def _read_summary(path: Path) -> dict:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable report summary ({err}); move it away to go on") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("studies", {}), dict):
        raise ConfigError(f"{path}: not a report summary (expected 'studies' mapping names to results)")
    return summary


def _change(before: Any, now: Any) -> str:
    numbers = (int, float)
    if before is None and now is None:
        return "–"
    if before is None:
        return "new"
    if now is None:
        return "gone"
    if isinstance(before, numbers) and isinstance(now, numbers) and not isinstance(before, bool) \
            and not isinstance(now, bool):
        return f"{now - before:+.4g}"
    return "same" if before == now else "changed"


def type_text(annotation: Any) -> str:
    """A field's type for readers: ``one of adam, adamw, sgd``, ``int or None``, ``tuple[float, float]``."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [type_text(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or None" if type(None) in args else "")
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_text(a) for a in args)}]" if args else name
    if annotation is Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def parameter_rows() -> list[dict]:
    """``parameter_table()`` with defaults written as in a params file and readable types."""
    from vqalab.config import SECTIONS, RunConfig

    rows = []
    for row in parameter_table():
        section, _, name = row["key"].rpartition(".")
        field = (SECTIONS[section] if section else RunConfig).model_fields.get(name)
        kind = type_text(field.annotation) if field is not None else row["type"]
        rows.append({**row, "default": yaml_inline(row["default"]), "type": kind})
    return rows


def parameters_markdown() -> str:
    """docs/PARAMETERS.md: the parameter registry as a Markdown table."""
    def cell(text: str, code: bool = False) -> str:
        text = str(text).replace("\n", " ")
        # `<experiment>` would be read as an HTML tag outside a code span
        text = f"`{text}`" if code else html.escape(text, quote=False)
        return text.replace("|", "\\|")

    lines = [
        "# Parameters",
        "",
        "Every key of a run's params file (`params/train/*.yaml`, `build_config({...})` in notebooks,",
        "`vqalab train --set key=value`), with its default, type, meaning and recommended range.",
        "Generated from `vqalab.config.parameter_table()`; regenerate with",
        "`.venv/bin/python -m vqalab.report --parameters-doc docs/PARAMETERS.md`.",
        "`model` and `data` also take the keyword arguments of the registered builder they name.",
        "",
        "| key | default | type | meaning | range |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in parameter_rows():
        lines.append("| " + " | ".join(cell(row[k], code=k in ("key", "default"))
                                        for k in ("key", "default", "type", "meaning", "range")) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Writing the week's folder


def _write_text(path: Path, text: str) -> None:
    """Write through a temporary file and rename; readable by others (reports are shared)."""
    from vqalab.runs import atomic_write_bytes

    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")))
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _archive(week_dir: Path, files: list[Path]) -> Path:
    """Move ``files`` to ``week_dir/previous/<timestamp>/``: a re-run never loses earlier outputs."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1000):
        target = week_dir / PREVIOUS_DIR / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            target.mkdir(parents=True)
            break
        except FileExistsError:
            continue
    else:
        raise RuntimeError(f"could not create a new folder under {week_dir / PREVIOUS_DIR}")
    for path in files:
        shutil.move(str(path), str(target / path.name))
    return target


def render_week(week_dir: Path, summary: dict, since: dict | None) -> None:
    """Write ``index.html`` and ``report.html`` of a week from its summary and executed notebooks."""
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
               "generated": summary["generated"], "environment": summary["environment"],
               "archived": [f"{PREVIOUS_DIR}/{name}/" for name in archived]}
    _write_text(week_dir / INDEX_FILE, env.get_template("index.html.j2").render(**context))
    import markupsafe

    report = env.get_template("report.html.j2").render(
        **context, notebook_css=markupsafe.Markup(styles),
        sections=[{"record": s["record"], "body": markupsafe.Markup(s["body"])} for s in sections])
    _write_text(week_dir / REPORT_FILE, report)


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
    old_summary = _read_summary(week_dir / SUMMARY_FILE) if (week_dir / SUMMARY_FILE).is_file() else {}
    if earlier:
        derived = [week_dir / f for f in (INDEX_FILE, REPORT_FILE, SUMMARY_FILE) if (week_dir / f).exists()]
        kept = _archive(week_dir, earlier + derived)
        log.info("earlier outputs of this week moved to %s", kept)
    week_dir.mkdir(parents=True, exist_ok=True)

    env = environment(preset, root)
    studies = dict(old_summary.get("studies", {}))  # studies of this week not re-run stay listed
    for study in plan:
        record = execute_study(study, out_dir=week_dir, cwd=root, preset=preset)
        record["environment"] = env
        record.update(headline={}, text=[])
        notebook = _read_notebook(week_dir / record["notebook"])
        page = None
        if notebook is not None:
            record.update(read_findings(notebook))
            try:
                page = render_study(notebook, record, week)
            except Exception as err:  # one page that cannot render must not sink the week
                log.exception("could not render %s", record["notebook"])
                record.update(status=STATUS_FAILED, error=f"HTML rendering failed: {type(err).__name__}: {err}")
        _write_text(week_dir / record["html"], page or error_page(record, week))
        studies[record["name"]] = record
        # summary and index after every study: an interrupted run still shows what finished
        summary = {"week": week, "generated": dt.datetime.now().isoformat(timespec="seconds"),
                   "environment": env, "studies": studies}
        _write_text(week_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str))
        since = since_last_week(reports_dir, week, studies)
        render_week(week_dir, summary, since)

    failed = [name for name in (s["name"] for s in plan) if studies[name]["status"] != STATUS_OK]
    log.info("report: %s", week_dir / INDEX_FILE)
    if failed:
        log.error("failed: %s (see their pages in %s)", ", ".join(failed), week_dir)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vqalab.report", description="report helpers")
    parser.add_argument("--parameters-doc", metavar="PATH", required=True,
                        help="write the parameter registry as Markdown (docs/PARAMETERS.md)")
    args = parser.parse_args(argv)
    Path(args.parameters_doc).write_text(parameters_markdown(), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
