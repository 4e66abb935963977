"""Adam ε and (β1, β2) against seed noise (lab note 002 checked them lightly before long runs)."""

from __future__ import annotations

import pandas as pd

from vqalab.studies.common import diverged_sentence, grid_values, spread_sentence, swept_sentence
from vqalab.sweep import format_stat, seed_stats, sweep


def run_grids(base: dict, *, eps_values: list, betas_values: list, seeds: list) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One sweep over Adam ε, one over (β1, β2) (each with the other at its default); the β table
    gets a ``betas`` label column (``0.9 / 0.999``)."""
    eps_df = sweep(base, {"optim.eps": eps_values}, seeds=seeds)
    betas_df = sweep(base, {"optim.betas": betas_values}, seeds=seeds)
    betas_df["betas"] = [f"{b1:g} / {b2:g}" for b1, b2 in betas_df["optim.betas"]]
    return eps_df, betas_df


def swept_text(*, eps_values: list, betas_values: list, seeds: list) -> list[str]:
    """What this run swept: the ε grid and the (β1, β2) grid, each with the other at its default."""
    return [swept_sentence({"Adam ε": eps_values}, seeds, note="β1, β2 at their defaults"),
            swept_sentence({"(β1, β2)": betas_values}, seeds, note="ε at its default")]


def summary_table(eps_df: pd.DataFrame, betas_df: pd.DataFrame) -> pd.DataFrame:
    """Per value of each grid: parameter, value, best val_acc (mean ± std), n, n_diverged."""
    eps_stats = seed_stats(eps_df, ["optim.eps"])
    betas_stats = seed_stats(betas_df, ["betas"])
    summary = pd.concat([
        eps_stats.assign(parameter="ε", value=[f"{v:g}" for v in eps_stats["optim.eps"]]),
        betas_stats.assign(parameter="β1 / β2", value=betas_stats["betas"]),
    ], ignore_index=True)
    summary["best val_acc"] = [format_stat(r) for _, r in summary.iterrows()]
    return summary[["parameter", "value", "best val_acc", "n", "n_diverged"]]


def findings_of(eps_df: pd.DataFrame, betas_df: pd.DataFrame) -> tuple[dict, list[str]]:
    """Headline figures (spreads of the two grids, seed noise) and sentences, the first two saying
    what the run swept."""
    eps_text, eps_s = spread_sentence("Adam ε", seed_stats(eps_df, ["optim.eps"]), "optim.eps")
    betas_text, betas_s = spread_sentence("β1 / β2", seed_stats(betas_df, ["betas"]), "betas")
    swept = swept_text(eps_values=grid_values(eps_df, "optim.eps"), betas_values=grid_values(betas_df, "optim.betas"),
                       seeds=grid_values(eps_df, "seed"))
    text = [*swept, eps_text, betas_text, *diverged_sentence(pd.concat([eps_df, betas_df], ignore_index=True))]
    headline = {"eps spread": eps_s["spread"], "betas spread": betas_s["spread"], "seed noise std": eps_s["noise_std"]}
    return headline, text
