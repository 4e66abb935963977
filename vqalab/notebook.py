"""Helpers for study notebooks (notebooks stay thin: parameters, calls into vqalab, plots)."""

from __future__ import annotations

import html
import json
import math

FINDINGS_MIME = "application/vnd.vqalab.findings+json"


def headline_value(value):
    """A JSON-safe headline value: NumPy scalars become Python numbers, NaN and inf become None."""
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise TypeError(f"findings: headline values must be numbers or strings, got {type(value).__name__}: {value!r}")
    return value


def findings(headline: dict[str, float | int | str], text: list[str]) -> None:
    """Show a study's findings and publish them for the report's index page.

    ``headline``: a few named figures (e.g. ``{"best val_acc": 0.981}``), compared week to week.
    ``text``: sentences derived from the study's own numbers.
    The report finds them in the executed notebook by their MIME type.
    """
    from IPython.display import display

    clean = {str(k): headline_value(v) for k, v in headline.items()}
    # "order" keeps the figures in the order given: notebook files store JSON with sorted keys.
    payload = {"headline": clean, "order": list(clean), "text": [str(t) for t in text]}

    def cell(value) -> str:  # names typed by users must show as text, never as markup
        return html.escape(f"{value:.4g}" if isinstance(value, float) else str(value)).replace("|", "\\|")

    lines = ["### Findings", ""] + [f"- {html.escape(t)}" for t in payload["text"]] + [""]
    lines += ["| figure | value |", "| --- | --- |"]
    lines += [f"| {cell(k)} | {cell(v)} |" for k, v in clean.items()]
    display({FINDINGS_MIME: json.loads(json.dumps(payload)), "text/markdown": "\n".join(lines)}, raw=True)
