"""The week as the lab passes it around: ``report.pdf`` (Debian's headless Chromium) and ``post/``.

A two-study week of tiny notebooks is reported once per module; the PDF is read back with
poppler's ``pdftotext`` and ``pdfimages``. The PDF tests skip where Chromium or poppler-utils is
not installed (`.ci/run` installs both).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess

import pytest
import yaml
from conftest import write_notebook

from vqalab.registry import ConfigError
from vqalab.report import run_report
from vqalab.report.build import publish_week
from vqalab.report.pdf import PDF_FILE
from vqalab.report.post import markdown_text
from vqalab.report.presets import load_report_section

WEEK = "2026-W11"
HOSTILE = '<img src=x onerror=alert(1)>|cell'  # a user-typed name, in a table and a finding
POPPLER = shutil.which("pdftotext") and shutil.which("pdfimages")
needs_printing = pytest.mark.skipif(
    not (shutil.which("chromium") or os.path.exists("/usr/bin/chromium")) or not POPPLER,
    reason="needs Debian's chromium and poppler-utils (apt-get install -y chromium poppler-utils)")

STUDIES = {"alpha": "Alpha study", "beta": "Beta study"}


def make_week(root):
    (root / "notebooks").mkdir(parents=True)
    (root / "params").mkdir()
    for number, (name, title) in enumerate(STUDIES.items()):
        write_notebook(
            root / "notebooks" / f"{name}.ipynb", title,
            'label: str = "a"  # experiment name\nscore: float = 0.5  # the headline figure',
            "import matplotlib.pyplot as plt\n"
            "fig, ax = plt.subplots(figsize=(4, 3))\n"
            f"ax.plot([0, 1, 2], [0, {number + 1}, 0])\nax.set_title('{title} figure')\nplt.show()",
            "import pandas as pd\n"
            "display(pd.DataFrame({'name': [label], 'score': [score]}))",
            "from vqalab.notebook import findings\n"
            "findings(headline={'score': score}, text=[f'experiment {label} scored {score}'], noise={'score': 0.01})",
        )
        (root / "params" / f"{name}.yaml").write_text(
            "presets:\n"
            f"  quick: {{label: {json.dumps(HOSTILE)}, score: {0.5 + number / 10}}}\n"
            "report:\n"
            f"  categories: [lab meeting]\n  tags: [fer, {name}]\n")
    return root


@pytest.fixture(scope="module", autouse=True)
def printing():
    """The real ``write_pdf`` (conftest gives other report tests a stand-in)."""
    from vqalab.report import build, pdf

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(build, "write_pdf", pdf.write_pdf)
        yield


@pytest.fixture(scope="module")
def week(tmp_path_factory):
    root = make_week(tmp_path_factory.mktemp("print") / "project")
    code = run_report(root=root, preset="quick", week=WEEK)
    assert code == 0
    return root / "reports" / WEEK


@pytest.mark.slow
@needs_printing
def test_pdf_has_every_study_title_and_a_figure_per_study_page(week):
    pdf = week / PDF_FILE
    assert pdf.read_bytes().startswith(b"%PDF")
    summary = json.loads((week / "summary.json").read_text())
    assert summary["pdf"] == {"file": PDF_FILE}
    pages = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True,
                           text=True).stdout.split("\f")
    # each study starts a page of its own (break-before: page); its title heads it
    starts = {name: next(i for i, page in enumerate(pages) if f"({name})" in page) for name in STUDIES}
    for name, title in STUDIES.items():
        assert title in pages[starts[name]]
    assert starts["alpha"] != starts["beta"]
    assert "plt.subplots" not in "".join(pages)  # code hidden
    # pdfimages -list: "page num type width height ..." after two header lines
    listing = subprocess.run(["pdfimages", "-list", str(pdf)], check=True, capture_output=True,
                             text=True).stdout.splitlines()[2:]
    image_pages = {int(line.split()[0]) for line in listing if line.split()[2] == "image"}
    for name in STUDIES:
        last = min([s for s in starts.values() if s > starts[name]] + [len(pages)])
        assert image_pages & set(range(starts[name] + 1, last + 1)), (name, image_pages, starts)  # 1-based


@pytest.mark.slow
@needs_printing
def test_pdf_of_an_existing_week_runs_no_study(week, capsys):
    notebook_mtime = (week / "alpha.ipynb").stat().st_mtime_ns
    old = week / PDF_FILE
    old.unlink()
    target = week / "elsewhere.pdf"
    target.write_bytes(b"not to be touched")
    os.symlink(target, old)  # a link planted where the PDF goes is replaced, never followed
    code = publish_week(week=WEEK, reports_dir=week.parent)
    assert code == 0
    assert not old.is_symlink() and old.read_bytes().startswith(b"%PDF")
    assert target.read_bytes() == b"not to be touched"
    assert (week / "alpha.ipynb").stat().st_mtime_ns == notebook_mtime
    assert str(old) in capsys.readouterr().out


@pytest.mark.slow
def test_pdf_is_skipped_with_a_reason_without_chromium(week, tmp_path, monkeypatch, caplog):
    from vqalab.report import pdf

    copy = tmp_path / "reports" / WEEK
    shutil.copytree(week, copy, symlinks=True)

    monkeypatch.setattr(pdf.shutil, "which", lambda name: None)
    monkeypatch.setattr(pdf.Path, "exists", lambda self: False if str(self) == "/usr/bin/chromium" else
                        os.path.exists(self))
    with caplog.at_level(logging.WARNING):
        code = publish_week(week=WEEK, reports_dir=copy.parent)
    assert code == 1
    assert "chromium is not installed" in caplog.text
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["pdf"]["file"] is None and "chromium is not installed" in summary["pdf"]["skipped"]


def rendered_tags(markdown: str) -> list[tuple[str, dict]]:
    """Start tags of the Markdown as mistune (nbconvert's renderer) renders it, raw HTML allowed as
    a blog's "unsafe" mode would: only the post's own escaping keeps user text as text."""
    from html.parser import HTMLParser

    import mistune

    tags = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append((tag, dict(attrs)))

    html = mistune.create_markdown(escape=False, plugins=["table"])(markdown)
    html = re.sub(r">\s+<", "><", re.sub(r"\n\s*", "\n", html))
    Tags().feed(html)
    return tags, html


@pytest.mark.slow
def test_post_front_matter_findings_tables_and_figures(week):
    text = (week / "post" / "index.md").read_text()
    assert text.startswith("---\n")
    _, head, body = text.split("---\n", 2)
    meta = yaml.safe_load(head)
    assert meta["title"] == f"Weekly lab report {WEEK}"
    assert str(meta["date"]).startswith(json.loads((week / "summary.json").read_text())["generated"][:10])
    assert meta["categories"] == ["lab meeting"] and meta["tags"] == ["fer", "alpha", "beta"]
    for title in STUDIES.values():
        assert f"## {title}" in body
    # every image link resolves to a PNG beside the post; each study has its figure
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", body)
    assert sorted(links) == ["alpha-1.png", "beta-1.png"]
    alpha = body.split("## Beta study")[0]
    assert alpha.index("(alpha-1.png)") < alpha.index("| name | score |")  # in the notebook's order
    for link in links:
        assert (week / "post" / link).read_bytes().startswith(b"\x89PNG")
    tags, html = rendered_tags(body)
    # Markdown only: what renders is the post's own structure, the user's <img> stays text
    assert {tag for tag, _ in tags} <= {"h2", "p", "em", "ul", "li", "table", "thead", "tbody", "tr", "th", "td",
                                        "img"}
    assert [attrs["src"] for tag, attrs in tags if tag == "img"] == links
    assert "onerror" not in str(tags)
    hostile = "&lt;img src=x onerror=alert(1)&gt;|cell"
    assert f"<li>experiment {hostile} scored 0.5</li>" in html  # the finding, as text
    assert f"<td>{hostile}</td>" in html  # the notebook's table: one cell, the | kept inside it
    assert "<td>0.5 ± 0.01</td>" in html and "<td>0.6 ± 0.01</td>" in html  # headline figures with noise


@pytest.mark.slow
def test_post_replaces_a_planted_link_without_following_it(week, tmp_path):
    from vqalab.report.post import write_post

    copy = tmp_path / WEEK
    shutil.copytree(week, copy, symlinks=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(copy / "post")
    os.symlink(elsewhere, copy / "post")
    write_post(copy, json.loads((copy / "summary.json").read_text()))
    assert not (copy / "post").is_symlink() and (copy / "post" / "index.md").is_file()
    assert list(elsewhere.iterdir()) == []
    assert [p.name for p in copy.iterdir() if p.name.startswith(".post")] == []  # nothing left behind


def test_markdown_text_escapes_markup():
    assert markdown_text("a <b>|[x](javascript:y) *z*\n") == r"a \<b\>\|\[x\](javascript:y) \*z\*"
    assert markdown_text("# not a heading") == r"\# not a heading"
    assert markdown_text("- 1 (t-test) & #2") == r"\- 1 (t-test) \& #2"


@pytest.mark.parametrize(("section", "message"), [
    ("report: [fer]", "'report' must map categories and tags"),
    ("report: {tag: [fer]}", "unknown key 'report.tag'"),
    ("report: {tags: fer}", "report.tags = 'fer': expected a list of non-empty strings"),
    ("report: {categories: [1]}", "report.categories = [1]: expected a list"),
])
def test_report_section_is_checked(tmp_path, section, message):
    params = tmp_path / "study.yaml"
    params.write_text(f"presets: {{quick: {{}}}}\n{section}\n")
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        load_report_section(params)
    assert str(params) in str(err.value)


def test_report_section_is_optional(tmp_path):
    params = tmp_path / "study.yaml"
    params.write_text("presets: {quick: {}}\n")
    assert load_report_section(params) == {"categories": [], "tags": []}


def executed_cell(source: str, start: str, end: str, *outputs):
    import nbformat

    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["papermill"] = {"start_time": f"2026-03-02T10:00:{start}+00:00",
                                  "end_time": f"2026-03-02T10:00:{end}+00:00"}
    cell.outputs = list(outputs)
    return cell


def test_figures_and_tables_name_the_runs_of_the_latest_sweep_before_them():
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nbformat

    from vqalab.report.pages import render_study

    fig = plt.figure(figsize=(1, 1))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    png = nbformat.v4.new_output("display_data", data={"image/png": base64.b64encode(buffer.getvalue()).decode()})
    table = nbformat.v4.new_output("display_data", data={"text/html": "<table><tr><td>1</td></tr></table>"})
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Runs study"),
                executed_cell("setup()", "00", "01", table),  # before any sweep: names nothing
                executed_cell("sweep_a()", "01", "05"),
                executed_cell("plot_a()", "05", "06", png, table),
                executed_cell("sweep_b(); plot_b()", "06", "09", png),
                executed_cell("sweep_c(); sweep_d(); plot_cd()", "09", "12", table)]
    hostile = "runs/<b>x</b>"
    points = [{"run_dir": "runs/a-1", "logged": "2026-03-02T10:00:04+00:00"},
              {"run_dir": hostile, "logged": "2026-03-02T10:00:04+00:00"},
              {"run_dir": "runs/b-1", "logged": "2026-03-02T10:00:08+00:00"},
              {"run_dir": "runs/c-1", "logged": "2026-03-02T10:00:10+00:00"},
              {"run_dir": "runs/c-1", "logged": "2026-03-02T10:00:11+00:00"},  # sweep_d reused it
              {"run_dir": "runs/d-1", "logged": "2026-03-02T10:00:11+00:00"}]
    record = {"name": "runs_study", "title": "Runs study", "preset": "quick", "status": "ok", "error": None,
              "run_points": points}
    page = render_study(nb, record, "2026-W10")
    lists = page.split('<details class="vqalab-runs">')[1:]
    assert len(lists) == 4  # the figure and table of plot_a, the figure of sweep_b's cell, plot_cd's table
    for part in lists[:2]:
        part = part.split("</details>")[0]
        assert "2 run folders behind this (the latest sweep before it)" in part
        assert "<code>runs/a-1</code>" in part and "<code>runs/&lt;b&gt;x&lt;/b&gt;</code>" in part
        assert "<code>vqalab train runs/a-1/params.yaml</code>" in part
        assert "runs/b-1" not in part
    own = lists[2].split("</details>")[0]
    assert "1 run folder behind this (the sweep of its cell)" in own
    assert "<code>vqalab train runs/b-1/params.yaml</code>" in own
    both = lists[3].split("</details>")[0]  # two sweeps in one cell: both named, each folder once
    assert "2 run folders behind this (the 2 sweeps of its cell)" in both
    assert both.count("<code>runs/c-1</code>") == 1 and "<code>runs/d-1</code>" in both and "runs/b-1" not in both
    assert "<b>x</b>" not in page
