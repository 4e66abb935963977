"""A shared lab machine and shared report pages: locks, logs and outputs never follow a symbolic link
planted in ``reports/`` or ``runs/``, odd files where folders belong get a one-line error, and the CSS
of notebook outputs can neither fetch anything nor reach outside its own output."""

from __future__ import annotations

import os

import pytest

from vqalab import io, runs
from vqalab.cli import main as cli_main
from vqalab.registry import ConfigError

VICTIM_TEXT = "another user's file\n"


@pytest.fixture
def victim(tmp_path):
    """A file a planted symlink points at: its content must never change."""
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


# --- locks, logs and week folders ---------------------------------------------------------------

def test_a_symlinked_week_lock_is_refused_and_its_target_untouched(tmp_path, victim):
    from test_report import WEEK, make_project

    from vqalab.report import run_report

    root = make_project(tmp_path / "project")
    lock = root / "reports" / f".{WEEK}.lock"
    lock.parent.mkdir()
    lock.symlink_to(victim)

    with pytest.raises(ConfigError, match=rf"lock file {lock} is a symbolic link: not followed; remove it"):
        run_report(root=root, preset="quick", week=WEEK, only=["broken"])
    assert victim.read_text() == VICTIM_TEXT
    assert lock.is_symlink() and not (root / "reports" / WEEK).exists()  # nothing ran


def test_a_symlinked_run_folder_lock_is_refused_on_resume(tmp_path, victim, capsys):
    from test_hardening import tiny_config

    cfg = tiny_config(tmp_path / "runs")
    run_dir = tmp_path / "runs" / "hard" / "20260101-000000-tiny"
    run_dir.mkdir(parents=True)
    runs.write_yaml(run_dir / "params.yaml", cfg.to_dict())
    (run_dir / io.LOCK_FILE).symlink_to(victim)
    assert cli_main(["train", "--resume", str(run_dir), "--no-progress"]) == 2
    assert one_line_error(capsys) == (f"error: lock file {run_dir / io.LOCK_FILE} is a symbolic link: not "
                                      "followed; remove it (the file is created anew)")
    assert victim.read_text() == VICTIM_TEXT


def test_a_lock_that_is_a_folder_gets_a_one_line_error(tmp_path, capsys):
    from test_hardening import tiny_config

    cfg = tiny_config(tmp_path / "runs")
    run_dir = tmp_path / "runs" / "hard" / "20260101-000000-tiny"
    (run_dir / io.LOCK_FILE).mkdir(parents=True)
    runs.write_yaml(run_dir / "params.yaml", cfg.to_dict())
    assert cli_main(["train", "--resume", str(run_dir), "--no-progress"]) == 2
    assert one_line_error(capsys) == (f"error: lock file {run_dir / io.LOCK_FILE} is a folder, not a file: "
                                      "remove it (the file is created anew)")


def test_a_lock_file_is_created_new_and_reused_as_a_plain_file(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for _ in range(2):  # created with O_EXCL the first time, opened again (no symlink) the second
        with runs.folder_lock(folder, "run folder"):
            assert (folder / io.LOCK_FILE).read_text().startswith(f"PID {os.getpid()} since ")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=rf"lock file {fifo} is not a regular file"), \
            runs.folder_lock(folder, "run folder", lock_file=fifo):
        pass


def test_a_symlinked_study_log_is_not_written_through(tmp_path, victim):
    import json

    from test_report import WEEK, make_project

    from vqalab.report import run_report

    root = make_project(tmp_path / "project")
    log_file = root / "reports" / WEEK / "logs" / "broken.log"
    log_file.parent.mkdir(parents=True)
    log_file.symlink_to(victim)
    assert run_report(root=root, preset="quick", week=WEEK, only=["broken"]) == 1
    assert victim.read_text() == VICTIM_TEXT
    record = json.loads((root / "reports" / WEEK / "summary.json").read_text())["studies"]["broken"]
    assert record["status"] == "failed"
    assert record["error"] == (f"ConfigError: log file {log_file} is a symbolic link: not followed; remove it "
                               "(the file is created anew)")


