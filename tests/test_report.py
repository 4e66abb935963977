"""The weekly report: tiny study notebooks written into tmp_path, executed and rendered for real."""

from __future__ import annotations

import base64
import datetime as dt
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from conftest import write_notebook

from vqalab.params import parameter_table, parameters_markdown
from vqalab.registry import ConfigError
from vqalab.report import run_report
from vqalab.report.freeze import freeze_inputs, freeze_key, kept_record
from vqalab.report.html import sanitize_html
from vqalab.report.presets import load_preset
from vqalab.report.since import since_last_week
from vqalab.report.weeks import iso_week

REPO = Path(__file__).resolve().parents[1]
WEEK = "2026-W10"
HOSTILE = '<script>alert("x")</script>'  # a user-typed experiment name
PLOT_RGB = (255, 0, 255)  # the tiny study's bar colour, looked for in screenshots


def make_project(root: Path) -> Path:
    """A project with two studies: ``plot`` (a magenta bar, findings, a table) and ``broken``."""
    (root / "notebooks").mkdir(parents=True)
    (root / "params").mkdir()
    write_notebook(
        root / "notebooks" / "plot.ipynb", "Plot study",
        'label: str = "a"  # experiment name\nscore: float = 0.5  # the headline figure\n'
        'runs_root: str = "runs"  # where runs go',
        "import matplotlib.pyplot as plt\nfrom pathlib import Path\n"
        "Path(runs_root).mkdir(parents=True, exist_ok=True)\n"
        "(Path(runs_root) / 'marker.txt').write_text(label)\n"
        "fig, ax = plt.subplots(figsize=(4, 3))\n"
        "ax.bar([0], [1], width=2.0, color='#ff00ff')\nplt.show()",
        "import pandas as pd\nprint('label:', label)\n"
        "display(pd.DataFrame({'name': [label], 'score': [score]}).style.format(precision=3))",
        "from vqalab.notebook import findings\n"
        "findings(headline={'score': score, 'label': label}, text=[f'experiment {label} scored {score}'])",
    )
    write_notebook(
        root / "notebooks" / "broken.ipynb", "Broken study",
        "fail: bool = True  # raise on purpose",
        "print('before the error')",
        "if fail:\n    raise ValueError('planned failure')",
    )
    write_notebook(root / "notebooks" / "scratch.ipynb", "Scratch", "x: int = 1  # no params file: not a study")
    (root / "params" / "plot.yaml").write_text(
        "presets:\n"
        f"  quick: {{label: '{HOSTILE}', score: 0.5}}\n"
        "  cpu: {score: 0.75}\n"
        "  gpu: {score: 1.0}\n")
    (root / "params" / "broken.yaml").write_text(
        "presets:\n  quick: {fail: true}\n  cpu: {fail: true}\n  gpu: {}\n")
    return root


def run(root: Path, **kw) -> int:
    kw.setdefault("preset", "quick")
    kw.setdefault("week", WEEK)
    return run_report(root=root, **kw)


