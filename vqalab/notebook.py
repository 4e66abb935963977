"""Helpers for study notebooks (notebooks stay thin: parameters, calls into vqalab, plots)."""

from __future__ import annotations

import html
import json
import math

FINDINGS_MIME = "application/vnd.vqalab.findings+json"


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def findings(headline: dict[str, float | int | str], text: list[str]) -> None:
    """Show a study's findings and publish them for the report's index page.

    ``headline``: a few named figures (e.g. ``{"best val_acc": 0.981}``), compared week to week.
    ``text``: sentences derived from the study's own numbers.
    The report finds them in the executed notebook by their MIME type.
    """
    from IPython.display import display

    payload = {"headline": {k: _clean(v) for k, v in headline.items()}, "text": list(text)}
    esc = html.escape  # names typed by users must show as text, never as markup
    lines = ["### Findings", ""] + [f"- {esc(t)}" for t in text] + [""]
    lines += ["| figure | value |", "| --- | --- |"]
    lines += [f"| {esc(k)} | {v:.4g} |" if isinstance(v, float) else f"| {esc(k)} | {esc(str(v))} |"
              for k, v in headline.items()]
    display({FINDINGS_MIME: json.loads(json.dumps(payload)), "text/markdown": "\n".join(lines)}, raw=True)