@pytest.mark.slow  # runs a notebook
def test_a_study_log_symlink_from_an_earlier_run_moves_to_previous(tmp_path, victim):
    """A re-run moves the earlier log away (the link itself, not its target) and writes a new one."""
    from test_report import WEEK, make_project

    from vqalab.report import run_report

    root = make_project(tmp_path / "project")
    week_dir = root / "reports" / WEEK
    assert run_report(root=root, preset="quick", week=WEEK, only=["broken"]) == 1
    log_file = week_dir / "logs" / "broken.log"
    log_file.unlink()
    log_file.symlink_to(victim)
    assert run_report(root=root, preset="quick", week=WEEK, only=["broken"]) == 1
    assert victim.read_text() == VICTIM_TEXT
    assert not log_file.is_symlink() and "before the error" in log_file.read_text()
    (archived,) = (week_dir / "previous").iterdir()
    assert (archived / "broken.log").is_symlink()


@pytest.mark.slow  # runs a notebook
def test_an_output_notebook_symlink_is_replaced_not_written_through(tmp_path, victim):
    from test_report import WEEK, make_project

    from vqalab.report import run_report

    root = make_project(tmp_path / "project")
    week_dir = root / "reports" / WEEK
    week_dir.mkdir(parents=True)
    dangling = tmp_path / "created-by-the-report.ipynb"
    (week_dir / "broken.ipynb").symlink_to(dangling)  # papermill would create this file
    (week_dir / "broken.html").symlink_to(victim)
    assert run_report(root=root, preset="quick", week=WEEK, only=["broken"]) == 1
    assert victim.read_text() == VICTIM_TEXT and not dangling.exists()
    assert "planned failure" in (week_dir / "broken.ipynb").read_text()
    assert not (week_dir / "broken.html").is_symlink()


@pytest.mark.parametrize("where", ["week", "logs", "previous"])
def test_a_week_folder_that_is_a_file_or_a_link_gets_a_one_line_error(tmp_path, where, capsys):
    from test_report import WEEK

    from vqalab.report.build import check_week_folder

    reports = tmp_path / "reports"
    path = reports / WEEK if where == "week" else reports / WEEK / where
    path.parent.mkdir(parents=True)
    path.write_text("a file")
    with pytest.raises(ConfigError, match=rf"^week folder {path} is a file, not a folder: move it away"):
        check_week_folder(reports, WEEK)
    path.unlink()
    path.symlink_to(tmp_path)
    with pytest.raises(ConfigError, match=rf"^week folder {path} is a symbolic link: not followed"):
        check_week_folder(reports, WEEK)


def test_report_cli_names_a_week_folder_that_is_a_file(tmp_path, monkeypatch, capsys):
    from test_report import WEEK, make_project

    root = make_project(tmp_path / "project")
    (root / "reports").mkdir()
    (root / "reports" / WEEK).write_text("a file")
    monkeypatch.setattr("vqalab.report.build.project_root", lambda: root)
    assert cli_main(["report", "--preset", "quick", "--week", WEEK]) == 2
    assert one_line_error(capsys) == (f"error: week folder {root / 'reports' / WEEK} is a file, not a folder: "
                                      "move it away (the report creates the folder)")


# --- CSS of notebook outputs ----------------------------------------------------------------------

