"""How the headline figures moved since the latest earlier week's ``summary.json``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vqalab.registry import ConfigError
from vqalab.report.weeks import WEEK_PATTERN

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"


def since_last_week(reports_dir: Path, week: str, studies: dict[str, dict]) -> dict | None:
    """How the headline figures moved since the latest earlier week with a ``summary.json``.

    Returns ``{"week": earlier week, "rows": [{study, figure, before, now, change}]}`` or None.
    """
    earlier = sorted(p.parent.name for p in Path(reports_dir).glob(f"*/{SUMMARY_FILE}")
                     if WEEK_PATTERN.match(p.parent.name) and p.parent.name < week)
    if not earlier:
        return None
    try:
        before_summary = read_summary(Path(reports_dir) / earlier[-1] / SUMMARY_FILE)
    except ConfigError as err:
        log.warning("no 'since last week' section: %s", err)
        return None
    before_studies = before_summary.get("studies", {})
    rows = []
    for name in sorted(set(studies) | set(before_studies)):
        now = studies.get(name, {}).get("headline") or {}
        before = before_studies.get(name, {}).get("headline") or {}
        for figure in list(dict.fromkeys([*now, *before])):
            rows.append({"study": name, "figure": figure, "before": before.get(figure, "–"),
                         "now": now.get(figure, "–"), "change": _change(before.get(figure), now.get(figure))})
    return {"week": earlier[-1], "rows": rows}


def read_summary(path: Path) -> dict:
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: not a readable report summary ({err}); move it away to go on") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("studies", {}), dict):
        raise ConfigError(f"{path}: not a report summary (expected 'studies' mapping names to results)")
    return summary


def _change(before: Any, now: Any) -> str:
    numbers = (int, float)
    if before is None and now is None:
        return "–"
    if before is None:
        return "new"
    if now is None:
        return "gone"
    if isinstance(before, numbers) and isinstance(now, numbers) and not isinstance(before, bool) \
            and not isinstance(now, bool):
        return f"{now - before:+.4g}"
    return "same" if before == now else "changed"
