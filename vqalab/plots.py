"""Plots of sweep tables that never paint seed noise as a difference.

One definition of noise, the one behind every "within seed noise" sentence of the studies
(``sweep.spread_vs_noise``): two group means are within seed noise when they differ by less than
the 95% threshold of a t-test on the seed std pooled over the groups. So:

- ``plot_heatmap`` outlines the cells within that threshold of the best cell, and its colour scale
  spans at least best ± threshold, so a spread smaller than the noise never runs from purple to yellow;
- ``plot_vs`` draws each completed point's mean ± std over its seeds (a band along a numeric axis,
  error bars at categorical values, never a line between categories), on a y-range no narrower
  than the bands and the threshold plus a margin.

Pruned runs are grey ▽ at the accuracy they reached and diverged runs red × at the bottom edge:
neither is ever in a mean, a band or a best cell.
"""

from __future__ import annotations

import math

import pandas as pd

from vqalab.runs import PRUNED_STATUS
from vqalab.sweep import format_stat, seed_stats, spread_vs_noise
from vqalab.sweep_points import format_grid_value

DIVERGED_COLOR = "tab:red"
PRUNED_COLOR = "0.55"  # grey: a pruned point's accuracy is that of a shorter run
NEAR_BEST_GID = "within-noise-of-best"  # the outlines of plot_heatmap's cells within noise of the best
NEAR_BEST_COLOR = "0.15"  # near black: reads on viridis' yellow and green, where the best cells are
Y_MARGIN = 0.1  # share of the y-range added above and below the bands


def within_noise_of_best(stats: pd.DataFrame) -> tuple[pd.Series, float]:
    """Which rows of a ``seed_stats`` table are within seed noise of the best mean, and the threshold.

    A row is marked when it has a completed run and the best mean exceeds its mean by no more than
    ``spread_vs_noise``'s threshold. With fewer than two seeds anywhere the threshold is NaN and no
    row is marked (the noise is unknown).
    """
    threshold = spread_vs_noise(stats)["threshold"]
    done = stats["n"] > 0
    if not math.isfinite(threshold) or not done.any():
        return pd.Series(False, index=stats.index), math.nan
    best = stats.loc[done, "mean"].max()
    return done & (best - stats["mean"] <= threshold), float(threshold)


def colour_limits(means: pd.Series, threshold: float) -> tuple[float, float]:
    """(vmin, vmax) of a heatmap of ``means``: their range, or best ± threshold when the means
    spread less than the threshold (a spread inside the noise gets a small share of the colours)."""
    means = means.dropna()
    low, high = float(means.min()), float(means.max())
    if math.isfinite(threshold) and high - low < threshold:
        return high - threshold, high + threshold
    return low, high


def noise_ylim(low: float, high: float, threshold: float) -> tuple[float, float] | None:
    """y-limits holding ``low``..``high`` (the bands and the points) at least ``threshold`` wide,
    plus ``Y_MARGIN`` each side; None (autoscale) when there is no range and no noise to show."""
    span = max(high - low, threshold if math.isfinite(threshold) else 0.0)
    if not math.isfinite(span) or span <= 0:
        return None
    centre = (low + high) / 2
    return centre - span / 2 - Y_MARGIN * span, centre + span / 2 + Y_MARGIN * span


