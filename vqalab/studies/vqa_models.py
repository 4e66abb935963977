"""VQA models compared on the same data and optimiser settings: curves, best epoch, overfitting,
time per epoch and size; on VQA v2 and GQA also the accuracy per question type their papers report."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from vqalab.config import RunConfig, build_config
from vqalab.data import build_data, data_status
from vqalab.metrics import gqa_accuracy, vqa_summary
from vqalab.models.encoders import RESNET_OUT_DIM
from vqalab.provenance import code_fingerprint
from vqalab.registry import ConfigError
from vqalab.runs import config_hash, read_predictions
from vqalab.studies.common import swept_sentence
from vqalab.sweep import finished_runs, fresh_requested, log_points, reuse_key
from vqalab.train import fit

log = logging.getLogger(__name__)


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


def train_models(configs: list[RunConfig], *, reuse: bool = True) -> list[Path]:
    """Train every config, or reuse its finished run as sweeps do: same config hash, training code
    (``code_fingerprint``) and data identity (``vqalab.sweep.reuse_key``; ``reuse=False`` or ``VQALAB_FRESH=1`` retrains).
    Each distinct data section is loaded once, and only if some model trains. The run folders, in
    config order; every model is a line of the report's run log (reused or trained)."""
    reuse = reuse and not fresh_requested()
    code = code_fingerprint()
    indexes: dict[tuple[str, str], dict[str, Path]] = {}
    fingerprints: dict[str, str] = {}
    loaded: dict[str, object] = {}
    run_dirs, rows = [], []
    for cfg in configs:
        data_key = json.dumps(cfg.data, sort_keys=True, default=str)
        run_dir = None
        if reuse:
            index = indexes.setdefault((cfg.runs_root, cfg.experiment), finished_runs(cfg.runs_root, cfg.experiment))
            if data_key not in fingerprints:
                fingerprints[data_key] = data_status(cfg.data).fingerprint
            run_dir = index.get(reuse_key(config_hash(cfg), code, fingerprints[data_key]))
        if run_dir is not None:
            log.info("%s: reusing %s (same config, code and data)", cfg.name, run_dir)
            summary = json.loads((run_dir / "summary.json").read_text())
        else:
            if data_key not in loaded:
                loaded[data_key] = build_data(cfg.data)
            result = fit(cfg, data=loaded[data_key])
            summary = result.summary
        rows.append({"run_dir": str(run_dir or result.run_dir), "status": summary.get("status"),
                     "reused": run_dir is not None, "finished": summary.get("finished")})
        run_dirs.append(run_dir or result.run_dir)
    log_points(rows)
    return run_dirs


def swept_text(*, models: list, dataset: str, seed: int, epochs: int) -> list[str]:
    """What this run compared: each model once, on one data set, with one seed."""
    return [swept_sentence({"model": models}, [seed], epochs=epochs, note=f"on {dataset}")]


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


def type_accuracy_table(configs: list[RunConfig], run_dirs: list[Path]) -> pd.DataFrame:
    """Per model, its best epoch's accuracy per question type (``type_accuracy``) from the run's
    ``val_predictions.csv``; empty when no model's data set types its questions. Each distinct
    data section is loaded once, and only when its data set is typed."""
    splits: dict[str, object] = {}
    rows = []
    for cfg, run_dir in zip(configs, run_dirs):
        dataset = annotated_data_set(cfg.data)
        if dataset not in TYPED_DATA_SETS:
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
