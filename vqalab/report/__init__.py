"""The weekly report: execute the study notebooks and render ``reports/<ISO year>-W<week>/``.

A study is a notebook ``notebooks/<name>.ipynb`` with a params file ``params/<name>.yaml`` holding
``presets: {quick: {...}, cpu: {...}, gpu: {...}}`` (notebook parameter → value; ``base: <file>``:
each preset over that file's preset of the same name). For the chosen
preset every study is checked first (unknown parameter names, wrong value types, missing preset),
then each notebook runs with papermill (kernel ``python3``, the project root as working folder)
into the week's folder and is rendered to HTML with nbconvert (code hidden, plots as embedded PNG,
no script, style or font fetched from the network), up to ``jobs`` notebooks at once (``lanes``).
A failing notebook does not stop the others.

The week's folder holds, per study, ``<name>.ipynb`` (executed) and ``<name>.html``, plus
``index.html`` (environment, one section per study with its headline findings),
``report.html`` (every study in one self-contained file, for mail) and ``summary.json`` (the
headline figures, read back next week for the "since last week" section and the trends), ``report.pdf``
(``report.html`` printed by headless Chromium, when installed) and ``post/`` (the week as a blog
post in Markdown with its figures as PNG files). Nothing is
overwritten: running a week again keeps each study whose notebook, preset, training code, own code,
templates and data are unchanged (``freeze``), re-runs the others (all with ``force``), and their earlier files move to
``previous/<timestamp>/`` first.

One job per module: ``weeks`` (ISO weeks), ``presets`` (studies and their checked presets),
``execute`` (papermill, findings read back), ``lanes`` (studies side by side), ``pages`` (nbconvert export, index and report pages),
``html`` (cleaning notebook outputs), ``since`` (since last week), ``trend`` (every week), ``pdf``, ``post``, ``archive`` (writing and
keeping earlier files), ``freeze`` (which studies a re-run keeps), ``build`` (``run_report``). Where it ran: ``vqalab.runs.environment``.
"""

from vqalab.report.build import run_report

__all__ = ["run_report"]
