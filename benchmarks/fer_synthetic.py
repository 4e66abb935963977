"""Synthetic faces, CPU preset: the small IR-ViT against a linear classifier on raw pixels.

Trains the preset (``params/train/fer_synthetic_vit.yaml`` unless ``--params``) through
``vqalab.train.fit`` once per learning rate in ``--lrs``, and the linear pixel classifier
(``fer_pixel_linear``) on the same data with the same epochs, batch size and schedule once per
``--linear-lrs``; the linear model is credited with its best LR. Every run gets its own run folder
under ``runs/<--experiment>/``. Returns (and prints as JSON) one row per run: best and final
validation accuracy, status, wall time of the whole run, time spent in training epochs, samples/s;
plus the CPU load average at the start, since the CPU may be shared.

    .venv/bin/python benchmarks/fer_synthetic.py                      # preset LR ×0.1 / ×1 / ×10
    .venv/bin/python benchmarks/fer_synthetic.py --lrs 1e-3 --threads 1 --params params/train/fer_synthetic_cls.yaml
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

import torch

from vqalab.config import build_config, load_config
from vqalab.data import build_data
from vqalab.params import merge
from vqalab.train import fit

LR_FACTORS = (0.1, 1.0, 10.0)  # default sweep around the preset's LR
LINEAR_LRS = (1e-4, 1e-3, 1e-2)


def run_row(result, lr: float) -> dict:
    s = result.summary
    return {"model": s["model"], "lr": lr, "status": s["status"], "best_val_acc": s.get("best_val_acc"),
            "final_val_acc": s.get("final_val_acc"), "best_epoch": s.get("best_epoch"),
            "params": s["params"], "wall_time_s": round(s["wall_time_s"], 1),
            "train_time_s": round(s.get("epoch_time_s", 0) * s.get("epochs", 0), 1),
            "samples_per_s": round(s.get("samples_per_s", 0), 1), "run_dir": s["run_dir"]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params/train/fer_synthetic_vit.yaml", help="the CPU preset")
    parser.add_argument("--lrs", type=float, nargs="+", default=None, help="LRs for the preset's model "
                        "(default: the preset's LR × 0.1, 1, 10)")
    parser.add_argument("--linear-lrs", type=float, nargs="+", default=list(LINEAR_LRS))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--experiment", default="fer_synthetic_benchmark", help="runs/<experiment>/")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a preset key")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)

    preset = load_config(args.params, args.set)
    base = merge(preset.to_dict(), {"experiment": args.experiment, "train": {"progress": False}})
    lrs = args.lrs or [preset.optim.lr * f for f in LR_FACTORS]
    load_at_start = os.getloadavg()
    t0 = time.perf_counter()
    data = build_data(preset.data)  # drawn (or read from the cache) once for all runs
    data_time = time.perf_counter() - t0

    rows = []
    for lr in lrs:
        cfg = build_config(merge(base, {"optim": {"lr": lr}}), source=f"{args.params} lr={lr:g}")
        rows.append(run_row(fit(cfg, data), lr))
    img_size = preset.data.get("image_size", 112)
    for lr in args.linear_lrs:
        cfg = build_config(merge(base, {"model": {"name": "fer_pixel_linear", "img_size": img_size},
                                        "name": "pixel_linear", "optim": {"lr": lr}}),
                           source=f"linear lr={lr:g}")
        rows.append(run_row(fit(cfg, data), lr))

    model_rows = [r for r in rows if r["model"] != "fer_pixel_linear"]
    linear_rows = [r for r in rows if r["model"] == "fer_pixel_linear"]
    preset_row = next(r for r in model_rows if r["lr"] == preset.optim.lr) if preset.optim.lr in lrs else None
    best_linear = max(linear_rows, key=lambda r: r["best_val_acc"] or 0.0)
    result = {
        "params": args.params, "overrides": args.set, "data": data.info, "data_time_s": round(data_time, 1),
        "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in load_at_start],
        "preset": preset_row, "best_linear": best_linear, "runs": rows,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
