"""What a headless report shows while it runs: one progress line per study, and the time budget.

A study's notebook runs in its own kernel; its training runs write their run folders as they go.
The progress line reads the newest of those folders (``summary.json`` still ``running``, rows in
``metrics.csv``) rather than anything the kernel prints, so it works for every study alike.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import yaml

from vqalab.io import read_json_record

log = logging.getLogger(__name__)

# A study without ``time_budget_s`` in its preset is stopped after this long (lab-scale presets
# on a GPU set their own): a hung study must not hold the week's report forever.
DEFAULT_TIME_BUDGET_S = 6 * 3600
POLL_S = 1.0  # how often the budget is checked
RUN_SCAN_S = 5.0  # how often run folders are looked at for the progress line
KILL_RETRY_S = 10.0


@dataclass
class RunProgress:
    run: str  # run folder name
    epoch: int  # epochs finished
    epochs: int | None  # epochs planned (train.epochs)


def current_run(runs_root: Path, since: float, experiment: str | None = None) -> RunProgress | None:
    """The most recently updated run under ``runs_root`` (of ``experiment`` when given: another
    lane's runs are not this study's) still running and touched after ``since``."""
    newest, newest_mtime = None, since
    folders = (Path(runs_root) / experiment).glob("*/summary.json") if experiment else Path(runs_root).glob("*/*/summary.json")
    for summary_file in folders:
        metrics = summary_file.with_name("metrics.csv")
        try:
            mtime = max(summary_file.stat().st_mtime, metrics.stat().st_mtime if metrics.exists() else 0)
        except OSError:  # a folder removed while scanning
            continue
        if mtime >= newest_mtime:
            newest, newest_mtime = summary_file.parent, mtime
    if newest is None:
        return None
    try:
        if read_json_record(newest / "summary.json").get("status") != "running":
            return None
        rows = (newest / "metrics.csv").read_text().count("\n") - 1 if (newest / "metrics.csv").exists() else 0
        params = yaml.safe_load((newest / "params.yaml").read_text()) or {}
    except (OSError, ValueError, yaml.YAMLError):  # caught mid-write: try again next scan
        return None
    return RunProgress(run=newest.name, epoch=max(rows, 0), epochs=(params.get("train") or {}).get("epochs"))


def format_seconds(seconds: float) -> str:
    seconds = round(seconds)  # an int
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def progress_text(study: str, elapsed: float, run: RunProgress | None, last_duration: float | None,
                  budget: float) -> str:
    """``lr_search: 1 min 05 s, run 20261201-…-lr3e-4 epoch 2/3, ETA 40 s (last week 1 min 45 s)``."""
    parts = [f"{study}: {format_seconds(elapsed)}"]
    if run is not None:
        parts.append(f"run {run.run} epoch {run.epoch}/{run.epochs if run.epochs else '?'}")
    if last_duration:
        left = last_duration - elapsed
        eta = f"ETA {format_seconds(left)}" if left > 0 else f"{format_seconds(-left)} over last week's time"
        parts.append(f"{eta} (last week {format_seconds(last_duration)})")
    else:
        parts.append("no earlier week to estimate from")
    parts.append(f"budget {format_seconds(budget)}")
    return ", ".join(parts)


class ProgressLine:
    """One line per study on stderr: rewritten in place on a terminal, else printed when it changes
    (the run or epoch), so a log of a headless report stays short. ``rewrite=False``: printed when
    it changes on a terminal too (studies running side by side share it)."""

    def __init__(self, stream=None, *, rewrite: bool | None = None):
        self.stream = stream or sys.stderr
        self.tty = (hasattr(self.stream, "isatty") and self.stream.isatty()) if rewrite is None else rewrite
        self._last_key: tuple | None = None

    def show(self, text: str, key: tuple) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + text)
            self.stream.flush()
        elif key != self._last_key:
            self.stream.write(text + "\n")
            self.stream.flush()
        self._last_key = key

    def done(self, text: str) -> None:
        self.stream.write(("\r\033[K" if self.tty else "") + text + "\n")
        self.stream.flush()
        self._last_key = None


def kill_kernels() -> int:
    """Kill this process's Jupyter kernels and everything they started (e.g. DataLoader workers).

    A study over its time budget is stopped this way: its kernel dies, papermill's client raises,
    and the report goes on with the next study. Returns the number of processes killed.
    """
    killed = 0
    for child in psutil.Process().children(recursive=True):
        try:
            if any("ipykernel" in part for part in child.cmdline()):
                for proc in [*child.children(recursive=True), child]:
                    proc.kill()
                    killed += 1
        except psutil.Error:  # already gone
            continue
    return killed


def watch(study: str, thread, *, budget: float, runs_root: Path | None, last_duration: float | None,
          line: ProgressLine, experiment: str | None = None) -> bool:
    """Wait for ``thread`` (the study's execution), showing progress; returns True when the
    study ran past ``budget`` seconds and its kernel was killed. ``runs_root`` None: no run is shown."""
    start_wall, start = time.time(), time.monotonic()
    run, last_scan, last_kill = None, -RUN_SCAN_S, None
    while thread.is_alive():
        thread.join(POLL_S)
        elapsed = time.monotonic() - start
        if runs_root is not None and elapsed - last_scan >= RUN_SCAN_S:
            run, last_scan = current_run(runs_root, start_wall, experiment), elapsed
        key = (run.run, run.epoch) if run else None
        line.show(progress_text(study, elapsed, run, last_duration, budget), key)
        # Killed again if the client is still waiting a while later (a kernel it started anew).
        if elapsed > budget and thread.is_alive() and (last_kill is None or elapsed - last_kill > KILL_RETRY_S):
            if last_kill is None:
                log.error("%s: over its time budget of %s: stopping it", study, format_seconds(budget))
            kill_kernels()
            last_kill = elapsed
    return last_kill is not None
