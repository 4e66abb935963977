"""The report while it runs: each study's cell output streams to reports/<week>/logs/<study>.log,
a study past its time budget is stopped and marked timed out while the next one still runs, and
the progress line names the current run, its epoch and an ETA from last week."""

from __future__ import annotations

import io
import json
import threading
import time
from pathlib import Path

import pytest
from conftest import write_notebook

from vqalab.registry import ConfigError
from vqalab.report import run_report
from vqalab.report.progress import ProgressLine, current_run, progress_text

WEEK = "2026-W10"


def make_project(root: Path, budget: float) -> Path:
    """``a_slow`` prints a line every 0.2 s for ever (until its budget stops it); ``b_next`` is quick."""
    (root / "notebooks").mkdir(parents=True)
    (root / "params").mkdir()
    write_notebook(root / "notebooks" / "a_slow.ipynb", "a_slow", "lines: int = 1000  # lines to print",
              "import time\nfor i in range(lines):\n    print(f'line {i}', flush=True)\n    time.sleep(0.2)")
    write_notebook(root / "notebooks" / "b_next.ipynb", "b_next", "word: str = 'x'  # what to print",
              "print('next study ran', word)")
    (root / "params" / "a_slow.yaml").write_text(f"presets:\n  quick: {{time_budget_s: {budget}}}\n")
    (root / "params" / "b_next.yaml").write_text("presets:\n  quick: {word: hello}\n")
    return root


@pytest.mark.slow
def test_log_grows_while_running_and_budget_stops_a_study(tmp_path):
    root = make_project(tmp_path / "project", budget=12)
    week_dir = root / "reports" / WEEK
    log_file = week_dir / "logs" / "a_slow.log"
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(code=run_report(root=root, preset="quick", week=WEEK)))
    thread.start()
    sizes = []
    deadline = time.monotonic() + 120
    while thread.is_alive() and time.monotonic() < deadline:
        if log_file.exists():
            sizes.append(log_file.stat().st_size)
        time.sleep(0.5)
    thread.join(timeout=60)
    assert not thread.is_alive()
    growing = [s for s in sizes if s > 0]
    # Seen at several sizes while the study was still running: the output is streamed, not written at the end.
    assert len(set(growing)) >= 3, sizes
    assert growing == sorted(growing)
    lines = log_file.read_text().splitlines()
    assert lines[:3] == ["line 0", "line 1", "line 2"] and len(lines) < 1000

    assert result["code"] == 1  # a timed-out study is not ok
    summary = json.loads((week_dir / "summary.json").read_text())
    slow, nxt = summary["studies"]["a_slow"], summary["studies"]["b_next"]
    assert slow["status"] == "timed_out"
    assert slow["error"] == "stopped after its time budget of 12 s; the log up to then is logs/a_slow.log"
    assert nxt["status"] == "ok"  # the next study ran after the timed-out one
    assert (week_dir / "logs" / "b_next.log").read_text() == "next study ran hello\n"
    index = (week_dir / "index.html").read_text()
    assert '<span class="status status-timed_out">timed out</span>' in index
    assert '<a href="logs/a_slow.log">cell output log</a>' in index


def test_bad_time_budget_is_refused_before_any_notebook_runs(tmp_path):
    root = make_project(tmp_path / "project", budget=-1)
    with pytest.raises(ConfigError, match=r"a_slow.yaml: presets.quick.time_budget_s = -1: expected a positive"):
        run_report(root=root, preset="quick", week=WEEK)
    assert not (root / "reports").exists()


def _run_folder(root: Path, name: str, status: str, rows: int, epochs: int) -> Path:
    folder = root / "exp" / name
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(f"train:\n  epochs: {epochs}\n")
    (folder / "metrics.csv").write_text("epoch,val_acc\n" + "".join(f"{i},0.5\n" for i in range(1, rows + 1)))
    (folder / "summary.json").write_text(json.dumps({"status": status}))
    return folder


def test_current_run_is_the_newest_running_folder(tmp_path):
    start = time.time() - 10
    _run_folder(tmp_path, "20261201-100000-old", "completed", 3, 3)
    time.sleep(0.05)
    _run_folder(tmp_path, "20261201-100500-lr0.001", "running", 2, 5)
    run = current_run(tmp_path, start)
    assert (run.run, run.epoch, run.epochs) == ("20261201-100500-lr0.001", 2, 5)
    assert current_run(tmp_path, time.time() + 60) is None  # nothing touched since then
    time.sleep(0.05)
    _run_folder(tmp_path, "20261201-101000-done", "completed", 1, 1)
    assert current_run(tmp_path, start) is None  # the newest is finished: between runs


def test_progress_text_and_eta():
    from vqalab.report.progress import RunProgress

    run = RunProgress(run="20261201-lr3e-4", epoch=2, epochs=3)
    assert progress_text("lr_search", 65, run, 105, 3600) == (
        "lr_search: 1 min 05 s, run 20261201-lr3e-4 epoch 2/3, ETA 40 s (last week 1 min 45 s), budget 1 h 00 min")
    assert progress_text("x", 130, None, 100, 600) == (
        "x: 2 min 10 s, 30 s over last week's time (last week 1 min 40 s), budget 10 min 00 s")
    assert progress_text("x", 5, None, None, 60) == "x: 5 s, no earlier week to estimate from, budget 1 min 00 s"


def test_progress_line_prints_only_changes_when_not_a_terminal():
    stream = io.StringIO()
    line = ProgressLine(stream)
    line.show("a 1 s", ("run", 1))
    line.show("a 2 s", ("run", 1))  # only the time changed
    line.show("a 3 s", ("run", 2))
    line.done("a: ok in 3 s")
    assert stream.getvalue().splitlines() == ["a 1 s", "a 3 s", "a: ok in 3 s"]