HOST = "http://127.0.0.1:9/x"  # never contacted: these tests only read the cleaned text
# style attribute values that load something, escaped as a browser would still read them
FETCHING_DECLARATIONS = [
    f"background:url({HOST})",
    f"background:URL( '{HOST}' )",
    f"background:u\\72l({HOST})",
    f"background:\\000075rl({HOST})",
    f"background:u\\rl({HOST})",
    f"b\\61ckground:u\\72 l({HOST})",
    f"background-image:image-set('{HOST}' 1x)",
    f"background-image:-webkit-image-set('{HOST}' 1x)",
    f"background-image:\\2d webkit-image-set(url({HOST}) 1x)",
    f"background-image:linear-gradient(red, blue), url({HOST})",
    f"border-image:url({HOST}) 30",
    f"list-style-image:url({HOST})",
    f"cursor:url({HOST}), auto",
    f"mask-image:url({HOST})",
    f"--x:url({HOST})",
    "behavior:url(x.htc)",
    "-moz-binding:url(x.xml#b)",
    "width:expression(alert(1))",
    "background:src(x)",
]
FETCHING_STYLESHEETS = [
    f"@import url({HOST});",
    f"@import '{HOST}';",
    f"@\\69mport '{HOST}';",
    f"@\\000069mport url({HOST});",
    f"@font-face {{ font-family: f; src: url({HOST}) }} p {{ font-family: f }}",
    f"@f\\6fnt-face {{ font-family: f; src: url({HOST}) }}",
    f"@media all {{ p {{ background: url({HOST}) }} }}",
    f"@supports (color: red) {{ p {{ background: url({HOST}) }} }}",
    f"@namespace url({HOST});",
    f"p {{ background: u\\72l({HOST}) }}",
    f"p {{ color: red; background-image: -webkit-image-set('{HOST}' 1x) }}",
]


def fetches(css_text: str) -> list[str]:
    """Every url token, function (other than plain colour/gradient ones) or at-rule in ``css_text``,
    read back by tinycss2 as a browser would."""
    import tinycss2

    from vqalab.report.html import ALLOWED_CSS_FUNCTIONS

    found = []

    def walk(tokens):
        for token in tokens or []:
            if token.type in ("url", "at-rule", "at-keyword"):
                found.append(tinycss2.serialize([token]))
            if token.type == "function" and token.lower_name not in ALLOWED_CSS_FUNCTIONS:
                found.append(token.lower_name)
            for part in ("arguments", "content", "prelude", "value"):
                if isinstance(getattr(token, part, None), list):
                    walk(getattr(token, part))

    walk(tinycss2.parse_stylesheet(css_text))
    walk(tinycss2.parse_blocks_contents(css_text))
    return found


@pytest.mark.parametrize("declaration", FETCHING_DECLARATIONS)
def test_style_attributes_that_fetch_lose_that_declaration_only(declaration):
    from vqalab.report.html import clean_declarations

    cleaned = clean_declarations(f"color: red; {declaration}; font-weight: bold")
    assert cleaned == "color: red; font-weight: bold"
    assert fetches(f"{declaration};") != []  # the checker sees what the cleaner removed


@pytest.mark.parametrize("stylesheet", FETCHING_STYLESHEETS)
def test_style_blocks_that_fetch_keep_no_at_rule_and_no_url(stylesheet):
    from vqalab.report.html import clean_stylesheet

    cleaned = clean_stylesheet(f"td {{ color: blue }} {stylesheet}", scope="vqalab-scope-a-1")
    assert fetches(cleaned) == [] and fetches(stylesheet) != []
    assert cleaned.startswith(".vqalab-scope-a-1 td { color: blue }")


@pytest.mark.parametrize("declaration, kept", [
    ("position: fixed", ""), ("position: absolute", ""), ("position: sticky", ""), ("p\\6fsition: fixed", ""),
    ("z-index: 2147483647", ""), ("inset: 0", ""), ("top: 0", ""), ("transform: translate(0, -900px)", ""),
    ("margin-top: -900px", ""), ("margin: 0 0 -1px 0", ""), ("margin: 4px 8px", "margin: 4px 8px"),
    ("letter-spacing: -50px", ""), ("outline: 5000px solid lime", ""), ("box-shadow: 0 0 0 5000px lime", ""),
    ("text-shadow: 0 -900px lime", ""), ("opacity: 0.99", ""), ("filter: blur(0)", ""), ("will-change: opacity", ""),
    ("clip-path: inset(0)", ""), ("mix-blend-mode: multiply", ""),
    ("background: rgb(0, 255, 0)", "background: rgb(0, 255, 0)"), ("width: 100%", "width: 100%"),
    ("color: red !important", "color: red !important"), ("font-family: \"</style><b>\"", "font-family: \"\\3c /style>\\3c b>\""),
])
def test_nothing_can_be_placed_over_the_page(declaration, kept):
    from vqalab.report.html import clean_declarations

    assert clean_declarations(declaration) == kept


