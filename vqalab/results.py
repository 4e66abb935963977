"""Reading run folders back: the tables and flags the notebooks and the report show.

Metrics live in files (``metrics.csv``, ``summary.json``); nothing is scraped from logs.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vqalab.runs import METRIC_COLUMNS, METRICS_FILE, read_metrics_rows, read_summary

# Epochs of rising validation loss (while training loss falls) before a run is flagged overfitting.
OVERFIT_PATIENCE = 2


def metrics_table(run_dir: str | Path) -> pd.DataFrame:
    """A run's ``metrics.csv`` as a DataFrame, one row per epoch, read by ``runs.read_metrics_rows``
    (numbers exactly as written; a damaged cell refused naming the file, line and column)."""
    rows = read_metrics_rows(Path(run_dir) / METRICS_FILE)
    return pd.DataFrame(rows) if rows else pd.DataFrame(columns=METRIC_COLUMNS)


def overfitting_epoch(metrics: pd.DataFrame, patience: int = OVERFIT_PATIENCE) -> int | None:
    """First epoch after which val_loss rose for ``patience`` epochs in a row while train_loss fell.

    Returns the epoch where validation loss was lowest before the rise (None: no overfitting seen).
    """
    val, train, epochs = metrics["val_loss"].tolist(), metrics["train_loss"].tolist(), metrics["epoch"].tolist()
    run = 0
    for i in range(1, len(val)):
        run = run + 1 if val[i] > val[i - 1] and train[i] < train[i - 1] else 0
        if run >= patience:
            return int(epochs[i - patience])
    return None


def runs_table(run_dirs: list[str | Path]) -> pd.DataFrame:
    """One row per run: model, status, best epoch and accuracy, time per epoch, params, overfitting."""
    rows = []
    for run_dir in run_dirs:
        summary = read_summary(run_dir)
        metrics = metrics_table(run_dir)
        rows.append({
            "name": summary["name"],
            "model": summary["model"],
            "status": summary["status"],
            "seed": summary["seed"],
            "best_epoch": summary.get("best_epoch"),
            "best_val_acc": summary.get("best_val_acc"),
            "best_val_loss": summary.get("best_val_loss"),
            "epoch_time_s": summary.get("epoch_time_s"),
            "params_M": summary["params"] / 1e6,
            "overfitting_from_epoch": overfitting_epoch(metrics) if len(metrics) else None,
            "run_dir": str(run_dir),
        })
    return pd.DataFrame(rows)


def curves(run_dirs: list[str | Path]) -> pd.DataFrame:
    """Long table of per-epoch metrics of several runs, with a ``name`` column, for seaborn."""
    frames = []
    for run_dir in run_dirs:
        metrics = metrics_table(run_dir)
        metrics.insert(0, "name", read_summary(run_dir)["name"])
        frames.append(metrics)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
