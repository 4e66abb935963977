"""VQA models compared on the same data and optimiser settings: curves, best epoch, overfitting,
time per epoch and size; on VQA v2 and GQA also the accuracy per question type their papers report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from vqalab.config import build_config
from vqalab.data import build_data
from vqalab.metrics import gqa_accuracy, vqa_summary
from vqalab.models.encoders import RESNET_OUT_DIM
from vqalab.params import RunConfig
from vqalab.registry import ConfigError
from vqalab.results import runs_table
from vqalab.runs import read_predictions
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


# Accuracy per question type as each data set's paper reports it, in the papers' column order:
# VQA v2 by answer type with the official VQA accuracy (Antol et al. 2015, Goyal et al. 2017), GQA
# by structural type with exact match (Hudson & Manning 2019). Other data sets type no question.
TYPED_DATA_SETS = {
    "vqa_v2": ("answer type", ("yes/no", "number", "other")),
    "gqa": ("structural type", ("verify", "query", "choose", "logical", "compare")),
}


def annotated_data_set(data: dict) -> str:
    """The data set whose annotations a ``data`` section's questions carry (a feature cache's source)."""
    return data["source"]["name"] if data["name"] == FEATURE_CACHE else data["name"]


def type_accuracy(dataset: str, predictions: list[str], split) -> dict:
    """One model's row: accuracy per question type of ``dataset`` (``TYPED_DATA_SETS``), overall, and
    the number of questions. ``predictions``: the predicted answer of each item of ``split`` (its
    validation split; a feature cache's split is read through its source split, ``.base``)."""
    if dataset not in TYPED_DATA_SETS:
        raise ConfigError(f"type_accuracy: {dataset} types no question: expected one of {', '.join(TYPED_DATA_SETS)}")
    split = getattr(split, "base", split)
    if len(predictions) != len(split):
        raise ConfigError(f"type_accuracy: {len(predictions)} predictions for the {len(split)} questions of the "
                          f"{dataset} validation split: the run was trained on other data")
    if dataset == "vqa_v2":
        summary = vqa_summary(predictions, split.answers, split.answer_types)
        per_type = summary["per_answer_type"]
    else:
        summary = gqa_accuracy(predictions, split.answers, split.structural_types)
        per_type = summary["per_structural_type"]
    order = TYPED_DATA_SETS[dataset][1]
    kinds = [k for k in order if k in per_type] + sorted(k for k in per_type if k not in order)
    return {**{kind: per_type[kind] for kind in kinds}, "overall": summary["overall"], "questions": summary["count"]}


def type_accuracy_table(configs: list[RunConfig], run_dirs: list[Path | None]) -> pd.DataFrame:
    """Per model, its best epoch's accuracy per question type (``type_accuracy``) from the run's
    ``val_predictions.csv``; empty when no model's data set types its questions. Each distinct
    data section is loaded once, and only when its data set is typed."""
    splits: dict[str, object] = {}
    rows = []
    for cfg, run_dir in zip(configs, run_dirs):
        dataset = annotated_data_set(cfg.data)
        if dataset not in TYPED_DATA_SETS or pd.isna(run_dir):  # a failed model has no run
            continue
        data_key = json.dumps(cfg.data, sort_keys=True, default=str)
        if data_key not in splits:
            splits[data_key] = build_data(cfg.data).val
        rows.append({"name": cfg.name, **type_accuracy(dataset, read_predictions(run_dir), splits[data_key])})
    return pd.DataFrame(rows)


def type_accuracy_text(configs: list[RunConfig]) -> list[str]:
    """The line above the per-type table, per data set of the runs; for a data set that types no
    question, the line stands instead of the table."""
    text = []
    for dataset in sorted({annotated_data_set(cfg.data) for cfg in configs}):
        if dataset in TYPED_DATA_SETS:
            text.append(f"Validation accuracy per {TYPED_DATA_SETS[dataset][0]} on {dataset} at each model's "
                        "best epoch, as the data set's paper reports it, over the questions val_acc counts "
                        "(those with an answer in the vocabulary).")
        else:
            text.append(f"{dataset} gives its questions no answer or structural types: no accuracy per type.")
    return text
