"""VQA models compared on the same data and optimiser settings: curves, best epoch, overfitting,
time per epoch and size."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vqalab.config import RunConfig, build_config
from vqalab.data import build_data
from vqalab.train import fit


def model_configs(*, models: list, model_kwargs: dict, dataset: str, dataset_kwargs: dict, epochs: int,
                  batch_size: int, lr: float, seed: int, experiment: str, runs_root: str) -> list[RunConfig]:
    """One validated config per model (named after it); all errors raise before any training."""
    return [
        build_config({
            "experiment": experiment, "name": name, "seed": seed, "runs_root": runs_root,
            "model": {"name": name, **model_kwargs.get(name, {})}, "data": {"name": dataset, **dataset_kwargs},
            "optim": {"lr": lr}, "train": {"epochs": epochs, "batch_size": batch_size, "progress": False},
        }, source=f"notebook parameters (model {name})")
        for name in models
    ]


def train_models(configs: list[RunConfig]) -> list[Path]:
    """Train every config on the same data (loaded once); the run folders, in config order."""
    data = build_data(configs[0].data)
    return [fit(cfg, data=data).run_dir for cfg in configs]


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