@pytest.mark.parametrize("selector, scoped", [
    ("td", ".vqalab-scope-a-1 td"),
    ("#T_ab12_row0_col1", ".vqalab-scope-a-1 #T_ab12_row0_col1"),
    ("#T_ab tbody tr:nth-child(odd) > th.col_heading", ".vqalab-scope-a-1 #T_ab tbody tr:nth-child(odd) > th.col_heading"),
    (".dataframe thead th, td[align=left]", ".vqalab-scope-a-1 .dataframe thead th, .vqalab-scope-a-1 td[align=left]"),
    ("~ .status-failed", None), ("+ p", None), ("> .x", None), ("td::before", None), (":root", None),
    ("& .x", None), (":has(.x)", None), ("*|td", None),
])
def test_selectors_are_scoped_to_their_output(selector, scoped):
    from vqalab.report.html import clean_stylesheet

    expected = f"{scoped} {{ color: red }}" if scoped else ""
    assert clean_stylesheet(f"{selector} {{ color: red }}", scope="vqalab-scope-a-1") == expected


def test_pandas_styler_tables_keep_every_style_in_their_scope():
    import re

    import pandas as pd

    from vqalab.report.html import sanitize_html

    frame = pd.DataFrame({"a": [1, 2, 3], "b": [0.1, 0.5, 0.9]})
    styler = frame.style.background_gradient(subset=["a"]).bar(subset=["b"]).highlight_max(color="yellow")
    html = styler.set_table_styles([{"selector": "th", "props": "text-align: left"}]).to_html()
    cleaned = sanitize_html(html, scope="vqalab-scope-a-7")
    assert cleaned.startswith('<div class="vqalab-scope-a-7"><style type="text/css">') and cleaned.endswith("</div>")
    before = re.findall(r"^(#T_\w+(?: th)?) \{$", html, flags=re.MULTILINE)
    after = re.findall(r"^\.vqalab-scope-a-7 (#T_\w+(?: th)?) \{", cleaned.split("</style>")[0].split(">", 2)[2],
                       flags=re.MULTILINE)
    assert after == before and len(before) == 7  # every rule kept, in order
    declarations = re.findall(r"^  ([\w-]+: [^;]+);$", html, flags=re.MULTILINE)
    assert all(d in cleaned for d in declarations) and len(declarations) >= 14  # every value unchanged
    assert cleaned.count('id="T_') == html.count('id="T_')


def test_an_output_cannot_take_the_id_of_a_report_section():
    from vqalab.report.html import sanitize_html

    taken = "".join(f'<p id="{i}">x</p>' for i in ("contents", "study-broken", " parameters ", "environment"))
    assert sanitize_html(taken) == "<p>x</p>" * 4
    assert sanitize_html('<td id="T_ab_row0_col0">x</td><h2 id="Study-results">r</h2>') == 'x<h2 id="Study-results">r</h2>'


def test_a_cleaned_page_keeps_only_scoped_rules_when_cleaned_again():
    from vqalab.report.html import sanitize_html

    once = sanitize_html("<style>td { color: red }</style><table><tr><td>x</td></tr></table>", scope="vqalab-scope-a-1")
    assert sanitize_html(once) == once  # the whole-body pass changes nothing it cleaned
    assert sanitize_html("<style>.status-failed { display: none }</style>") == "<style></style>"


def render(cells_outputs: list[list[str]]) -> str:
    """A study page rendered from an executed notebook whose code cells show these HTML outputs."""
    import nbformat

    from vqalab.report.pages import render_study

    nb = nbformat.v4.new_notebook()
    for outputs in cells_outputs:
        cell = nbformat.v4.new_code_cell("display(HTML(...))")
        cell.outputs = [nbformat.v4.new_output("display_data", data={"text/html": html}) for html in outputs]
        nb.cells.append(cell)
    record = {"title": "T", "name": "study", "preset": "quick", "status": "ok", "error": None, "data": None}
    return render_study(nb, record, "2026-W10")


