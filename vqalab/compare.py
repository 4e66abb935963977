"""Week-to-week comparison of headline figures, judged against their measurement noise.

A figure that is a measurement (throughput, a seed-averaged accuracy) carries its noise in the
figure's own units, published next to it by ``vqalab.notebook.findings(..., noise={...})``: for
example the interquartile range of a throughput's timing rounds, or the standard deviation over
seeds of an accuracy. The difference of two such figures has the noise of both, sqrt(a² + b²);
a change no larger than that reads "no change beyond noise". A figure without noise in either
week is compared as before: its plain difference.

    from vqalab.compare import compare_figure
    compare_figure(3010.0, 2370.0, noise_before=450.0, noise_now=520.0)["change"]
    # 'no change beyond noise (-640 within ±688)'
"""

from __future__ import annotations

import math
from typing import Any

NO_CHANGE = "no change beyond noise"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_noise(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if not _is_number(value) or value < 0:
        raise ValueError(f"{name} = {value!r}: expected a non-negative number in the figure's units, or None")
    return float(value)


def combined_noise(noise_before: float | None, noise_now: float | None) -> float | None:
    """Noise of the difference of two figures: sqrt(a² + b²) of the known ones; None if neither is known."""
    known = [n for n in (noise_before, noise_now) if n is not None]
    return math.sqrt(sum(n * n for n in known)) if known else None


def compare_figure(before: Any, now: Any, *, noise_before: float | None = None,
                   noise_now: float | None = None) -> dict:
    """How one headline figure moved between two reports.

    before, now: the figure's values (numbers or text; None when the week does not have it).
    noise_before, noise_now: each value's noise in the figure's units (None: not a measurement,
        or not known). With either known, a numeric change within ``combined_noise`` is no change.
    Returns ``{"difference", "noise", "beyond_noise", "change"}``: the numeric difference (None for
    text or a missing side), the noise of the difference (None if unknown), whether the change
    exceeds it (None when there is no noise to judge by), and the text for the report's table.
    """
    noise = combined_noise(_check_noise("noise_before", noise_before), _check_noise("noise_now", noise_now))
    result = {"difference": None, "noise": noise, "beyond_noise": None}
    if before is None and now is None:
        return {**result, "change": "–"}
    if before is None:
        return {**result, "change": "new"}
    if now is None:
        return {**result, "change": "gone"}
    if not (_is_number(before) and _is_number(now)):
        return {**result, "change": "same" if before == now else "changed"}
    difference = now - before
    if noise is None:
        return {**result, "difference": difference, "change": f"{difference:+.4g}"}
    beyond = abs(difference) > noise
    change = (f"{difference:+.4g} (beyond noise ±{noise:.3g})" if beyond
              else f"{NO_CHANGE} ({difference:+.4g} within ±{noise:.3g})")
    return {"difference": difference, "noise": noise, "beyond_noise": beyond, "change": change}
