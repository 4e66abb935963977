"""Depth × learning rate with short runs, then each depth longer at its best learning rate
(lab note 002 compared depths 2-8 and trained the most promising settings for 50-60 epochs).
The grid may be trained with successive halving (``pruner``: hopeless points stop early)."""

from __future__ import annotations

import math

import pandas as pd

from vqalab.runs import PRUNED_STATUS
from vqalab.studies.common import (
    RUN_COLUMNS,
    best_per_group,
    grid_values,
    swept_sentence,
    with_values,
)
from vqalab.sweep import format_stat, seed_stats, sweep

PRUNER_OFF = "none"  # the notebook's value for "train every point in full"
GRID_KEYS = ["model.depth", "optim.lr"]


def run_grid(base: dict, *, depths: list, lrs: list, seeds: list, pruner: str) -> pd.DataFrame:
    """The short-run depth × LR grid; ``pruner`` asha, hyperband or median stops hopeless points
    early (``vqalab.pruning``), ``none`` trains every point all its epochs."""
    return sweep(base, {"model.depth": depths, "optim.lr": lrs}, seeds=seeds,
                 pruner=None if pruner == PRUNER_OFF else pruner)


def swept_text(*, depths: list, lrs: list, seeds: list, epochs: int) -> list[str]:
    """What this run's short-run grid swept (the long runs are described by the findings)."""
    return [swept_sentence({"depth": depths, "learning rate": lrs}, seeds, epochs=epochs)]


def grid_columns(df: pd.DataFrame) -> list[str]:
    """The columns of the grid's table shown in the notebook: ``pruned_at_epoch`` when any run was pruned."""
    pruned = (df["status"] == PRUNED_STATUS).any()
    return [*GRID_KEYS, *RUN_COLUMNS, *(["pruned_at_epoch"] if pruned else [])]


def pruned_sentence(df: pd.DataFrame, epochs: int) -> list[str]:
    """How many runs the pruner stopped and the epochs the grid trained (of ``epochs`` per run),
    or ``[]`` without pruned runs."""
    pruned = df[df["status"] == PRUNED_STATUS]
    if not len(pruned):
        return []
    at = ", ".join(str(int(e)) for e in sorted(pruned["pruned_at_epoch"].unique()))
    trained = int(df["epochs"].fillna(0).sum())
    sentence = (f"{len(pruned)} of {len(df)} runs were pruned (stopped after epoch {at}; grey ▽, not in the means "
                f"or the best cells): the grid trained {trained} of {len(df) * epochs} epochs.")
    return [sentence]


def run_long(base: dict, best_lr: dict, *, long_epochs: int, seeds: list) -> pd.DataFrame:
    """Each depth trained ``long_epochs`` at its best learning rate (``best_lr``: depth → lr)."""
    parts = []
    for depth, lr in best_lr.items():
        long_base = with_values(base, optim={"lr": lr}, train={"epochs": long_epochs, "checkpoint_every": long_epochs})
        parts.append(sweep(long_base, {"model.depth": [depth]}, seeds=seeds).assign(**{"optim.lr": lr}))
    return pd.concat(parts, ignore_index=True)


def curve_runs(df: pd.DataFrame, long_df: pd.DataFrame | None, best_lr: dict) -> pd.DataFrame:
    """The runs whose validation curves are shown: the long runs when there are any, else the
    short runs at each depth's best learning rate."""
    if long_df is not None:
        return long_df
    # a pruned run's curve is cut short by the pruner: not a curve of its cell
    return df[[best_lr.get(depth) == lr and status != PRUNED_STATUS
               for depth, lr, status in zip(df["model.depth"], df["optim.lr"], df["status"])]]


def still_improving(curves: pd.DataFrame) -> list:
    """Depths whose mean validation accuracy is at its best in the last epoch."""
    return [d for d, g in curves.groupby("model.depth")
            if g.groupby("epoch")["val_acc"].mean().idxmax() == g["epoch"].max()]


def findings_of(df: pd.DataFrame, long_df: pd.DataFrame | None, curves: pd.DataFrame, *, epochs: int,
                long_epochs: int) -> tuple[dict, list[str]]:
    """What the grid swept, best short-run cell, best learning rate per depth, diverged cells, and
    whether the deeper model needs longer training (from the long runs, or from the short runs' curves)."""
    stats = seed_stats(df, ["model.depth", "optim.lr"])
    best = best_per_group(stats, "model.depth")
    text = swept_text(depths=grid_values(df, "model.depth"), lrs=grid_values(df, "optim.lr"),
                      seeds=grid_values(df, "seed"), epochs=epochs)
    if len(best):
        top = best["mean"].idxmax()
        text.append(f"Best short-run cell: depth {top} at learning rate {best.loc[top, 'optim.lr']:.2g}, "
                    f"best val_acc {format_stat(best.loc[top])} after {epochs} epoch(s).")
        text.append("Best learning rate per depth: " + "; ".join(
            f"depth {d}: {row['optim.lr']:.2g} ({row['mean']:.3f})" for d, row in best.iterrows()) + ".")
    all_diverged = stats[(stats["n"] == 0) & (stats["n_pruned"] == 0)]
    if len(all_diverged):
        text.append("Cells where no run completed (diverged): " + ", ".join(
            f"depth {d} at {lr:.2g}" for d, lr in zip(all_diverged["model.depth"], all_diverged["optim.lr"])) + ".")
    text += pruned_sentence(df, epochs)

    headline = {"best short val_acc": float(best["mean"].max()) if len(best) else math.nan}
    depths = df["model.depth"].unique()
    shallow, deep = min(depths), max(depths)
    if long_df is not None and shallow != deep and {shallow, deep} <= set(best.index):
        long_stats = seed_stats(long_df, ["model.depth"]).set_index("model.depth")
        gain = (long_stats["mean"] - best["mean"]).dropna()
        text.append(f"Training {long_epochs} instead of {epochs} epoch(s) changes the best val_acc by " + "; ".join(
            f"{g:+.3f} at depth {d}" for d, g in gain.items()) + ".")
        short_gap = best.loc[deep, "mean"] - best.loc[shallow, "mean"]
        long_gap = long_stats.loc[deep, "mean"] - long_stats.loc[shallow, "mean"]
        gaps = (f"Depth {deep} vs depth {shallow}: {short_gap:+.3f} after {epochs} epoch(s), {long_gap:+.3f} after "
                f"{long_epochs}: ")
        if math.isfinite(long_gap) and long_gap > short_gap:
            text.append(gaps + f"the deeper model gains more from longer training, so short runs understate it; "
                        f"compare depths only with runs of {long_epochs} epochs or more.")
        else:
            text.append(gaps + "no sign here that the deeper model needs longer training to show an advantage.")
        headline.update({f"long-run gain depth {d}": float(g) for d, g in gain.items()})
    elif len(curves):
        still = still_improving(curves)
        if still:
            text.append(f"Validation accuracy was still at its best in the last epoch for depth(s) "
                        f"{', '.join(map(str, still))}: longer runs (long_epochs) are needed to compare them fairly.")
        else:
            text.append("Every depth peaked before its last epoch: the short runs are long enough to rank them.")
    return headline, text
