"""Trends over weeks: three hand-written weeks' ``summary.json`` read back as a table and plots."""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from vqalab.cli import main
from vqalab.report.pages import render_week
from vqalab.report.trend import trend_plot, trend_rows, week_summaries
from vqalab.runs import environment

ENVIRONMENT = {**environment(), "preset": "cpu"}

WEEKS = {
    "2026-W08": {"fer": ({"best val_acc": 0.81, "model": "cvt"}, {"best val_acc": 0.01}),
                 "bench": ({"images/s": 3010.0}, {})},
    "2026-W09": {"fer": ({"model": "cvt", "best val_acc": 0.83}, {"best val_acc": 0.02})},  # bench missing
    "2026-W10": {"fer": ({"best val_acc": 0.86}, {}), "bench": ({"images/s": 2370.0}, {"images/s": 450.0})},
}


def write_weeks(reports):
    for week, studies in WEEKS.items():
        records = {name: {"name": name, "title": f"{name.upper()} study", "status": "ok", "headline": headline,
                          "noise": noise, "html": f"{name}.html", "preset": "cpu", "parameters": {},
                          "duration_s": 1.0, "started": f"{week}T10:00:00", "environment": ENVIRONMENT,
                          "error": None, "notebook": None, "text": []}
                   for name, (headline, noise) in studies.items()}
        (reports / week).mkdir(parents=True)
        (reports / week / "summary.json").write_text(json.dumps(
            {"week": week, "generated": f"{week}T10:00:00", "environment": {}, "studies": records}))
    (reports / "2026-W07").mkdir()
    (reports / "2026-W07" / "summary.json").write_text("{not json")  # left out with a warning
    (reports / "notes").mkdir()  # not a week


def test_trend_rows_follow_each_studys_first_numeric_figure(tmp_path):
    write_weeks(tmp_path)
    weeks = week_summaries(tmp_path)
    assert [w for w, _ in weeks] == list(WEEKS)
    rows = trend_rows(weeks)
    assert [(r["study"], r["figure"]) for r in rows] == [("bench", "images/s"), ("fer", "best val_acc")]
    assert rows[0]["values"] == [3010.0, None, 2370.0] and rows[0]["noise"] == [None, None, 450.0]
    assert rows[1]["values"] == [0.81, 0.83, 0.86] and rows[1]["noise"] == [0.01, 0.02, None]
    # an older week's page shows no later week
    assert [w for w, _ in week_summaries(tmp_path, current=("2026-W09", {"studies": {}}))] == ["2026-W08",
                                                                                              "2026-W09"]


def test_report_trend_prints_the_table(tmp_path, monkeypatch, capsys):
    write_weeks(tmp_path / "reports")
    monkeypatch.setenv("VQALAB_ROOT", str(tmp_path))
    assert main(["report", "--trend"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["study", "figure", *WEEKS]
    assert lines[1].split() == ["bench", "images/s", "3010", "–", "2370", "±", "4.5e+02"]
    assert lines[2].split() == ["fer", "best", "val_acc", "0.81", "±", "0.01", "0.83", "±", "0.02", "0.86"]
    assert not (tmp_path / "reports" / "2026-W11").exists()  # nothing run, nothing written


@pytest.mark.parametrize("page", ["index.html", "report.html"])
def test_index_shows_a_trend_plot_per_study(tmp_path, page):
    write_weeks(tmp_path)
    week_dir = tmp_path / "2026-W10"
    summary = {**json.loads((week_dir / "summary.json").read_text()), "environment": ENVIRONMENT}
    render_week(week_dir, summary, None)
    html = (week_dir / page).read_text()
    for study, figure in (("bench", "images/s"), ("fer", "best val_acc")):
        start = html.index(f'id="trend-{study}"')
        src = html[html.index('src="', start) + 5:html.index('"', html.index('src="', start) + 5)]
        assert src.startswith("data:image/png;base64,")
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        assert image.width > 100 and image.height > 50
        assert f"{figure} of {study.upper()} study" in html
    assert "<td>0.81 ± 0.01</td><td>0.83 ± 0.02</td><td>0.86</td>" in html


def test_one_week_shows_no_trends(tmp_path):
    write_weeks(tmp_path)
    only = tmp_path / "alone"
    (only / "2026-W10").mkdir(parents=True)
    summary = {**json.loads((tmp_path / "2026-W10" / "summary.json").read_text()), "environment": ENVIRONMENT}
    render_week(only / "2026-W10", summary, None)
    assert 'id="trends"' not in (only / "2026-W10" / "index.html").read_text()


def test_a_dollar_in_a_figure_name_is_plotted_as_text():
    row = {"figure": "cost $x^$ per run", "values": [1.0, 1.5], "noise": [None, 0.1]}
    assert trend_plot(["2026-W10", "2026-W11"], row).startswith("data:image/png;base64,")


def test_a_headline_figure_without_a_value_shows_as_a_dash(tmp_path):
    """A figure the study could not give (a throughput sweep that did not settle) reads "–", not null."""
    write_weeks(tmp_path)
    week_dir = tmp_path / "2026-W10"
    summary = {**json.loads((week_dir / "summary.json").read_text()), "environment": ENVIRONMENT}
    summary["studies"]["bench"]["headline"] = {"recommended batch size": None, "images/s": 2370.0}
    render_week(week_dir, summary, None)
    html = (week_dir / "index.html").read_text()
    assert "<td>recommended batch size</td><td>–</td>" in html
    assert "<td>images/s</td><td>2370 ± 450</td>" in html
