"""Wall time of notebooks/batch_size_throughput.ipynb with a preset, and with the settings the
preset had before interleaved rounds and end-to-end timing (one 3 + 15-step round, model step only).

    .venv/bin/python benchmarks/throughput_study_time.py [--preset cpu] [--repeats 2]

Goal: the cpu preset about as long as before (10-20 s on a 2-core CPU). Prints one JSON line per run.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import papermill
import yaml

from vqalab.paths import project_root

BEFORE = {"warmup_steps": 3, "timed_steps": 15, "rounds": 1, "end_to_end": False}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    root = project_root()
    preset = yaml.safe_load((root / "params" / "batch_size_throughput.yaml").read_text())["presets"][args.preset]
    preset.pop("time_budget_s", None)
    settings = ((f"preset {args.preset}", preset), ("before rounds", {**preset, **BEFORE})) * args.repeats
    for label, parameters in settings:  # alternated: both see the same load from other processes
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            papermill.execute_notebook(str(root / "notebooks" / "batch_size_throughput.ipynb"),
                                       str(Path(tmp) / "out.ipynb"), parameters=parameters, cwd=str(root),
                                       kernel_name="python3", progress_bar=False)
            print(json.dumps({"settings": label, "notebook_seconds": round(time.perf_counter() - start, 1)}),
                  flush=True)


if __name__ == "__main__":
    main()
