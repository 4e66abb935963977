"""ISO weeks: the name of a report's folder (``2026-W48``)."""

from __future__ import annotations

import datetime as dt
import re

from vqalab.registry import ConfigError

WEEK_PATTERN = re.compile(r"^(\d{4})-W(\d{2})$")


def iso_week(day: dt.date | None = None) -> str:
    """``YYYY-Www`` of ``day`` (default today), with the ISO year (late December may be W01)."""
    year, week, _ = (day or dt.date.today()).isocalendar()
    return f"{year}-W{week:02d}"


def check_week(week: str) -> str:
    """``week`` if it is a valid ISO week such as ``2026-W48``, else ConfigError."""
    match = WEEK_PATTERN.match(week)
    if not match:
        raise ConfigError(f"--week {week!r}: expected an ISO week like {iso_week()} (YYYY-Www)")
    year, number = int(match.group(1)), int(match.group(2))
    try:
        dt.date.fromisocalendar(year, number, 1)
    except ValueError:
        raise ConfigError(f"--week {week!r}: {year} has no ISO week {number}") from None
    return week
