"""Trends: each study's headline figure over every week in ``reports/`` (its ``summary.json``).

A study's trend follows its first numeric headline figure (``findings`` keeps the order given) in
the latest week that has one, with that figure's noise per week where it was measured. The index
shows it as a small line plot (the noise as a band around the line); ``vqalab report --trend``
prints the same numbers as a table.
"""

from __future__ import annotations

import base64
import io
import logging
import math
from pathlib import Path

from vqalab.registry import ConfigError
from vqalab.report.since import NO_FIGURE, SUMMARY_FILE, read_summary
from vqalab.report.weeks import WEEK_PATTERN

log = logging.getLogger(__name__)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def week_summaries(reports_dir: Path, *, current: tuple[str, dict] | None = None) -> list[tuple[str, dict]]:
    """(week, summary) of every week folder with a readable ``summary.json``, oldest first.

    ``current``: a week's summary not yet on disk (the one being rendered): it replaces that week's
    file, and later weeks are left out (an old week's index shows no future). An unreadable
    summary is left out with a warning.
    """
    weeks = {}
    for path in sorted(Path(reports_dir).glob(f"*/{SUMMARY_FILE}")):
        week = path.parent.name
        if not WEEK_PATTERN.match(week) or (current is not None and week >= current[0]):
            continue
        try:
            weeks[week] = read_summary(path)
        except ConfigError as err:
            log.warning("left out of the trends: %s", err)
    if current is not None:
        weeks[current[0]] = current[1]
    return sorted(weeks.items())


def trend_rows(weeks: list[tuple[str, dict]]) -> list[dict]:
    """Per study (by name): ``{"study", "title", "figure", "values": [...], "noise": [...]}``, one
    value (None where the week lacks it) and one noise (None where not measured) per week."""
    names = sorted({name for _, summary in weeks for name in summary.get("studies", {})})
    rows = []
    for name in names:
        records = [summary.get("studies", {}).get(name) or {} for _, summary in weeks]
        figure = next((key for record in reversed(records) for key, value in (record.get("headline") or {}).items()
                       if _number(value) is not None), None)
        if figure is None:
            continue
        title = next((r["title"] for r in reversed(records) if r.get("title")), name)
        values = [_number((r.get("headline") or {}).get(figure)) for r in records]
        noise = [_number((r.get("noise") or {}).get(figure)) if v is not None else None
                 for r, v in zip(records, values)]
        rows.append({"study": name, "title": title, "figure": figure, "values": values, "noise": noise})
    return rows


def format_point(value: float | None, noise: float | None) -> str:
    if value is None:
        return NO_FIGURE
    return f"{value:.4g}" + (f" ± {noise:.2g}" if noise is not None else "")


def trend_table(weeks: list[tuple[str, dict]]) -> str:
    """The trends as a plain-text table: study, figure, then one column per week."""
    header = ["study", "figure", *[week for week, _ in weeks]]
    lines = [header] + [[row["study"], row["figure"], *map(format_point, row["values"], row["noise"])]
                        for row in trend_rows(weeks)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines)


def trend_plot(weeks: list[str], row: dict) -> str:
    """A small PNG line plot of one trend row as a ``data:`` URI (embedded: the page fetches nothing)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(weeks)))
    values = [math.nan if v is None else v for v in row["values"]]
    fig, ax = plt.subplots(figsize=(3.6, 1.8), dpi=100)
    try:
        if any(n is not None for n in row["noise"]):
            low = [math.nan if v is None or n is None else v - n for v, n in zip(row["values"], row["noise"])]
            high = [math.nan if v is None or n is None else v + n for v, n in zip(row["values"], row["noise"])]
            ax.fill_between(x, low, high, color="#1f77b4", alpha=0.2, linewidth=0, label="noise")
            ax.errorbar(x, values, yerr=[0 if n is None else n for n in row["noise"]], fmt="none",
                        ecolor="#1f77b4", alpha=0.5, capsize=2)  # a lone week's noise shows too
        ax.plot(x, values, marker="o", markersize=3, color="#1f77b4")
        ax.set_xticks(x, [w.split("-", 1)[-1] for w in weeks], fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_ylabel(row["figure"].replace("$", r"\$"), fontsize=7)  # a typed "$" is text, not mathtext
        ax.margins(x=0.1)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def week_trends(reports_dir: Path, week: str, summary: dict) -> dict | None:
    """What the index shows: ``{"weeks": [...], "rows": [row + "plot"]}``, or None with fewer than two weeks."""
    weeks = week_summaries(reports_dir, current=(week, summary))
    if len(weeks) < 2:
        return None
    names = [w for w, _ in weeks]
    rows = trend_rows(weeks)
    for row in rows:
        row["plot"] = trend_plot(names, row)
        row["points"] = [format_point(v, n) for v, n in zip(row["values"], row["noise"])]
    return {"weeks": names, "rows": rows}
