"""Depth × LR grid of the FER ``cpu`` preset, in full and with ASHA: epochs trained and best point.

Trains ``--depths`` × ``--lrs`` × ``--seeds`` (default 4 × 4 × 2 = 32 runs) with the model and
data of ``params/depth_test.yaml``'s ``cpu`` preset through the same ``sweep`` the notebook calls,
once with every point trained all its epochs and once with ``pruner="asha"``, each into its own
throwaway runs folder (nothing is reused between them). Prints, side by side, the total epochs
trained, the wall time and the best point of each (highest mean best val_acc over the seeds that
completed), and whether the goal of issue 24 is met: ASHA within 40% of the full grid's epochs,
with the same best point or one whose full-grid mean is within seed noise of the full grid's best
(``vqalab.sweep.gap_vs_noise``: a t-test on the two points' seeds in the full grid). One torch
thread, as in the report.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 .venv/bin/python benchmarks/successive_halving.py
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time

import pandas as pd
import torch

from vqalab.data import build_data
from vqalab.paths import resolve
from vqalab.report.presets import read_presets
from vqalab.studies.common import fer_base_config
from vqalab.sweep import gap_vs_noise, seed_stats, sweep

# The notebook's defaults for parameters the cpu preset leaves out.
NOTEBOOK_DEFAULTS = {"model": "ir_vit", "dataset": "synthetic_faces", "dataset_kwargs": {}, "face_options": {},
                     "device": "cpu", "amp": "off", "cpu_threads": 1}
GRID_KEYS = ["model.depth", "optim.lr"]
EPOCH_SHARE_GOAL = 0.40  # issue 24: at most 40% of the full grid's epochs


def best_point(df: pd.DataFrame) -> dict:
    """The grid point with the highest mean best val_acc over its completed seeds."""
    stats = seed_stats(df, GRID_KEYS)
    top = stats.loc[stats["mean"].idxmax()]
    return {"depth": int(top["model.depth"]), "lr": float(top["optim.lr"]), "mean": round(float(top["mean"]), 4),
            "completed_seeds": int(top["n"])}


def seeds_of(df: pd.DataFrame, point: dict) -> list[float]:
    cell = df[(df["model.depth"] == point["depth"]) & (df["optim.lr"] == point["lr"]) & (df["status"] == "completed")]
    return [float(v) for v in cell["best_val_acc"]]


def run(base: dict, grid: dict, seeds: list[int], data, pruner: str | None) -> tuple[pd.DataFrame, dict]:
    with tempfile.TemporaryDirectory(prefix="successive_halving-") as tmp:
        t0 = time.perf_counter()
        df = sweep({**base, "runs_root": tmp}, grid, seeds=seeds, data=data, reuse=False, pruner=pruner)
        wall = time.perf_counter() - t0
    statuses = df["status"].value_counts().to_dict()
    return df, {"pruner": pruner or "none", "runs": len(df), "statuses": statuses,
                "epochs_trained": int(df["epochs"].sum()), "wall_s": round(wall, 1), "best": best_point(df)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params/depth_test.yaml")
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 4, 6, 8])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3.2e-4, 1e-3, 3.2e-3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--epochs", type=int, default=None, help="default: the preset's")
    parser.add_argument("--num-train", type=int, default=None, help="default: the preset's")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)

    p = {**NOTEBOOK_DEFAULTS, **read_presets(resolve(args.params))[args.preset]}
    epochs = args.epochs or p["epochs"]
    num_train = args.num_train or p["num_train"]
    base = fer_base_config(
        study="successive_halving", experiment="successive_halving", runs_root="unused", model=p["model"],
        depth=args.depths[0], img_size=p["img_size"], backbone_depth=p["backbone_depth"], width=p["width"],
        dataset=p["dataset"], dataset_kwargs=p["dataset_kwargs"], num_train=num_train, num_val=p["num_val"],
        face_options=p["face_options"], epochs=epochs, batch_size=p["batch_size"], lr=args.lrs[0],
        device=p["device"], amp=p["amp"], cpu_threads=p["cpu_threads"])
    data = build_data(base["data"])
    grid = {"model.depth": args.depths, "optim.lr": args.lrs}
    full_df, full = run(base, grid, args.seeds, data, None)
    print(json.dumps({"full": full}), flush=True)
    asha_df, asha = run(base, grid, args.seeds, data, "asha")
    print(json.dumps({"asha": asha}), flush=True)

    share = asha["epochs_trained"] / full["epochs_trained"]
    same = (asha["best"]["depth"], asha["best"]["lr"]) == (full["best"]["depth"], full["best"]["lr"])
    # the ASHA winner judged by its full-grid seeds against the full grid's winner
    gap = gap_vs_noise(seeds_of(full_df, full["best"]), seeds_of(full_df, asha["best"]))
    within_noise = same or gap["exceeds"] is False
    result = {
        "grid": f"{len(args.depths)} depths × {len(args.lrs)} lrs × {len(args.seeds)} seeds, {epochs} epochs, "
                f"{num_train} training faces ({args.params} presets.{args.preset})",
        "full": full, "asha": asha, "epoch_share": round(share, 3), "same_best_point": same,
        "asha_best_in_full_grid": {"seeds": seeds_of(full_df, asha["best"]), "gap": round(gap["gap"], 4),
                                   "noise_threshold_95": round(gap["threshold"], 4), "exceeds": gap["exceeds"]},
        "goal_met": bool(share <= EPOCH_SHARE_GOAL and within_noise),
        "per_point": [{"depth": int(r["model.depth"]), "lr": r["optim.lr"], "seed": int(r["seed"]),
                       "full": round(float(r["best_val_acc"]), 3), "asha_status": a["status"],
                       "asha_epochs": int(a["epochs"])}
                      for (_, r), (_, a) in zip(full_df.iterrows(), asha_df.iterrows())],
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
