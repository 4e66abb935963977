"""``post/``: the week as a blog post (Hexo, Hugo, Jekyll), as lab note 003 is.

``post/index.md`` holds YAML front matter (title, date, categories, tags: the ``report:`` words of
each study's params file) and per study its findings (the sentences and headline figures of
``vqalab.notebook.findings``), its tables as Markdown and its figures as PNG files beside it
(``<study>-<n>.png``, the executed notebook's ``image/png`` outputs). Nothing of an output's HTML
reaches the post: tables are read cell by cell as text, and every piece of text is escaped for
Markdown (a user-typed ``<script>`` shows as text).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import yaml

from vqalab.io import file_mode, write_atomically
from vqalab.notebook import FINDINGS_MIME
from vqalab.report.execute import read_notebook
from vqalab.report.pages import format_headline
from vqalab.report.presets import REPORT_FIELDS, REPORT_KEY

log = logging.getLogger(__name__)

POST_DIR = "post"
POST_FILE = "index.md"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Backslash-escaped in text: CommonMark's markup characters (links and images, emphasis, code, tables,
# HTML, entities); parentheses need none once brackets and ``<`` are escaped.
MARKDOWN_SPECIAL = set("\\`*_{}[]<>!|&~")
LINE_START_SPECIAL = set("#+-=")  # a heading, list or rule only where a line's text begins


def markdown_text(value) -> str:
    """``value`` as one line of Markdown text: every markup character escaped."""
    text = " ".join(str(value).split())
    escaped = "".join(f"\\{c}" if c in MARKDOWN_SPECIAL else c for c in text)
    return f"\\{escaped}" if escaped[:1] in LINE_START_SPECIAL else escaped


class _TableReader(HTMLParser):
    """The text of each ``<table>``'s cells (row by row); everything else, markup included, is dropped."""

    SKIPPED = ("style", "script", "template", "title")

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tables: list[list[list[str]]] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self._skip = 0
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIPPED:
            self._skip += 1
        elif tag == "table":
            self._depth += 1
            if self._depth == 1:
                self.tables.append([])
        elif tag == "tr" and self._depth == 1:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in self.SKIPPED:
            self._skip = max(0, self._skip - 1)
        elif tag == "table":
            self._depth = max(0, self._depth - 1)
        elif tag == "tr" and self._row is not None:
            if self._row:
                self.tables[-1].append(self._row)
            self._row = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None and not self._skip:
            self._cell.append(data)


def html_tables(html: str) -> list[list[list[str]]]:
    """Rows of cell texts of each top-level table in ``html``."""
    reader = _TableReader()
    reader.feed(html)
    reader.close()
    return [rows for rows in reader.tables if rows]


def markdown_table(rows: list[list[str]]) -> str:
    """A Markdown table: the first row is the header; short rows are padded."""
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    lines = ["| " + " | ".join(markdown_text(c) for c in rows[0]) + " |", "|" + " --- |" * width]
    lines += ["| " + " | ".join(markdown_text(c) for c in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def notebook_outputs(notebook) -> list[tuple[str, object]]:
    """The figures (``("png", bytes)``) and tables (``("table", rows)``) of an executed notebook's
    outputs, in the order the notebook shows them; findings left out (the post writes them from
    the summary)."""
    shown: list[tuple[str, object]] = []
    for cell in notebook.cells if notebook is not None else []:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = output.get("data", {})
            if FINDINGS_MIME in data:
                continue
            png = data.get("image/png")
            if isinstance(png, str):
                try:
                    decoded = base64.b64decode("".join(png.split()), validate=True)
                except (binascii.Error, ValueError):
                    decoded = b""
                if decoded.startswith(PNG_SIGNATURE):
                    shown.append(("png", decoded))
            html = data.get("text/html")
            if isinstance(html, list):
                html = "".join(html)
            if isinstance(html, str):
                shown += [("table", rows) for rows in html_tables(html)]
    return shown


def front_matter(summary: dict, studies: list[dict]) -> str:
    words = {field: list(dict.fromkeys(w for s in studies for w in (s.get(REPORT_KEY) or {}).get(field, [])))
             for field in REPORT_FIELDS}
    meta = {"title": f"Weekly lab report {summary['week']}", "date": str(summary["generated"]).replace("T", " "),
            **words}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def study_section(record: dict, week_dir: Path, folder: Path) -> list[str]:
    """The study's Markdown lines; its figures are written into ``folder``."""
    lines = [f"## {markdown_text(record['title'])}", ""]
    status = record.get("status", "")
    lines += [f"*{markdown_text(status.replace('_', ' '))}, preset {markdown_text(record.get('preset', ''))}*", ""]
    if record.get("error"):
        lines += [f"Error: {markdown_text(record['error'])}", ""]
    lines += [f"- {markdown_text(sentence)}" for sentence in record.get("text") or []]
    if record.get("text"):
        lines.append("")
    headline, noise = record.get("headline") or {}, record.get("noise") or {}
    if headline:
        rows = [["figure", "value"]] + [
            [name, format_headline(value) + (f" ± {format_headline(noise[name])}" if noise.get(name) is not None else "")]
            for name, value in headline.items()]
        lines += [markdown_table(rows), ""]
    notebook = read_notebook(week_dir / record["notebook"]) if record.get("notebook") else None
    figures = 0
    for kind, content in notebook_outputs(notebook):
        if kind == "table":
            lines += [markdown_table(content), ""]
            continue
        figures += 1
        name = f"{record['name']}-{figures}.png"
        write_atomically(folder / name, lambda f, png=content: f.write(png))
        lines += [f"![{markdown_text(f'Figure {figures} of ' + record['title'])}]({name})", ""]
    return lines


def write_post(week_dir: Path, summary: dict) -> Path:
    """Write ``week_dir/post/`` (index.md and figures) from the week's summary and notebooks.

    The post is built in a private folder beside it and then takes ``post``'s place by a rename:
    a reader never sees half a post, and a symbolic link planted at ``post`` is replaced, not followed.
    """
    week_dir = Path(week_dir)
    studies = [summary["studies"][name] for name in sorted(summary["studies"])]
    building = Path(tempfile.mkdtemp(dir=week_dir, prefix=f".{POST_DIR}-"))
    try:
        os.chmod(building, file_mode() | (file_mode() & 0o444) >> 2)  # as mkdir would (mkdtemp: 0700)
        intro = f"The studies of week {summary['week']}, as the weekly report shows them (figures beside this file)."
        lines = [front_matter(summary, studies), intro, ""]
        for record in studies:
            lines += study_section(record, week_dir, building)
        text = "\n".join(lines).rstrip() + "\n"
        write_atomically(building / POST_FILE, lambda f: f.write(text.encode("utf-8")))
        target = week_dir / POST_DIR
        old = None
        if os.path.lexists(target):
            old = Path(tempfile.mkdtemp(dir=week_dir, prefix=f".{POST_DIR}-old-")) / POST_DIR
            os.rename(target, old)  # the link or folder itself moves
        os.rename(building, target)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    if old is not None:
        if old.is_symlink():
            old.unlink()
        else:
            shutil.rmtree(old)
        old.parent.rmdir()
    log.info("blog post: %s", target / POST_FILE)
    return target / POST_FILE

