"""VQA models compared on the same data and optimiser settings: curves, best epoch, overfitting,
time per epoch and size."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from vqalab.config import RunConfig, build_config
from vqalab.data import build_data, data_status
from vqalab.models.encoders import RESNET_OUT_DIM
from vqalab.provenance import code_fingerprint
from vqalab.registry import ConfigError
from vqalab.runs import config_hash
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
