"""Helpers for study notebooks (notebooks stay thin: parameters, calls into vqalab, plots)."""

from __future__ import annotations

import html
import json
import math

FINDINGS_MIME = "application/vnd.vqalab.findings+json"
# What the report tells the sweeps inside a study's kernel, through its environment:
# a file path: every sweep appends one JSON line per point (reused or not, and when that run
# finished), so the report says how many runs were reused and from when;
RUN_LOG_ENV = "VQALAB_RUN_LOG"
FRESH_ENV = "VQALAB_FRESH"  # "1": sweeps retrain every point (vqalab report --fresh)


def headline_value(value):
    """A JSON-safe headline value: NumPy scalars become Python numbers, NaN and inf become None."""
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise TypeError(f"findings: headline values must be numbers or strings, got {type(value).__name__}: {value!r}")
    return value


def findings(headline: dict[str, float | int | str], text: list[str],
             noise: dict[str, float] | None = None) -> None:
    """Show a study's findings and publish them for the report's index page.

    ``headline``: a few named figures (e.g. ``{"best val_acc": 0.981}``), compared week to week.
    ``text``: sentences derived from the study's own numbers.
    ``noise``: for the figures that are measurements, their noise in the figure's units (e.g. the
    IQR of a throughput's timing rounds, the standard deviation of an accuracy over seeds); keys
    must be headline names. The report's week-to-week comparison (``vqalab.compare.compare_figure``)
    reads a change within the noise as "no change beyond noise".
    The report finds them in the executed notebook by their MIME type.
    """
    from IPython.display import display

    clean = {str(k): headline_value(v) for k, v in headline.items()}
    noise = {str(k): headline_value(v) for k, v in (noise or {}).items()}
    unknown = [k for k in noise if k not in clean]
    if unknown:
        raise KeyError(f"findings: noise given for {', '.join(map(repr, unknown))}, which are not headline "
                       f"figures ({', '.join(map(repr, clean))})")
    bad = [k for k, v in noise.items() if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool)
                                                             or v < 0)]
    if bad:
        raise TypeError(f"findings: noise of {', '.join(map(repr, bad))} must be a non-negative number")
    # "order" keeps the figures in the order given: notebook files store JSON with sorted keys.
    payload = {"headline": clean, "order": list(clean), "text": [str(t) for t in text], "noise": noise}

    def cell(value) -> str:  # names typed by users must show as text, never as markup
        return html.escape(f"{value:.4g}" if isinstance(value, float) else str(value)).replace("|", "\\|")

    lines = ["### Findings", ""] + [f"- {html.escape(t)}" for t in payload["text"]] + [""]
    lines += ["| figure | value |", "| --- | --- |"]
    lines += [f"| {cell(k)} | {cell(v)}{f' ± {cell(noise[k])}' if noise.get(k) is not None else ''} |"
              for k, v in clean.items()]
    display({FINDINGS_MIME: json.loads(json.dumps(payload)), "text/markdown": "\n".join(lines)}, raw=True)


def show_sentences(text: list[str]) -> None:
    """Show sentences built from a study's parameters as a paragraph of the page (a Markdown cell
    cannot read them); escaped as the findings are, so a typed name never shows as markup."""
    from IPython.display import Markdown, display

    display(Markdown(" ".join(html.escape(str(t)) for t in text)))
