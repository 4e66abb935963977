"""Wall time of ``make report`` (preset cpu) on a fresh clone of this repository's HEAD.

Clones HEAD (committed files only) into a temporary folder with ``git clone``, runs ``make report``
there for a throwaway week (``WEEK=``, default 2026-W01: nothing of a real week is touched) and
prints the total wall time, each study's duration and status from ``reports/<week>/summary.json``,
and the headline figures of the FER studies. Runs, caches and reports stay inside the clone, which
is deleted afterwards (``--keep`` keeps it).

By default ``make`` creates the clone's own ``.venv`` (a full ``pip install``; timed separately
as ``venv_s``). ``--venv PATH`` saves that: the clone runs an existing virtual environment's
``vqalab report --preset P --week W`` itself, the command ``make report`` runs, without ``make``
(which would rebuild that environment: the clone's ``pyproject.toml`` is newer than its stamp, and
a rebuild would re-point its editable install at the clone); ``PYTHONPATH`` puts the clone's
package first, also inside the notebook kernels.

    .venv/bin/python benchmarks/report_time.py --venv "$PWD/.venv"
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

FER_STUDIES = ("lr_search", "depth_test", "adam_eps_beta", "regularisation", "cls_vs_baseline")
# Environment variables that would point the clone at this checkout's caches or force retraining.
CLEARED_ENV = ("VQALAB_CACHE", "VQALAB_FRESH", "VQALAB_RUN_LOG", "PYTHONPATH")


def repo_root() -> Path:
    out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=Path(__file__).parent, check=True,
                         capture_output=True, text=True)
    return Path(out.stdout.strip())


def timed(cmd: list[str], *, cwd: Path, env: dict, log: Path) -> tuple[float, int]:
    """Seconds and exit code of ``cmd``; its output goes to ``log``."""
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(cmd, check=False, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - start, code


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--week", default="2026-W01", help="throwaway ISO week of the report")
    parser.add_argument("--venv", default=None, help="an existing virtual environment to use instead of "
                        "building the clone's own .venv")
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = parser.parse_args(argv)

    root = repo_root()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True, capture_output=True,
                          text=True).stdout.strip()
    tmp = Path(tempfile.mkdtemp(prefix="report_time-"))
    clone = tmp / "vqalab"
    env = {k: v for k, v in os.environ.items() if k not in CLEARED_ENV}
    command = ["make", "report", f"PRESET={args.preset}", f"WEEK={args.week}"]
    try:
        subprocess.run(["git", "clone", "--quiet", str(root), str(clone)], check=True)
        venv_s = None
        if args.venv:  # the make target's command, in the given environment
            command = [str(Path(args.venv).resolve() / "bin" / "vqalab"), "report", "--preset", args.preset,
                       "--week", args.week]
            env["PYTHONPATH"] = str(clone)
        else:
            venv_s, code = timed(["make", "venv"], cwd=clone, env=env, log=tmp / "make-venv.log")
            if code:
                raise SystemExit(f"make venv failed ({code}): see {tmp / 'make-venv.log'}")
        load_at_start = os.getloadavg()
        report_s, code = timed(command, cwd=clone, env=env, log=tmp / "make-report.log")
        summary_file = clone / "reports" / args.week / "summary.json"
        studies = json.loads(summary_file.read_text())["studies"] if summary_file.is_file() else {}
        result = {
            "head": head, "command": " ".join(command), "venv": args.venv or "built in the clone",
            "venv_s": round(venv_s, 1) if venv_s is not None else None,
            "make_report_s": round(report_s, 1), "make_report_min": f"{int(report_s // 60)} min {report_s % 60:04.1f} s",
            "exit": code, "cpu_count": os.cpu_count(), "load_average_at_start": [round(x, 2) for x in load_at_start],
            "studies": {name: {"status": s.get("status"), "duration_s": s.get("duration_s")}
                        for name, s in studies.items()},
            "fer_headlines": {name: studies[name].get("headline") for name in FER_STUDIES if name in studies},
            "log": str(tmp / "make-report.log") if args.keep else None,
        }
        print(json.dumps(result, indent=2, default=str))
        return result
    finally:
        if args.keep:
            print(f"clone kept at {clone}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