class Tags(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def tags_of(path: Path) -> list[tuple[str, dict]]:
    parser = Tags()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser.tags


_SHARED_REPORT: dict = {}


def shared_report(tmp_path_factory) -> dict:
    """One report of both studies per test session, read by this file and the browser tests.

    Tests that change a report copy the project first.
    """
    if not _SHARED_REPORT:
        root = make_project(tmp_path_factory.mktemp("report") / "project")
        runs_root = root / "elsewhere_runs"
        code = run(root, runs_root=runs_root)
        _SHARED_REPORT.update(root=root, code=code, dir=root / "reports" / WEEK, runs_root=runs_root)
    return _SHARED_REPORT


@pytest.fixture
def week(tmp_path_factory):
    return shared_report(tmp_path_factory)


def test_failure_is_marked_and_the_others_succeed(week):
    assert week["code"] == 1
    summary = json.loads((week["dir"] / "summary.json").read_text())
    studies = summary["studies"]
    assert set(studies) == {"plot", "broken"}  # scratch has no params file
    assert studies["plot"]["status"] == "ok" and studies["plot"]["error"] is None
    assert studies["broken"]["status"] == "failed"
    assert "ValueError: planned failure" in studies["broken"]["error"]
    for name in ("plot", "broken"):
        assert (week["dir"] / f"{name}.ipynb").is_file()
        assert (week["dir"] / f"{name}.html").is_file()
    index = (week["dir"] / "index.html").read_text()
    assert 'class="status status-failed">failed<' in index and 'class="status status-ok">ok<' in index
    assert "1 failed" in index
    # the failed page shows what ran before the error, the failing cell and the error
    broken = (week["dir"] / "broken.html").read_text()
    assert "before the error" in broken and "planned failure" in broken
    assert "raise" in broken  # the failing cell's code stays visible
    plot = (week["dir"] / "plot.html").read_text()
    assert "ax.bar" not in plot  # other code is hidden


def test_headline_findings_are_read_from_the_executedwrite_notebook(week):
    summary = json.loads((week["dir"] / "summary.json").read_text())
    plot = summary["studies"]["plot"]
    assert plot["headline"] == {"score": 0.5, "label": HOSTILE}
    assert list(plot["headline"]) == ["score", "label"]  # order as given to findings()
    assert plot["text"] == [f"experiment {HOSTILE} scored 0.5"]
    assert plot["parameters"]["score"] == 0.5 and plot["preset"] == "quick"
    env = summary["environment"]
    assert env["preset"] == "quick" and env["torch"] and env["device"] in ("cpu", "cuda")
    assert env["cpu"]
    index = (week["dir"] / "index.html").read_text()
    for text in ("Environment", "torch", env["torch"], "git commit", 'href="plot.html"', 'href="broken.html"'):
        assert text in index


def test_runs_root_is_passed_when_the_notebook_declares_one(week):
    # the preset does not set runs_root, the notebook declares it: run_report's runs_root is used
    assert (week["runs_root"] / "marker.txt").read_text() == HOSTILE
    assert not (week["root"] / "runs").exists()


def test_no_html_needs_the_network(week):
    pages = sorted(week["dir"].glob("*.html"))
    assert {p.name for p in pages} == {"index.html", "report.html", "plot.html", "broken.html"}
    for page in pages:
        text = page.read_text()
        for tag, attrs in tags_of(page):
            assert tag != "script", f"{page.name}: a <script> element"
            for key in ("src", "href"):
                value = (attrs.get(key) or "").strip().lower()
                if tag == "a":
                    continue
                assert not value.startswith(("http:", "https:", "//")), f"{page.name}: <{tag} {key}={value}>"
            if tag == "link":
                pytest.fail(f"{page.name}: <link {attrs}> (styles must be inline)")
        assert "@import" not in text, page.name
        assert "url(http" not in text.replace(" ", "") and "url(//" not in text.replace(" ", ""), page.name
        for cdn in ("cdnjs", "jsdelivr", "unpkg", "googleapis"):
            assert cdn not in text.lower(), f"{page.name} mentions {cdn}"


def test_plots_are_embedded_png_data(week):
    for page in ("plot.html", "report.html"):
        images = [attrs for tag, attrs in tags_of(week["dir"] / page) if tag == "img"]
        assert len(images) == 1, page
        src = images[0]["src"]
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1])
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert images[0]["alt"]


def test_user_input_is_escaped(week):
    for page in sorted(week["dir"].glob("*.html")):
        text = page.read_text()
        assert HOSTILE not in text, page.name
    index = (week["dir"] / "index.html").read_text()
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in index  # shown as text, as data
    # the pandas table in the notebook output does not escape its cells: the report's sanitiser
    # drops the script from the cell; printed and published text shows it escaped
    plot = (week["dir"] / "plot.html").read_text()
    assert plot.count("&lt;script&gt;alert(") >= 2  # printed, findings
    assert "<script" not in plot


def test_report_html_holds_every_study_and_the_parameter_appendix(week):
    page = week["dir"] / "report.html"
    text = page.read_text()
    ids = {attrs.get("id") for _, attrs in tags_of(page)}
    links = {attrs.get("href") for tag, attrs in tags_of(page) if tag == "a"}
    for anchor in ("study-plot", "study-broken", "parameters", "environment"):
        assert anchor in ids and f"#{anchor}" in links
    assert "before the error" in text and "planned failure" in text  # the failed study's body
    assert "ax.bar" not in text  # code hidden
    for row in parameter_table():
        assert f"<code>{row['key']}</code>" in text
    assert "since-last-week" not in ids  # no earlier week


def _files(week_dir: Path) -> dict[str, bytes]:
    """Every file of a week's folder but previous/, by relative path."""
    return {p.relative_to(week_dir).as_posix(): p.read_bytes() for p in week_dir.rglob("*")
            if p.is_file() and "previous" not in p.relative_to(week_dir).parts}


