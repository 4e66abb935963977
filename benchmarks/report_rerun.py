"""A week's report run three times: first, again unchanged (kept), and with --force (runs reused).

    .venv/bin/python benchmarks/report_rerun.py [--preset quick] [--only vqa_models]

Prints one JSON object per run: wall time, whether the study was kept, and how many of its runs
were reused or trained. Reports and runs go to a temporary folder.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

from vqalab.report import run_report

WEEK = "2026-W01"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--only", nargs="+", default=["vqa_models"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        reports, runs = Path(tmp) / "reports", Path(tmp) / "runs"
        for label, force in (("first", False), ("again, unchanged", False), ("force", True)):
            start = time.perf_counter()
            code = run_report(preset=args.preset, only=args.only, week=WEEK, force=force, reports_dir=reports,
                              runs_root=runs)
            seconds = time.perf_counter() - start
            studies = json.loads((reports / WEEK / "summary.json").read_text())["studies"]
            print(json.dumps({"run": label, "exit": code, "seconds": round(seconds, 1),
                              "studies": {name: {"kept_from": studies[name].get("kept_from"),
                                                 "runs": studies[name].get("runs")} for name in args.only}}),
                  flush=True)


if __name__ == "__main__":
    main()
