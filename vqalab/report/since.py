"""How the headline figures moved since the latest earlier week's ``summary.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from vqalab.compare import compare_figure
from vqalab.registry import ConfigError
from vqalab.report.weeks import WEEK_PATTERN

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
NO_FIGURE = "–"  # a headline figure without a value: not measured, not settled, or not finite


def last_week_summary(reports_dir: Path, week: str) -> tuple[str, dict] | None:
    """(week, summary) of the latest week before ``week`` with a readable ``summary.json``."""
    earlier = sorted(p.parent.name for p in Path(reports_dir).glob(f"*/{SUMMARY_FILE}")
                     if WEEK_PATTERN.match(p.parent.name) and p.parent.name < week)
    if not earlier:
        return None
    try:
        return earlier[-1], read_summary(Path(reports_dir) / earlier[-1] / SUMMARY_FILE)
    except ConfigError as err:
        log.warning("no 'since last week' figures: %s", err)
        return None


def since_last_week(reports_dir: Path, week: str, studies: dict[str, dict]) -> dict | None:
    """How the headline figures moved since the latest earlier week with a ``summary.json``.

    Returns ``{"week": earlier week, "rows": [{study, figure, before, now, change}]}`` or None.
    """
    return figures_since(last_week_summary(reports_dir, week), studies)


def figures_since(last: tuple[str, dict] | None, studies: dict[str, dict]) -> dict | None:
    """``since_last_week`` against an already read ``last_week_summary`` (None: no earlier week)."""
    if last is None:
        return None
    before_week, before_summary = last
    before_studies = before_summary.get("studies", {})
    rows = []
    for name in sorted(set(studies) | set(before_studies)):
        now = studies.get(name, {}).get("headline") or {}
        before = before_studies.get(name, {}).get("headline") or {}
        noise_now = studies.get(name, {}).get("noise") or {}
        noise_before = before_studies.get(name, {}).get("noise") or {}
        for figure in list(dict.fromkeys([*now, *before])):
            change = compare_figure(before.get(figure), now.get(figure), noise_before=noise_before.get(figure),
                                    noise_now=noise_now.get(figure))["change"]
            rows.append({"study": name, "figure": figure, "before": before.get(figure, NO_FIGURE),
                         "now": now.get(figure, NO_FIGURE), "change": change})
    return {"week": before_week, "rows": rows}


def read_summary(path: Path) -> dict:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable report summary ({err}); move it away to go on") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("studies", {}), dict):
        raise ConfigError(f"{path}: not a report summary (expected 'studies' mapping names to results)")
    return summary
