"""FER studies, ``cpu`` preset (what ``make report`` runs): validation accuracy and seed noise.

Trains lr_search's grid from ``params/lr_search.yaml`` (``presets.<--preset>``: its depths ×
learning rates × ``--seeds``) through the same ``sweep`` the notebook calls, into a throwaway runs
folder, and prints per grid point the mean and std of best val_acc over the seeds, the pooled
seed std, and whether the spread over the learning rates is beyond the seed noise (the t-test of
``vqalab.sweep.spread_vs_noise``). The point at ``--base-lr`` is the one every FER study of the
preset shares (experiment ``fer_tuning``). One torch thread, as in the report. ``--set KEY=VALUE``
(a YAML value) replaces one of the preset's values, to try a smaller preset before editing
``params/fer_base.yaml``.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fer_cpu_preset.py --seeds 0 1 2
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python benchmarks/fer_cpu_preset.py --set num_train=512 --set epochs=6
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
import yaml

from vqalab.data import build_data
from vqalab.paths import resolve
from vqalab.report.presets import read_presets
from vqalab.studies.common import fer_base_config
from vqalab.studies.lr_search import grid_lrs
from vqalab.sweep import seed_stats, spread_vs_noise, sweep

# The notebook's defaults for parameters the cpu preset leaves out.
NOTEBOOK_DEFAULTS = {"model": "ir_vit", "dataset": "synthetic_faces", "dataset_kwargs": {}, "face_options": {},
                     "device": "cpu", "amp": "off", "cpu_threads": 1, "seeds": [0]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params/lr_search.yaml")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the preset's seeds")
    parser.add_argument("--base-lr", type=float, default=1e-3, help="the FER studies' shared learning rate")
    parser.add_argument("--runs-root", default=None, help="default: a temporary folder, deleted afterwards")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="replace one preset value (a YAML value), e.g. --set num_train=512 (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)

    p = {**NOTEBOOK_DEFAULTS, **read_presets(resolve(args.params))[args.preset]}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or key not in p:
            parser.error(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(p))}")
        p[key] = yaml.safe_load(value)
    seeds = args.seeds or p["seeds"]
    lrs = grid_lrs(p["lr_min"], p["lr_max"], p["lr_points"])
    with tempfile.TemporaryDirectory(prefix="fer_cpu_preset-") as tmp:
        base = fer_base_config(
            study="fer_cpu_preset", experiment="fer_cpu_preset", runs_root=args.runs_root or tmp, model=p["model"],
            depth=p["depths"][0], img_size=p["img_size"], backbone_depth=p["backbone_depth"], width=p["width"],
            dataset=p["dataset"], dataset_kwargs=p["dataset_kwargs"], num_train=p["num_train"],
            num_val=p["num_val"], face_options=p["face_options"], epochs=p["epochs"], batch_size=p["batch_size"],
            lr=lrs[0], device=p["device"], amp=p["amp"], cpu_threads=p["cpu_threads"])
        load_at_start = os.getloadavg()
        t0 = time.perf_counter()
        data = build_data(base["data"])
        df = sweep(base, {"model.depth": p["depths"], "optim.lr": lrs}, seeds=seeds, data=data)
        wall = time.perf_counter() - t0
    stats = seed_stats(df, ["model.depth", "optim.lr"])
    noise = spread_vs_noise(stats)
    points = [{"depth": int(r["model.depth"]), "lr": r["optim.lr"], "mean": round(r["mean"], 3),
               "std": round(r["std"], 3), "n": int(r["n"]),
               "seeds": [round(v, 3) for v in df[(df["model.depth"] == r["model.depth"])
                                                  & (df["optim.lr"] == r["optim.lr"])]["best_val_acc"]]}
              for _, r in stats.iterrows()]
    base_points = [pt for pt in points if abs(pt["lr"] - args.base_lr) < 1e-12]
    result = {
        "params": f"{Path(args.params).as_posix()} presets.{args.preset}", "set": args.set, "seeds": seeds,
        "load_average_at_start": [round(x, 2) for x in load_at_start], "wall_s": round(wall, 1),
        "runs": len(df), "s_per_run": round(wall / max(len(df), 1), 1), "points": points,
        "base_point": base_points, "best_mean": round(float(stats["mean"].max()), 3),
        "pooled_seed_std": round(noise["noise_std"], 3), "lr_spread": round(noise["spread"], 3),
        "noise_threshold_95": round(noise["threshold"], 3), "optimum_beyond_noise": noise["exceeds"],
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
