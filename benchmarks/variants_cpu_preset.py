"""The variants study's cost at a preset of ``params/variants.yaml`` (default cpu), without a kernel.

Runs what ``notebooks/variants.ipynb`` runs — variant configs, data, training, divergence marks,
the cost table, the threshold sweep — into a fresh runs folder, and prints as JSON the wall time
and CPU time of each part and the CPU load average at the start (the CPU may be shared, so wall
time alone overstates the cost). Notebook defaults fill what the preset leaves out.

    .venv/bin/python benchmarks/variants_cpu_preset.py              # cpu preset
    .venv/bin/python benchmarks/variants_cpu_preset.py --preset quick
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import tempfile
import time

import papermill
import yaml

from vqalab.paths import resolve
from vqalab.studies import variants as study


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    declared = papermill.inspect_notebook(str(resolve("notebooks/variants.ipynb")))
    p = {name: ast.literal_eval(spec["default"]) for name, spec in declared.items()}  # the parameters cell
    p.update(yaml.safe_load(resolve("params/variants.yaml").read_text())["presets"][args.preset] or {})
    load = os.getloadavg()[0]
    overrides = {
        "experiment": "variants_bench", "runs_root": tempfile.mkdtemp(prefix="variants_bench_"),
        "model": {"dim": p["dim"], "bev_size": p["bev_size"]},
        "data": {"name": "synthetic_views", "num_train": p["num_train"], "num_val": p["num_val"],
                 "num_cameras": p["num_cameras"], "image_size": p["image_size"], "map_size": p["map_size"]},
        "train": {"epochs": p["epochs"], "max_steps": None, "batch_size": p["batch_size"],
                  "checkpoint_every": p["epochs"], "device": p["device"],
                  "num_threads": p["cpu_threads"] or None, "progress": False},
    }
    parts, start = {}, clocks()
    t = clocks()
    configs = study.variant_configs(p["variants"], overrides, lr_overrides=p["lr_overrides"])
    data = study.study_data(configs)
    parts["data"] = t
    t = clocks()
    runs, _ = study.mark_divergence(study.train_variants(configs, data, seed=p["seed"]))
    parts["training"] = t
    t = clocks()
    table = study.cost_table(runs, configs, data, latency_batch_size=p["latency_batch_size"], device=p["device"])
    study.iou_by_threshold(runs, data)
    parts["table_and_sweep"] = t
    end = clocks()
    # Each part ends where the next begins: its wall and CPU seconds are the differences.
    marks = [*parts.values(), end]
    out = {"preset": args.preset, "variants": p["variants"], "load_average_1min_at_start": load,
           **{f"{name}_wall_s": round(marks[i + 1][0] - m[0], 2) for i, (name, m) in enumerate(parts.items())},
           **{f"{name}_cpu_s": round(marks[i + 1][1] - m[1], 2) for i, (name, m) in enumerate(parts.items())},
           "total_wall_s": round(end[0] - start[0], 2), "total_cpu_s": round(end[1] - start[1], 2),
           "iou@0.50": dict(zip(table["variant"], table["iou@0.50"].round(3)))}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
