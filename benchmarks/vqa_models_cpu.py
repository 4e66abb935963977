"""Wall time and best test accuracy of notebooks/vqa_models.ipynb with a preset (default: cpu).

    .venv/bin/python benchmarks/vqa_models_cpu.py [--preset cpu]

Goal on a 2-core CPU: the best model ≥ 0.97 easy-VQA test accuracy, the notebook ≤ 5 minutes.
Prints one JSON object; runs go to a temporary folder.
"""

import argparse
import json
import tempfile
import time
from pathlib import Path

import papermill
import yaml

from vqalab.paths import project_root
from vqalab.results import runs_table

GOAL_ACC, GOAL_SECONDS = 0.97, 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="cpu")
    args = parser.parse_args()
    root = project_root()
    preset = yaml.safe_load((root / "params" / "vqa_models.yaml").read_text())["presets"][args.preset]
    with tempfile.TemporaryDirectory() as tmp:
        runs_root = Path(tmp) / "runs"
        start = time.perf_counter()
        papermill.execute_notebook(str(root / "notebooks" / "vqa_models.ipynb"), str(Path(tmp) / "out.ipynb"),
                                   parameters={**preset, "runs_root": str(runs_root)}, cwd=str(root),
                                   kernel_name="python3", progress_bar=False)
        seconds = time.perf_counter() - start
        table = runs_table(sorted(p.parent for p in runs_root.rglob("summary.json")))
    best = table.sort_values("best_val_acc", ascending=False).iloc[0]
    print(json.dumps({
        "preset": args.preset, "notebook_seconds": round(seconds, 1),
        "best_model": best["name"], "best_val_acc": round(float(best["best_val_acc"]), 4),
        "best_epoch": int(best["best_epoch"]),
        "per_model": {r["name"]: round(float(r["best_val_acc"]), 4) for _, r in table.iterrows()},
        "epoch_time_s": {r["name"]: round(float(r["epoch_time_s"]), 1) for _, r in table.iterrows()},
        "goal_met": bool(best["best_val_acc"] >= GOAL_ACC and seconds <= GOAL_SECONDS),
    }, indent=2))


if __name__ == "__main__":
    main()
