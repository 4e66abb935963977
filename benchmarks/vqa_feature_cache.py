"""easy-VQA epoch time with the frozen-feature cache vs recomputing a frozen ResNet-18 every epoch.

Both runs train the same model with the same loop (``vqalab.train.fit``), the same data subset,
batch size and seed:

- recompute: ``model.image_encoder: resnet18, freeze_image: true`` on easy_vqa — the frozen
  encoder runs on every batch of every epoch (once per distinct image in the batch);
- cached: ``data: frozen_features`` over the same easy_vqa — the ResNet-18 runs once per image
  when the cache is filled, later epochs (and runs) read the features.

Reported per run: the mean training time per epoch (``epoch_time_s`` of ``metrics.csv``) and the
mean wall time per epoch including validation; for the cache, the one-off fill time (miss) and
the load time (hit). The cache lives in a fresh temporary folder unless --cache-dir is given.
Goal: the cached epoch ≥ 10× faster. Both ResNets have random weights (pass --weights for a
local state dict): the time does not depend on the values.

    .venv/bin/python benchmarks/vqa_feature_cache.py --epochs 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

GOAL_SPEEDUP = 10.0


def run(args: argparse.Namespace, root: Path) -> dict:
    # Imported after VQALAB_CACHE is set: the cache folder is read from the environment.
    from vqalab.config import build_config
    from vqalab.data import build_data
    from vqalab.train import fit

    source = {"name": "easy_vqa", "max_train_samples": args.max_train_samples, "max_val_samples": args.max_val_samples}
    cached_spec = {"name": "frozen_features", "source": source, "encoder": "resnet18", "weights": args.weights}
    common = {"experiment": "feature_cache_bench", "runs_root": str(root / "runs"), "seed": 0,
              "train": {"epochs": args.epochs, "batch_size": args.batch_size, "progress": False}}

    def timed_fit(name: str, model: dict, data_spec: dict, data) -> dict:
        cfg = build_config({**common, "name": name, "model": model, "data": data_spec})
        result = fit(cfg, data=data)
        metrics = pd.read_csv(result.run_dir / "metrics.csv")
        return {"train_epoch_s": float(metrics["epoch_time_s"].mean()),
                "epoch_with_val_s": result.summary["wall_time_s"] / len(metrics),
                "best_val_acc": result.summary["best_val_acc"], "epochs": len(metrics)}

    plain_data = build_data(source)
    recompute = timed_fit("recompute", {"name": args.model, "image_encoder": "resnet18", "freeze_image": True,
                                        "image_weights": args.weights}, source, plain_data)
    t0 = time.perf_counter()
    cached_data = build_data(cached_spec)  # miss: fills the cache
    fill_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cached_data = build_data(cached_spec)  # hit: what every later run pays
    load_s = time.perf_counter() - t0
    hit = cached_data.info["image_features"]["train"]["cache_hit"]
    cached = timed_fit("cached", {"name": args.model}, cached_spec, cached_data)
    return {
        "model": args.model, "train_questions": len(plain_data.train), "val_questions": len(plain_data.val),
        "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "recompute": recompute, "cached": cached,
        "cache_fill_s": round(fill_s, 2), "cache_load_s": round(load_s, 2), "second_build_was_hit": hit,
        "speedup_train_epoch": recompute["train_epoch_s"] / cached["train_epoch_s"],
        "speedup_epoch_with_val": recompute["epoch_with_val_s"] / cached["epoch_with_val_s"],
        "goal_speedup": GOAL_SPEEDUP,
    }


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vqa_mean_mlp", help="registry name of the VQA model")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-train-samples", type=int, default=None, help="easy-VQA subset (default: all)")
    parser.add_argument("--max-val-samples", type=int, default=None)
    parser.add_argument("--weights", default=None, help="local ResNet-18 state dict (default: random init)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--cache-dir", default=None, help="feature cache root (default: a fresh temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["VQALAB_CACHE"] = args.cache_dir or str(Path(tmp) / "cache")
        result = run(args, Path(tmp))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