def body_text_outside_styles(page: str) -> str:
    from html.parser import HTMLParser

    text = []

    class Text(HTMLParser):
        in_style = False

        def handle_starttag(self, tag, attrs):
            self.in_style |= tag == "style"

        def handle_endtag(self, tag):
            self.in_style &= tag != "style"

        def handle_data(self, data):
            if not self.in_style:
                text.append(data)

    Text().feed(page.split("<body", 1)[1])
    return " ".join(text)


@pytest.mark.parametrize("unclosed", ["<math><mtext><table><mglyph><style>", "<table><tr><td><style>",
                                      "<style>", "<textarea>", "<div><p><b title='"])
def test_an_unclosed_element_in_one_output_does_not_swallow_the_next(unclosed):
    page = render([[f"{unclosed}<p>rest of the first</p>", "<p>second output</p>"], ["<p>next cell</p>"]])
    text = body_text_outside_styles(page)
    assert "second output" in text and "next cell" in text


POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def policy_before_styles(page: str) -> str | None:
    """The Content-Security-Policy of a page's <meta>, when it comes before any <style> of the head."""
    from html.parser import HTMLParser

    found = []

    class Head(HTMLParser):
        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "style":
                found.append(None)
            if tag == "meta" and (attrs.get("http-equiv") or "").lower() == "content-security-policy":
                found.append(attrs.get("content"))

    Head().feed(page.split("</head>", 1)[0])
    return found[0] if found else None


def test_every_page_carries_the_content_security_policy():
    from vqalab.report.pages import error_page, skipped_page

    record = {"title": "T", "name": "s", "error": "boom",
              "data": {"name": "rafdb", "root": "/x", "expected": "files"}}
    for page in (render([["<p>x</p>"]]), error_page(record, "2026-W10"), skipped_page(record, "2026-W10")):
        assert policy_before_styles(page) == POLICY


def test_a_run_named_style_shows_as_text_and_the_table_goes_on():
    import pandas as pd

    from vqalab.report.html import sanitize_html

    names = ["<style>", "<STYLE title='x'>", "a run after it"]
    html = pd.DataFrame({"run": names, "val_acc": [0.5] * 3}).style.format(precision=3).to_html()
    text = body_text_outside_styles("<body>" + sanitize_html(html, scope="vqalab-scope-a-1"))
    assert "<style>" in text and "<STYLE title='x'>" in text and "a run after it" in text
    assert text.count("0.500") == 3


# --- the week's index while a re-run is under way -------------------------------------------------

@pytest.mark.slow  # runs a notebook
def test_a_week_keeps_its_index_report_and_summary_while_a_study_runs_again(tmp_path, monkeypatch):
    """What a SIGKILL in the middle of a re-run would leave: the earlier index, report and summary,
    whole (each later one replaces it by a rename); copies of them are also in previous/."""
    import json

    from test_report import WEEK, make_project

    from vqalab.report import build, run_report

    root = make_project(tmp_path / "project")
    week_dir = root / "reports" / WEEK
    assert run_report(root=root, preset="quick", week=WEEK, only=["broken"]) == 1
    before = {f: (week_dir / f).read_bytes() for f in ("index.html", "report.html", "summary.json")}
    seen = {}

    def killed(study, **kwargs):
        seen.update({f: (week_dir / f).read_bytes() for f in before if (week_dir / f).is_file()})
        raise KeyboardInterrupt  # the run ends here, as SIGTERM or SIGKILL would end it

    monkeypatch.setattr(build, "run_study", killed)
    with pytest.raises(KeyboardInterrupt):
        run_report(root=root, preset="quick", week=WEEK, only=["broken"], force=True)
    assert seen == before  # during the re-run
    assert {f: (week_dir / f).read_bytes() for f in before} == before  # and after it was killed
    assert json.loads(before["summary.json"])["studies"]["broken"]["status"] == "failed"
    (archived,) = (week_dir / "previous").iterdir()
    assert {f: (archived / f).read_bytes() for f in before} == before
    assert sorted(p.name for p in archived.iterdir()) == ["broken.html", "broken.ipynb", "broken.log", "index.html",
                                                          "report.html", "summary.json"]
