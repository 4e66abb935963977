"""VQA models compared on the same data and optimiser settings: curves, best epoch, overfitting,
time per epoch and size."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from vqalab.config import RunConfig, build_config
from vqalab.data import build_data
from vqalab.models.encoders import RESNET_OUT_DIM
from vqalab.train import fit


# A frozen ResNet (freeze_image: true) on an image data set runs once per image into the feature
# cache instead of once per batch and epoch: these model keywords then go to ``frozen_features``.
FROZEN_ENCODER_KEYS = ("image_encoder", "image_weights", "freeze_image")
FEATURE_CACHE = "frozen_features"


def run_sections(name: str, kwargs: dict, dataset: str, dataset_kwargs: dict) -> tuple[dict, dict]:
    """The ``model`` and ``data`` sections of one model's run. A frozen ResNet image encoder becomes
    the feature cache's encoder (same weights, same maps), and the model takes the cached maps."""
    data = {"name": dataset, **dataset_kwargs}
    frozen_resnet = kwargs.get("freeze_image") and kwargs.get("image_encoder") in RESNET_OUT_DIM
    if frozen_resnet and dataset != FEATURE_CACHE:
        data = {"name": FEATURE_CACHE, "source": data, "encoder": kwargs["image_encoder"],
                "weights": kwargs.get("image_weights")}
        kwargs = {k: v for k, v in kwargs.items() if k not in FROZEN_ENCODER_KEYS}
    return {"name": name, **kwargs}, data


def model_configs(*, models: list, model_kwargs: dict, dataset: str, dataset_kwargs: dict, epochs: int,
                  batch_size: int, lr: float, seed: int, experiment: str, runs_root: str) -> list[RunConfig]:
    """One validated config per model (named after it); all errors raise before any training."""
    configs = []
    for name in models:
        model, data = run_sections(name, model_kwargs.get(name, {}), dataset, dataset_kwargs)
        configs.append(build_config({
            "experiment": experiment, "name": name, "seed": seed, "runs_root": runs_root, "model": model,
            "data": data, "optim": {"lr": lr}, "train": {"epochs": epochs, "batch_size": batch_size, "progress": False},
        }, source=f"notebook parameters (model {name})"))
    return configs


def train_models(configs: list[RunConfig]) -> list[Path]:
    """Train every config; each distinct data section is loaded once. The run folders, in config order."""
    loaded: dict[str, object] = {}
    run_dirs = []
    for cfg in configs:
        key = json.dumps(cfg.data, sort_keys=True, default=str)
        if key not in loaded:
            loaded[key] = build_data(cfg.data)
        run_dirs.append(fit(cfg, data=loaded[key]).run_dir)
    return run_dirs


def findings_of(table: pd.DataFrame, *, epochs: int) -> tuple[dict, list[str]]:
    """The best model, overfitting per model, time and size; headline: best val_acc, model, epoch.

    ``table``: ``results.runs_table`` of the runs.
    """
    best = table.sort_values("best_val_acc", ascending=False).iloc[0]
    overfit = table.dropna(subset=["overfitting_from_epoch"])
    text = [(f"Best model: {best['name']} with validation accuracy {best['best_val_acc']:.4f} "
             f"at epoch {best['best_epoch']} of {epochs}.")]
    text += [f"{r['name']} overfits after epoch {int(r['overfitting_from_epoch'])}: validation loss rises "
             "while training loss falls." for _, r in overfit.iterrows()] or [
        "No model shows overfitting within these epochs."]
    text += [f"{r['name']}: {r['epoch_time_s']:.1f} s per epoch, {r['params_M']:.3f} M parameters."
             for _, r in table.iterrows()]
    headline = {"best val_acc": float(best["best_val_acc"]), "best model": best["name"],
                "best epoch": int(best["best_epoch"])}
    return headline, text