def plot_heatmap(df: pd.DataFrame, index: str, columns: str, metric: str = "best_val_acc", ax=None):
    """Mean ± std of ``metric`` over seeds per (index, columns) cell, the cells within seed noise
    of the best outlined; cells where no run completed read 'diverged' or 'pruned'."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.patches import Patch, Rectangle

    stats = seed_stats(df, [index, columns], metric)
    near, threshold = within_noise_of_best(stats)
    values = stats.pivot(index=index, columns=columns, values="mean")
    labels = stats.assign(text=[format_stat(r, 3).replace(" ± ", "\n± ") for _, r in stats.iterrows()]) \
        .pivot(index=index, columns=columns, values="text")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.6 * len(values.columns) + 2, 0.9 * len(values.index) + 2))
    limits = colour_limits(stats["mean"], threshold) if stats["mean"].notna().any() else (None, None)
    sns.heatmap(values, annot=labels.loc[values.index, values.columns], fmt="", cmap="viridis", ax=ax,
                vmin=limits[0], vmax=limits[1], cbar_kws={"label": f"mean {metric}"}, annot_kws={"fontsize": 8})
    ax.set_facecolor("0.92")  # cells seaborn leaves empty (no completed run) ...
    rows, cols = list(values.index), list(values.columns)
    for _, cell in stats.iterrows():
        i, j = rows.index(cell[index]), cols.index(cell[columns])
        if pd.isna(cell["mean"]):  # ... say why they are empty
            label = labels.loc[cell[index], cell[columns]]
            ax.text(j + 0.5, i + 0.5, label, ha="center", va="center", fontsize=8,
                    color=PRUNED_COLOR if label.startswith(PRUNED_STATUS) else DIVERGED_COLOR)
    for cell in stats[near].to_dict("records"):
        i, j = rows.index(cell[index]), cols.index(cell[columns])
        ax.add_patch(Rectangle((j + 0.04, i + 0.04), 0.92, 0.92, fill=False, edgecolor=NEAR_BEST_COLOR, linewidth=2,
                               hatch="//", gid=NEAR_BEST_GID))
    if math.isfinite(threshold):
        key = Patch(facecolor="none", edgecolor=NEAR_BEST_COLOR, hatch="//",
                    label=f"within seed noise of the best (95% threshold {threshold:.3f})")
    else:
        key = Patch(facecolor="none", edgecolor="none", label="seed noise unknown (one seed): no cell marked")
    ax.legend(handles=[key], loc="upper left", bbox_to_anchor=(0, -0.2), fontsize="small", frameon=False)
    ax.set_xticklabels([format_grid_value(c) for c in values.columns])
    return ax


def plot_vs(df: pd.DataFrame, x: str, y: str = "best_val_acc", hue: str | None = None, ax=None,
            logx: bool = False):
    """``y`` against ``x``: seed runs as dots, each completed point's mean ± std over seeds (a line
    with a band along a numeric ``x``; a point with error bars at each value of a categorical ``x``,
    in grid order), pruned runs as grey ▽, diverged runs as red × at the bottom edge."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.patches import Patch

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    categorical = not pd.api.types.is_numeric_dtype(df[x])  # text or tuples: no order between values, no lines
    categories = list(dict.fromkeys(df[x]))  # grid order
    position = {v: i for i, v in enumerate(categories)}
    hues = sorted(df[hue].unique(), key=str) if hue else [None]
    palette = dict(zip(hues, sns.color_palette(n_colors=len(hues))))
    stats = seed_stats(df, [x, *([hue] if hue else [])], y)
    done = df[df["status"] == "completed"]
    shown = []  # every drawn y value and band edge: the y-range holds them all
    banded = False  # a band of some width was drawn: the legend explains it
    for k, value in enumerate(hues):
        part = stats[stats[hue] == value] if hue else stats
        part = part[part["n"] > 0]
        runs_ = done[done[hue] == value] if hue else done
        color = palette[value]
        label = f"{hue.split('.')[-1]}={format_grid_value(value)}" if hue else "mean ± std over seeds"
        spread = part["std"].fillna(0.0)
        shown += [*(part["mean"] - spread), *(part["mean"] + spread), *runs_[y]]
        if categorical:
            dodge = (k - (len(hues) - 1) / 2) * 0.15
            ax.errorbar([position[v] + dodge for v in part[x]], part["mean"], yerr=part["std"], fmt="o",
                        linestyle="none", capsize=4, color=color, label=label)
            ax.scatter([position[v] + dodge for v in runs_[x]], runs_[y], s=12, alpha=0.5, color=color)
        elif len(part):
            part = part.sort_values(x)
            ax.plot(part[x], part["mean"], "-o", color=color, label=label)
            ax.fill_between(part[x], part["mean"] - part["std"], part["mean"] + part["std"], color=color, alpha=0.2,
                            linewidth=0)
            if len(part) == 1:  # a band of one point has no width
                ax.errorbar(part[x], part["mean"], yerr=part["std"], fmt="none", capsize=4, color=color)
            banded |= len(part) > 1 and bool((part["n"] > 1).any())
            ax.scatter(runs_[x], runs_[y], s=12, alpha=0.5, color=color)
    as_x = (lambda values: [position[v] for v in values]) if categorical else (lambda values: list(values))
    pruned = df[df["status"] == PRUNED_STATUS]
    if len(pruned):
        shown += list(pruned[y].dropna())
        ax.scatter(as_x(pruned[x]), pruned[y], marker="v", s=36, facecolors="none", edgecolors=PRUNED_COLOR,
                   zorder=4, label=f"pruned ({len(pruned)})")
    shown = [v for v in shown if math.isfinite(v)]
    limits = noise_ylim(min(shown), max(shown), spread_vs_noise(stats)["threshold"]) if shown else None
    if limits:
        ax.set_ylim(*limits)
    bad = df[~df["status"].isin(["completed", PRUNED_STATUS])]
    if len(bad):
        bottom = ax.get_ylim()[0] if shown else 0.0
        ax.scatter(as_x(bad[x]), [bottom] * len(bad), marker="x", s=60, color=DIVERGED_COLOR, zorder=5,
                   clip_on=False, label=f"diverged / failed ({len(bad)})")
    if categorical:
        ax.set_xticks(range(len(categories)), [format_grid_value(v) for v in categories])
        ax.set_xlim(-0.5, len(categories) - 0.5)
    else:
        if logx:
            ax.set_xscale("log")
        ticks = sorted(df[x].unique())  # at the grid values, labelled as in run names (1e-05, 0.0003)
        ax.minorticks_off()
        ax.set_xticks(ticks, [format_grid_value(float(v)) if isinstance(v, float) else str(v) for v in ticks])
    ax.set_xlabel(x)
    ax.set_ylabel(f"{y} (mean ± std over seeds)")
    handles, _ = ax.get_legend_handles_labels()
    if banded:
        handles.append(Patch(facecolor="0.5", alpha=0.3, label="shaded: ± std over seeds"))
    ax.legend(handles=handles, fontsize="small")
    return ax
