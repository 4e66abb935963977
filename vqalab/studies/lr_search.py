"""Learning rate per transformer depth: LR range test and a grid of short runs (lab note 002
searched [1e-5, 1e-3] per depth)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from vqalab.config import build_config
from vqalab.data import DataSplits
from vqalab.lr_find import LRFindResult, lr_range_test
from vqalab.studies.common import best_per_group, grid_values, swept_sentence, with_values
from vqalab.sweep import format_stat, seed_stats

RANGE_COLUMNS = ["depth", "rule", "suggested lr"]


def grid_lrs(lr_min: float, lr_max: float, points: int) -> list[float]:
    """``points`` log-spaced learning rates from ``lr_min`` to ``lr_max``, two significant digits."""
    return [float(f"{v:.2g}") for v in np.logspace(math.log10(lr_min), math.log10(lr_max), points)]


def swept_text(*, depths: list, lrs: list, seeds: list) -> list[str]:
    """What this run's grid of short runs swept."""
    return [swept_sentence({"depth": depths, "learning rate": lrs}, seeds)]


def range_tests(base: dict, *, depths: list, data: DataSplits, min_lr: float, max_lr: float,
                num_steps: int) -> tuple[dict[int, LRFindResult], pd.DataFrame]:
    """The LR range test of each depth (none when ``num_steps`` is 0), and the table of its
    suggestions (depth, rule, suggested lr)."""
    results, rows = {}, []
    for depth in depths if num_steps > 0 else []:
        cfg = build_config(with_values(base, model={"depth": depth}))
        results[depth] = lr_range_test(cfg, min_lr=min_lr, max_lr=max_lr, num_steps=num_steps, data=data)
        rows += [{"depth": depth, "rule": rule, "suggested lr": value}
                 for rule, value in results[depth].suggestions.items()]
    return results, pd.DataFrame(rows, columns=RANGE_COLUMNS)


def suggest_lr(stats: pd.DataFrame) -> tuple[float, pd.Series]:
    """The highest mean best val_acc averaged over the depths, among learning rates where every
    depth completed and no run diverged (NaN when there is none); and those averages per lr.

    ``stats``: ``seed_stats`` over ``model.depth`` and ``optim.lr``.
    """
    safe = stats.groupby("optim.lr").filter(lambda g: (g["n_diverged"] == 0).all() and (g["n"] > 0).all())
    by_lr = safe.groupby("optim.lr")["mean"].mean()
    return (float(by_lr.idxmax()) if len(by_lr) else math.nan), by_lr


def findings_of(df: pd.DataFrame, range_table: pd.DataFrame, *, lrs: list) -> tuple[dict, list[str]]:
    """What the grid swept, suggested learning rate, best per depth (with the range test's valley rule), spread over the
    grid and divergence; headline: suggested lr, best val_acc, diverged runs."""
    stats = seed_stats(df, ["model.depth", "optim.lr"])
    done = stats[stats["n"] > 0]
    suggested, by_lr = suggest_lr(stats)
    diverged = df[df["status"] == "diverged"]
    depths = grid_values(df, "model.depth")
    text = swept_text(depths=depths, lrs=grid_values(df, "optim.lr"), seeds=grid_values(df, "seed"))
    if math.isfinite(suggested):
        text.append(f"Suggested learning rate: {suggested:.2g} (highest best val_acc averaged over depths "
                    f"{', '.join(map(str, depths))}: {by_lr.max():.3f}, with no diverged run).")
    else:
        text.append("No learning rate of the grid trained every depth without diverging: lower lr_min.")
    for depth, row in best_per_group(stats, "model.depth").iterrows():
        line = f"Depth {depth}: best learning rate {row['optim.lr']:.2g} with best val_acc {format_stat(row)}"
        valley = range_table[(range_table["depth"] == depth) & (range_table["rule"] == "valley")]["suggested lr"]
        if len(valley) and math.isfinite(valley.iloc[0]):
            line += f"; the range test's valley rule suggests {valley.iloc[0]:.2g}"
        text.append(line + ".")
    spread = done["mean"].max() - done["mean"].min() if len(done) else math.nan
    text.append(f"Across the grid ({lrs[0]:.2g} to {lrs[-1]:.2g}) the mean best val_acc spans "
                f"{done['mean'].min():.3f} to {done['mean'].max():.3f} (a spread of {spread:.3f}).")
    if len(diverged):
        text.append(f"{len(diverged)} of {len(df)} runs diverged; the lowest diverging learning rate was "
                    f"{diverged['optim.lr'].min():.2g}.")
    else:
        text.append(f"No run diverged between {lrs[0]:.2g} and {lrs[-1]:.2g}.")
    headline = {"suggested lr": suggested, "best val_acc": float(done["mean"].max()) if len(done) else math.nan,
                "diverged runs": len(diverged)}
    return headline, text
