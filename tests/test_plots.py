"""The sweep plots never paint seed noise as a difference: checked on hand-made sweep tables whose
means, stds and 95% thresholds are worked out here by hand."""

import math

import matplotlib
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from vqalab.plots import NEAR_BEST_GID, PRUNED_COLOR, plot_heatmap, plot_vs, within_noise_of_best
from vqalab.sweep import seed_stats

D = 0.01  # each completed cell's two seeds are mean ± D: std D·√2
T_95_DOF_4 = 2.776  # Student's t, two-sided 95%, 4 degrees of freedom (any statistics table)


def table(cells: dict, keys=("model.depth", "optim.lr")) -> pd.DataFrame:
    """A sweep table: ``cells`` maps grid values to a mean (two seeds at mean ± D), to "diverged"
    or "pruned" (two runs of that status; a pruned run reached 0.3)."""
    rows = []
    for values, mean in cells.items():
        values = values if isinstance(values, tuple) else (values,)
        for seed, offset in enumerate((-D, D)):
            status = mean if isinstance(mean, str) else "completed"
            acc = {"completed": None, "pruned": 0.3, "diverged": math.nan}[status]
            rows.append({**dict(zip(keys, values)), "seed": seed, "status": status,
                         "best_val_acc": mean + offset if acc is None else acc})
    return pd.DataFrame(rows)


# four completed cells of 2 seeds: pooled std D·√2 with 4 degrees of freedom; the difference of two
# means of 2 seeds has standard error std·√(2/2) = std, so the threshold is t(4) · D·√2
THRESHOLD = T_95_DOF_4 * D * math.sqrt(2)  # ≈ 0.039
GRID = {(2, 1e-3): 0.90, (2, 1e-4): 0.87, (4, 1e-3): 0.85, (4, 1e-4): 0.80, (8, 1e-3): "diverged"}


def marked_cells(ax) -> set:
    """(row, column) of the heatmap cells outlined as within noise of the best."""
    return {(int(p.get_y()), int(p.get_x())) for p in ax.patches if p.get_gid() == NEAR_BEST_GID}


def test_cells_within_noise_of_the_best_are_exactly_those_within_the_threshold():
    near, threshold = within_noise_of_best(seed_stats(table(GRID), ["model.depth", "optim.lr"]))
    assert threshold == pytest.approx(THRESHOLD)
    ax = plot_heatmap(table(GRID), index="model.depth", columns="optim.lr")
    # rows: depths 2, 4, 8; columns: lr 1e-4, 1e-3. 0.90 is the best, 0.87 is 0.03 below (within 0.039),
    # 0.85 is 0.05 below (beyond), the diverged cell has no mean
    assert marked_cells(ax) == {(0, 1), (0, 0)}
    assert int(near.sum()) == 2
    assert ax.collections[0].get_clim() == pytest.approx((0.80, 0.90))  # a spread beyond the noise: its own range
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"within seed noise of the best (95% threshold {THRESHOLD:.3f})"]
    plt.close("all")


def test_a_spread_inside_the_noise_gets_a_colour_range_of_at_least_best_plus_minus_the_threshold():
    # lab note 002's complaint: 0.948-0.950 drawn from purple to yellow
    cells = {(2, 1e-3): 0.950, (2, 1e-4): 0.949, (4, 1e-3): 0.948, (4, 1e-4): 0.949}
    ax = plot_heatmap(table(cells), index="model.depth", columns="optim.lr")
    vmin, vmax = ax.collections[0].get_clim()
    assert (vmin, vmax) == pytest.approx((0.950 - THRESHOLD, 0.950 + THRESHOLD))
    assert vmax - vmin >= THRESHOLD
    assert len(marked_cells(ax)) == 4  # every cell is within noise of the best
    plt.close("all")


def test_with_one_seed_no_cell_is_marked_and_the_legend_says_why():
    one_seed = table(GRID)
    one_seed = one_seed[one_seed["seed"] == 0]
    ax = plot_heatmap(one_seed, index="model.depth", columns="optim.lr")
    assert marked_cells(ax) == set()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["seed noise unknown (one seed): no cell marked"]
    assert "diverged (1/1)" in [t.get_text() for t in ax.texts]
    plt.close("all")


def test_a_categorical_axis_gets_points_with_error_bars_and_no_connecting_line():
    df = table({"0.9 / 0.999": 0.90, "0.8 / 0.99": 0.91, "0.95 / 0.999": "pruned"}, keys=("betas",))
    ax = plot_vs(df, x="betas")
    assert ax.lines, "the means are drawn"
    assert all(line.get_linestyle() == "None" for line in ax.lines)  # markers and caps only
    means = [line for line in ax.lines if line.get_marker() == "o"]
    assert len(means) == 1
    points = sorted(zip(means[0].get_xdata(), means[0].get_ydata()))
    assert points == [(0, pytest.approx(0.90)), (1, pytest.approx(0.91))]  # each value at its place in grid order
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.9 / 0.999", "0.8 / 0.99", "0.95 / 0.999"]
    pruned = [c for c in ax.collections if str(c.get_label()).startswith("pruned")]
    assert len(pruned) == 1 and pruned[0].get_offsets()[:, 0].tolist() == [2, 2]  # both runs, at their value
    assert pruned[0].get_edgecolor()[0][:3] == pytest.approx(matplotlib.colors.to_rgb(PRUNED_COLOR))
    plt.close("all")


def test_a_numeric_axis_gets_a_seed_band_and_a_y_range_no_narrower_than_the_bands_and_the_threshold():
    # two learning rates at two depths, means 0.002 apart: a difference far inside the noise
    cells = {(2, 1e-4): 0.948, (2, 1e-3): 0.950, (4, 1e-4): 0.949, (4, 1e-3): 0.949, (8, 1e-3): "pruned"}
    ax = plot_vs(table(cells), x="optim.lr", hue="model.depth", logx=True)
    bands = [c for c in ax.collections if isinstance(c, matplotlib.collections.PolyCollection)]
    assert len(bands) == 2  # depths 2 and 4; the pruned depth 8 has no completed run: no band, no line
    std = D * math.sqrt(2)
    low, high = bands[0].get_paths()[0].vertices[:, 1].min(), bands[0].get_paths()[0].vertices[:, 1].max()
    assert (low, high) == pytest.approx((0.948 - std, 0.950 + std))
    y0, y1 = ax.get_ylim()
    assert y0 < 0.948 - std and y1 > 0.950 + std  # the bands with a margin
    assert y1 - y0 >= THRESHOLD
    assert not any(line.get_ydata().tolist() == [0.3, 0.3] for line in ax.lines)  # pruned runs: not in a line
    assert "shaded: ± std over seeds" in [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close("all")


def test_diverged_runs_are_red_crosses_at_the_bottom_edge():
    ax = plot_vs(table({1e-3: 0.9, 1e-2: "diverged"}, keys=("optim.lr",)), x="optim.lr", logx=True)
    crosses = [c for c in ax.collections if str(c.get_label()).startswith("diverged")]
    assert len(crosses) == 1 and crosses[0].get_offsets()[:, 1].tolist() == [ax.get_ylim()[0]] * 2
    plt.close("all")
