"""VQA models compared on the same data and optimiser settings: curves, best epoch, overfitting,
time per epoch and size."""

from __future__ import annotations

import math

import pandas as pd

from vqalab.config import RunConfig, build_config
from vqalab.models.encoders import RESNET_OUT_DIM
from vqalab.registry import ConfigError
from vqalab.results import runs_table
from vqalab.studies.common import swept_sentence
from vqalab.sweep import sweep

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
                  batch_size: int, lr: float, seed: int, experiment: str, runs_root: str,
                  model_data_kwargs: dict | None = None) -> list[RunConfig]:
    """One validated config per model (named after it); all errors raise before any training.

    model_data_kwargs: per model, data set keywords over ``dataset_kwargs``: models that read
    different inputs of one data set (``synthetic_scenes``: scene graphs, regions or images).
    """
    model_data_kwargs = model_data_kwargs or {}
    for parameter, per_model in (("model_kwargs", model_kwargs), ("model_data_kwargs", model_data_kwargs)):
        for name in per_model:
            if name not in models:
                raise ConfigError(f"notebook parameters: {parameter} names '{name}', which is not in models "
                                  f"({', '.join(models)}): add it to models or remove its entry")
    configs = []
    for name in models:
        model, data = run_sections(name, model_kwargs.get(name, {}), dataset,
                                   {**dataset_kwargs, **model_data_kwargs.get(name, {})})
        configs.append(build_config({
            "experiment": experiment, "name": name, "seed": seed, "runs_root": runs_root, "model": model,
            "data": data, "optim": {"lr": lr}, "train": {"epochs": epochs, "batch_size": batch_size, "progress": False},
        }, source=f"notebook parameters (model {name})"))
    return configs


def train_models(configs: list[RunConfig], *, reuse: bool = True) -> pd.DataFrame:
    """Train every config, or reuse its finished run: one sweep point per model (``sweep(configs=...)``,
    so the sweeps' reuse rule, data loading, failure rows, HParams and run log). One row per model,
    in config order: ``sweep``'s columns, ``name`` the model's."""
    return sweep(configs=configs, reuse=reuse)


# ``results.runs_table``'s columns and the sweep's error: a table of failed models has them too.
TABLE_COLUMNS = ("name", "model", "status", "seed", "best_epoch", "best_val_acc", "best_val_loss", "epoch_time_s",
                 "params_M", "overfitting_from_epoch", "run_dir", "error")


def models_table(points: pd.DataFrame) -> pd.DataFrame:
    """``results.runs_table`` of the models' runs (``train_models``' rows, in their order) with the
    sweep's ``error``; a model that failed without a run to read is a row of its name, seed, status
    ``failed`` and error (the other columns empty)."""
    rows = []
    for _, point in points.iterrows():
        if pd.notna(point["run_dir"]):  # a failed point has none (NaN in the table)
            rows.append({**runs_table([point["run_dir"]]).iloc[0].to_dict(), "error": point["error"]})
        else:
            rows.append({"name": point["name"], "status": point["status"], "seed": point["seed"],
                         "error": point["error"]})
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def swept_text(*, models: list, dataset: str, seed: int, epochs: int) -> list[str]:
    """What this run compared: each model once, on one data set, with one seed."""
    return [swept_sentence({"model": models}, [seed], epochs=epochs, note=f"on {dataset}")]


def findings_of(table: pd.DataFrame, *, epochs: int) -> tuple[dict, list[str]]:
    """The best model, overfitting per model, time and size, failed models with their error;
    headline: best val_acc, model, epoch (NaN, "none", NaN when no model finished an epoch).

    ``table``: ``models_table`` of the runs (or ``results.runs_table``).
    """
    scored = table.dropna(subset=["best_val_acc"])
    if len(scored):
        best = scored.sort_values("best_val_acc", ascending=False).iloc[0]
        text = [(f"Best model: {best['name']} with validation accuracy {best['best_val_acc']:.4f} "
                 f"at epoch {best['best_epoch']} of {epochs}.")]
        headline = {"best val_acc": float(best["best_val_acc"]), "best model": best["name"],
                    "best epoch": int(best["best_epoch"])}
    else:
        text = ["No model finished an epoch: no accuracy to compare."]
        headline = {"best val_acc": math.nan, "best model": "none", "best epoch": math.nan}
    overfit = table.dropna(subset=["overfitting_from_epoch"])
    text += [f"{r['name']} overfits after epoch {int(r['overfitting_from_epoch'])}: validation loss rises "
             "while training loss falls." for _, r in overfit.iterrows()] or [
        "No model shows overfitting within these epochs."]
    text += [f"{r['name']} failed: {r['error']}" if r.get("status") == "failed" else
             f"{r['name']}: {r['epoch_time_s']:.1f} s per epoch, {r['params_M']:.3f} M parameters."
             for _, r in table.iterrows()]
    return headline, text
