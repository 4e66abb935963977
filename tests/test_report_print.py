"""The week as the lab passes it around: ``report.pdf`` (Debian's headless Chromium) and ``post/``.

A two-study week of tiny notebooks is reported once per module; the PDF is read back with
poppler's ``pdftotext`` and ``pdfimages``. The PDF tests skip where Chromium or poppler-utils is
not installed (`.ci/run` installs both).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess

import pytest
from conftest import write_notebook

from vqalab.report import run_report
from vqalab.report.build import print_week
from vqalab.report.pdf import PDF_FILE

WEEK = "2026-W11"
HOSTILE = '<img src=x onerror=alert(1)>|cell'  # a user-typed name, in a table and a finding
POPPLER = shutil.which("pdftotext") and shutil.which("pdfimages")
needs_printing = pytest.mark.skipif(
    not (shutil.which("chromium") or os.path.exists("/usr/bin/chromium")) or not POPPLER,
    reason="needs Debian's chromium and poppler-utils (apt-get install -y chromium poppler-utils)")

pytestmark = pytest.mark.slow

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


@pytest.fixture(scope="module")
def week(tmp_path_factory):
    root = make_week(tmp_path_factory.mktemp("print") / "project")
    code = run_report(root=root, preset="quick", week=WEEK)
    assert code == 0
    return root / "reports" / WEEK


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


@needs_printing
def test_pdf_of_an_existing_week_runs_no_study(week, capsys):
    notebook_mtime = (week / "alpha.ipynb").stat().st_mtime_ns
    old = week / PDF_FILE
    old.unlink()
    target = week / "elsewhere.pdf"
    target.write_bytes(b"not to be touched")
    os.symlink(target, old)  # a link planted where the PDF goes is replaced, never followed
    code = print_week(week=WEEK, reports_dir=week.parent)
    assert code == 0
    assert not old.is_symlink() and old.read_bytes().startswith(b"%PDF")
    assert target.read_bytes() == b"not to be touched"
    assert (week / "alpha.ipynb").stat().st_mtime_ns == notebook_mtime
    assert str(old) in capsys.readouterr().out


def test_pdf_is_skipped_with_a_reason_without_chromium(week, tmp_path, monkeypatch, caplog):
    from vqalab.report import pdf

    copy = tmp_path / "reports" / WEEK
    shutil.copytree(week, copy, symlinks=True)

    monkeypatch.setattr(pdf.shutil, "which", lambda name: None)
    monkeypatch.setattr(pdf.Path, "exists", lambda self: False if str(self) == "/usr/bin/chromium" else
                        os.path.exists(self))
    with caplog.at_level(logging.WARNING):
        code = print_week(week=WEEK, reports_dir=copy.parent)
    assert code == 1
    assert "chromium is not installed" in caplog.text
    summary = json.loads((copy / "summary.json").read_text())
    assert summary["pdf"]["file"] is None and "chromium is not installed" in summary["pdf"]["skipped"]