def test_a_second_run_keeps_an_unchanged_study(week, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(week["root"], root)
    week_dir = root / "reports" / WEEK
    before = _files(week_dir)
    earlier = json.loads(before["summary.json"])["studies"]["plot"]
    assert len(earlier["freeze_key"]) == 12
    assert set(earlier["freeze_inputs"]) == {"notebook", "preset", "code", "study", "templates", "data"}

    # same notebook, preset values (runs_root included), code and data: nothing runs, nothing moves
    assert run(root, only=["plot"], runs_root=week["runs_root"]) == 0
    after = _files(week_dir)
    for name in ("plot.ipynb", "plot.html", "logs/plot.log", "broken.ipynb", "broken.html", "logs/broken.log"):
        assert after[name] == before[name], name
    assert not (week_dir / "previous").exists()
    record = json.loads(after["summary.json"])["studies"]["plot"]
    assert record["kept_from"] == earlier["started"]
    assert record["freeze_key"] == earlier["freeze_key"] and record["duration_s"] == earlier["duration_s"]
    kept_from = earlier["started"].replace("T", " ")
    for page in ("index.html", "report.html"):
        assert f'<span class="kept">kept from {kept_from}</span>' in after[page].decode()
    assert "kept from" not in before["index.html"].decode()


def test_a_changed_study_runs_again_and_force_runs_all(week, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(week["root"], root)
    week_dir = root / "reports" / WEEK
    before = _files(week_dir)
    params = root / "params" / "plot.yaml"
    params.write_text(params.read_text().replace("score: 0.5}", "score: 0.25}"))  # the quick preset

    assert run(root, only=["plot"], runs_root=tmp_path / "runs") == 0  # runs_root is a preset value too
    archived = list((week_dir / "previous").iterdir())
    assert len(archived) == 1
    kept = {p.name: p.read_bytes() for p in archived[0].iterdir()}
    assert set(kept) == {"plot.ipynb", "plot.html", "plot.log", "index.html", "report.html", "summary.json"}
    for name, data in kept.items():  # nothing already written is lost
        assert data == before[name if name != "plot.log" else "logs/plot.log"], name
    summary = json.loads((week_dir / "summary.json").read_text())
    plot, earlier = summary["studies"]["plot"], json.loads(before["summary.json"])["studies"]["plot"]
    assert plot["headline"]["score"] == 0.25 and "kept_from" not in plot
    assert plot["freeze_key"] != earlier["freeze_key"]
    assert {k for k in plot["freeze_inputs"] if plot["freeze_inputs"][k] != earlier["freeze_inputs"][k]} == {"preset"}
    assert f'href="previous/{archived[0].name}/"' in (week_dir / "index.html").read_text()
    # broken was not in --only: its files stay and it is still listed with its earlier status
    assert (week_dir / "broken.html").read_bytes() == before["broken.html"]
    assert summary["studies"]["broken"]["status"] == "failed"

    # force (make report FORCE=1): every study runs again, the unchanged plot included
    between = _files(week_dir)
    assert run(root, force=True, runs_root=tmp_path / "runs") == 1  # broken still fails
    second = sorted(p for p in (week_dir / "previous").iterdir() if p != archived[0])
    assert len(second) == 1
    assert {p.name for p in second[0].iterdir()} == {
        "plot.ipynb", "plot.html", "plot.log", "broken.ipynb", "broken.html", "broken.log",
        "index.html", "report.html", "summary.json"}
    assert (second[0] / "plot.ipynb").read_bytes() == between["plot.ipynb"]
    forced = json.loads((week_dir / "summary.json").read_text())["studies"]
    assert forced["plot"]["freeze_key"] == plot["freeze_key"] and forced["plot"]["started"] >= plot["started"]
    assert "kept_from" not in forced["plot"] and "kept from" not in (week_dir / "index.html").read_text()


def test_freeze_key_follows_notebook_preset_code_and_data(tmp_path):
    notebook = tmp_path / "study.ipynb"
    notebook.write_text("{}")
    params_file = tmp_path / "train.yaml"
    params_file.write_text("optim: {lr: 1.0e-3}\n")
    study = {"notebook": notebook, "parameters": {"score": 0.5, "params_file": "train.yaml"}}
    data = {"name": "easy_vqa", "root": "/d", "counts": {"train": 3}, "fingerprint": "abc", "found": True,
            "expected": "", "detail": "shown, not hashed"}

    def inputs_of(study, **kw):
        return freeze_inputs(study, root=tmp_path, **kw)

    base = inputs_of(study, preset="cpu", data=data, code="c1")
    lower = {**study, "parameters": {**study["parameters"], "score": 0.25}}
    changes = {"code": inputs_of(study, preset="cpu", data=data, code="c2"),
               "preset": inputs_of(lower, preset="cpu", data=data, code="c1"),
               "data": inputs_of(study, preset="cpu", data={**data, "fingerprint": "abd"}, code="c1")}
    assert inputs_of(study, preset="cpu", data={**data, "detail": "other"}, code="c1") == base
    assert inputs_of(study, preset="gpu", data=data, code="c1")["preset"] != base["preset"]
    for changed, inputs in changes.items():
        assert [k for k in base if inputs[k] != base[k]] == [changed]
        assert freeze_key(inputs) != freeze_key(base)
    params_file.write_text("optim: {lr: 2.0e-3}\n")  # a params file named by the preset, edited in place
    assert inputs_of(study, preset="cpu", data=data, code="c1")["preset"] != base["preset"]
    params_file.write_text("optim: {lr: 1.0e-3}\n")
    assert inputs_of(study, preset="cpu", data=data, code="c1") == base
    notebook.write_text('{"cells": []}')
    assert inputs_of(study, preset="cpu", data=data, code="c1")["notebook"] != base["notebook"]
    # only a study that succeeded, with its files still there, is kept
    week_dir = tmp_path / "week"
    week_dir.mkdir()
    record = {"status": "ok", "freeze_key": freeze_key(base), "notebook": "s.ipynb", "html": "s.html",
              "started": "2026-03-02T10:00:00"}
    assert kept_record(record, freeze_key(base), week_dir) is None  # files missing
    (week_dir / "s.ipynb").write_text("{}")
    (week_dir / "s.html").write_text("")
    assert kept_record(record, freeze_key(base), week_dir)["kept_from"] == "2026-03-02T10:00:00"
    assert kept_record(record, freeze_key(changes["code"]), week_dir) is None
    assert kept_record({**record, "status": "failed"}, freeze_key(base), week_dir) is None


def test_since_last_week_shows_how_headline_figures_moved(week, tmp_path):
    root = tmp_path / "project"
    shutil.copytree(week["root"], root)
    assert run(root, preset="cpu", only=["plot"], week="2026-W11", runs_root=tmp_path / "runs") == 0
    week_dir = root / "reports" / "2026-W11"
    summary = json.loads((week_dir / "summary.json").read_text())
    assert set(summary["studies"]) == {"plot"} and summary["studies"]["plot"]["headline"]["score"] == 0.75
    since = since_last_week(root / "reports", "2026-W11", summary["studies"])
    assert since["week"] == WEEK
    rows = {(r["study"], r["figure"]): r for r in since["rows"]}
    assert rows[("plot", "score")]["before"] == 0.5 and rows[("plot", "score")]["now"] == 0.75
    assert rows[("plot", "score")]["change"] == "+0.25"
    assert rows[("plot", "label")]["change"] == "changed"  # 'a' (cpu preset default) vs the hostile name
    for page in ("index.html", "report.html"):
        text = (week_dir / page).read_text()
        assert 'id="since-last-week"' in text and "Since last week (2026-W10)" in text
        assert "<td>score</td><td>0.5</td><td>0.75</td><td>+0.25</td>" in text


def _params_error(tmp_path, yaml_text: str, **kw) -> str:
    root = make_project(tmp_path / "project")
    (root / "params" / "plot.yaml").write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        run(root, only=["plot"], **kw)
    assert not (root / "reports").exists()  # refused before any notebook ran
    return str(err.value)


def test_unknown_preset_parameter_names_file_key_and_nearest(tmp_path):
    message = _params_error(tmp_path, "presets:\n  quick: {scroe: 0.5}\n")
    assert "plot.yaml" in message and "presets.quick" in message
    assert "'scroe'" in message and "did you mean 'score'?" in message


def test_missing_preset_is_an_error(tmp_path):
    message = _params_error(tmp_path, "presets:\n  quick: {score: 0.5}\n", preset="gpu")
    assert "plot.yaml" in message and "no preset 'gpu'" in message and "quick" in message


def test_wrong_value_type_is_an_error(tmp_path):
    message = _params_error(tmp_path, "presets:\n  quick: {score: high}\n")
    assert "presets.quick.score = 'high'" in message and "expected float" in message


def test_preset_values_are_checked_against_the_annotations(tmp_path):
    params_file = tmp_path / "study.yaml"
    declared = {"score": {"type": float, "default": "0.5"}, "n": {"type": int, "default": "1"},
                "xs": {"type": list, "default": "[1.0]"}}
    params_file.write_text("presets:\n  quick: {score: 1, n: 2, xs: [3.0], }\n")
    assert load_preset(params_file, "quick", declared) == {"score": 1, "n": 2, "xs": [3.0]}  # int stands for float
    for value, expected in (("true", "int"), ("1.5", "int"), ("x", "int")):
        params_file.write_text(f"presets:\n  quick: {{n: {value}}}\n")
        with pytest.raises(ConfigError, match=f"presets.quick.n = .*: expected {expected}"):
            load_preset(params_file, "quick", declared)
    params_file.write_text("presets:\n  quick: {xs: 1.0}\n")
    with pytest.raises(ConfigError, match="expected list"):
        load_preset(params_file, "quick", declared)


def test_a_preset_extends_its_base_and_may_not_repeat_its_keys(tmp_path):
    declared = {"score": {"type": float, "default": "0.5"}, "n": {"type": int, "default": "1"},
                "xs": {"type": list, "default": "[1.0]"}}
    (tmp_path / "shared.yaml").write_text("presets:\n  quick: {score: 0.25, n: 2}\n  gpu: {n: 8}\n")
    params_file = tmp_path / "study.yaml"
    params_file.write_text("base: shared.yaml\npresets:\n  quick: {xs: [3.0]}\n  cpu: {n: 4}\n")
    assert load_preset(params_file, "quick", declared) == {"score": 0.25, "n": 2, "xs": [3.0]}
    assert load_preset(params_file, "cpu", declared) == {"n": 4}  # the base has no cpu preset
    with pytest.raises(ConfigError, match=r"no preset 'gpu'"):  # the base's gpu is not the study's
        load_preset(params_file, "gpu", declared)
    params_file.write_text("base: shared.yaml\npresets:\n  quick: {n: 3, xs: [3.0]}\n")
    with pytest.raises(ConfigError, match=r"study\.yaml: presets\.quick sets n, which its base .*shared\.yaml "
                                          r"sets for every study: change it there"):
        load_preset(params_file, "quick", declared)
    params_file.write_text("base: shared.yaml\npresets:\n  quick: {}\n")
    (tmp_path / "shared.yaml").write_text("presets:\n  quick: {n: many}\n")
    with pytest.raises(ConfigError, match=r"shared\.yaml \(base of .*study\.yaml\): presets\.quick\.n = 'many': "
                                          r"expected int"):
        load_preset(params_file, "quick", declared)
    params_file.write_text("base: missing.yaml\npresets:\n  quick: {}\n")
    with pytest.raises(ConfigError, match=r"study\.yaml: base = 'missing\.yaml': .*missing\.yaml not found"):
        load_preset(params_file, "quick", declared)


def test_a_parameter_without_type_annotation_is_an_error(tmp_path):
    root = make_project(tmp_path / "project")
    notebook = root / "notebooks" / "plot.ipynb"
    nb = nbformat.read(notebook, as_version=4)
    nb.cells[1].source = nb.cells[1].source.replace("score: float = 0.5", "score = 0.5")
    nbformat.write(nb, notebook)
    with pytest.raises(ConfigError, match=r"plot\.ipynb: parameter 'score' has no type annotation: expected one of "
                                          r"bool, int, float, str, list, dict"):
        run(root, only=["plot"])
    assert not (root / "reports").exists()


def test_params_file_needs_presets(tmp_path):
    message = _params_error(tmp_path, "quick: {score: 0.5}\n")
    assert "plot.yaml" in message and "presets" in message


def test_unknown_study_and_bad_week(tmp_path):
    root = make_project(tmp_path / "project")
    with pytest.raises(ConfigError, match="--only plto: no such study: did you mean 'plot'"):
        run(root, only=["plto"])
    with pytest.raises(ConfigError, match=r"scratch\.yaml not found"):
        run(root, only=["scratch"])
    with pytest.raises(ConfigError, match="2027 has no ISO week 53"):
        run(root, week="2027-W53")
    with pytest.raises(ConfigError, match="expected an ISO week"):
        run(root, week="2026-48")
    with pytest.raises(ConfigError, match=r"--week '2026-W41\\n': expected an ISO week"):
        run(root, week="2026-W41\n")  # a newline in a folder name
    assert not (root / "reports").exists()


def test_iso_week_uses_the_iso_year():
    assert iso_week(dt.date(2026, 11, 26)) == "2026-W48"
    assert iso_week(dt.date(2027, 1, 1)) == "2026-W53"  # a Friday: still 2026's last week
    assert iso_week(dt.date(2024, 12, 30)) == "2025-W01"


def test_sanitize_html_keeps_tables_images_and_styles_and_drops_scripts_and_fetches():
    fragment = ('<p onclick="steal()">hi</p><script>alert(1)</script>'
                '<img src="https://example.org/x.png"><a href="javascript:alert(1)">x</a>'
                '<a href="https://example.org/">ok</a><style>@import url(https://x/y.css);</style>'
                '<img src="data:image/png;base64,AAAA" alt="plot">'
                '<style type="text/css">#T_1_row0_col0 { background-color: #ff0000; }</style>'
                '<table id="T_1" class="dataframe" border="1"><tr style="text-align: right;">'
                '<td id="T_1_row0_col0" class="data row0 col0">0.5</td></tr></table>')
    out = sanitize_html(fragment, scope="vqalab-scope-t-1")  # one output, its styles kept to it
    parser = Tags()
    parser.feed(out)
    assert parser.tags[0] == ("div", {"class": "vqalab-scope-t-1"})
    tags = parser.tags[1:]
    assert [t for t, _ in tags] == ["p", "img", "a", "a", "style", "img", "style", "table", "tbody", "tr", "td"]
    assert "onclick" not in tags[0][1] and "alert" not in out  # the script is gone with its content
    assert "src" not in tags[1][1] and "href" not in tags[2][1]
    assert tags[3][1]["href"] == "https://example.org/"  # links stay links
    assert "@import" not in out
    assert tags[5][1] == {"src": "data:image/png;base64,AAAA", "alt": "plot"}
    # a pandas Styler table keeps its CSS, ids, classes and inline styles
    assert ".vqalab-scope-t-1 #T_1_row0_col0 { background-color: #ff0000 }" in out
    assert tags[7][1] == {"id": "T_1", "class": "dataframe", "border": "1"}
    assert tags[9][1] == {"style": "text-align: right"}
    assert tags[10][1] == {"id": "T_1_row0_col0", "class": "data row0 col0"}


def test_parameters_doc_is_in_step_with_the_code():
    doc = REPO / "docs" / "PARAMETERS.md"
    assert doc.read_text(encoding="utf-8") == parameters_markdown(), (
        "docs/PARAMETERS.md is out of date: .venv/bin/python -m vqalab.params --parameters-doc docs/PARAMETERS.md")
    rows = [line for line in doc.read_text().splitlines() if line.startswith("| `")]
    assert len(rows) == len(parameter_table())
    assert "| `optim.betas` | `[0.9, 0.999]` |" in doc.read_text()


def test_a_notebook_that_cannot_start_is_reported_as_failed(tmp_path, monkeypatch):
    import papermill

    def kernel_died(*args, **kwargs):
        raise RuntimeError("Kernel died before replying to <kernel_info>")

    monkeypatch.setattr(papermill, "execute_notebook", kernel_died)
    root = make_project(tmp_path / "project")
    assert run(root, only=["plot"]) == 1
    week_dir = root / "reports" / WEEK
    summary = json.loads((week_dir / "summary.json").read_text())
    assert summary["studies"]["plot"]["status"] == "failed"
    assert summary["studies"]["plot"]["error"] == "RuntimeError: Kernel died before replying to <kernel_info>"
    page = (week_dir / "plot.html").read_text()
    assert "Kernel died before replying to &lt;kernel_info&gt;" in page
    assert 'class="status status-failed"' in (week_dir / "index.html").read_text()


def test_since_last_week_judges_measured_figures_against_their_noise(tmp_path):
    reports = tmp_path / "reports"
    for week, value, noise in (("2026-W10", 3010.0, 450.0), ("2026-W11", 2370.0, 520.0)):
        (reports / week).mkdir(parents=True)
        study = {"headline": {"samples/s": value, "best lr": 1e-3}, "noise": {"samples/s": noise}}
        (reports / week / "summary.json").write_text(json.dumps({"week": week, "studies": {"bench": study}}))
    now = json.loads((reports / "2026-W11" / "summary.json").read_text())["studies"]
    rows = {r["figure"]: r["change"] for r in since_last_week(reports, "2026-W11", now)["rows"]}
    # -640 against sqrt(450² + 520²) ≈ 688: inside the noise of the two measurements
    assert rows["samples/s"] == "no change beyond noise (-640 within ±688)"
    assert rows["best lr"] == "+0"  # no noise: the plain difference, as before
