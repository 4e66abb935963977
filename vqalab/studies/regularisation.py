"""Weight decay, LR schedule, mixup α and attention dropout, one factor at a time around a baseline
(lab note 002 tried weight decay and schedules, and left mixup and attention dropout open)."""

from __future__ import annotations

import math

import pandas as pd

from vqalab.studies.common import (
    diverged_sentence,
    grid_values,
    noise_verdict,
    swept_sentence,
    with_values,
)
from vqalab.sweep import format_stat, gap_vs_noise, seed_stats, sweep
from vqalab.sweep_points import format_grid_value


def regularisation_base(base: dict, *, optimizer: str, weight_decays: list, schedules: list, step_epochs: int,
                        mixup_alphas: list, attn_drops: list) -> dict:
    """The FER base config at the baseline of every factor (the first value of each list)."""
    out = with_values(base, model={"attn_drop": attn_drops[0]},
                      optim={"name": optimizer, "weight_decay": weight_decays[0]},
                      train={"mixup_alpha": mixup_alphas[0]})
    out["schedule"] = {"name": schedules[0]}
    if "step" in schedules:  # set only when used: the other points then match the other studies' runs
        out["schedule"]["step_size"] = step_epochs
    return out


def factors_of(*, weight_decays: list, schedules: list, mixup_alphas: list, attn_drops: list) -> dict:
    """Label → (params key, values); the first value of each is the baseline."""
    return {
        "weight decay": ("optim.weight_decay", weight_decays),
        "LR schedule": ("schedule.name", schedules),
        "mixup α": ("train.mixup_alpha", mixup_alphas),
        "attention dropout": ("model.attn_drop", attn_drops),
    }


def swept_text(factors: dict, *, seeds: list) -> list[str]:
    """What this run swept: each factor's values (``factors_of``), one factor at a time."""
    grid = {label: values for label, (_, values) in factors.items()}
    # one sweep per factor: a factor's baseline is the point every sweep shares
    points = sum(len(values) - 1 for values in grid.values()) + 1
    return [swept_sentence(grid, seeds, note="one at a time, the others at their first value", points=points)]


def run_factors(base: dict, factors: dict, *, seeds: list) -> pd.DataFrame:
    """One sweep per factor, the others at the baseline; columns factor, value (text), baseline."""
    parts = []
    for label, (key, values) in factors.items():
        part = sweep(base, {key: values}, seeds=seeds)
        parts.append(part.assign(factor=label, value=[format_grid_value(v) for v in part[key]],
                                 baseline=[v == values[0] for v in part[key]]))
    return pd.concat(parts, ignore_index=True)


def against_baseline(df: pd.DataFrame, factors: dict) -> pd.DataFrame:
    """Per factor and value: best val_acc, mean, gap to the baseline and its seed-noise verdict."""
    rows = []
    for label, (_, values) in factors.items():
        part = df[df["factor"] == label]
        base_runs = part[part["baseline"] & (part["status"] == "completed")]["best_val_acc"]
        for value in [format_grid_value(v) for v in values]:
            runs_v = part[part["value"] == value]
            stat = seed_stats(runs_v, ["value"]).iloc[0]
            cmp = gap_vs_noise(base_runs, runs_v[runs_v["status"] == "completed"]["best_val_acc"])
            rows.append({"factor": label, "value": value, "best val_acc": format_stat(stat), "mean": stat["mean"],
                         "vs baseline": cmp["gap"], "95% threshold": cmp["threshold"],
                         "seed noise": noise_verdict(cmp["exceeds"]), "diverged": int(stat["n_diverged"])})
    return pd.DataFrame(rows)


def findings_of(df: pd.DataFrame, table: pd.DataFrame) -> tuple[dict, list[str]]:
    """What the run swept, per factor the best change against the baseline (headline: its gain).

    ``table``: ``against_baseline``, its first row per factor the baseline.
    """
    factors = {label: (None, grid_values(df[df["factor"] == label], "value")) for label in grid_values(df, "factor")}
    text, headline = swept_text(factors, seeds=grid_values(df, "seed")), {}
    for label in dict.fromkeys(table["factor"]):
        t = table[table["factor"] == label]
        others = t.iloc[1:].dropna(subset=["mean"])
        if math.isnan(t.iloc[0]["mean"]):  # the baseline did not complete
            text.append(f"{label}: the baseline run did not complete ({t.iloc[0]['best val_acc']}).")
            continue
        if not len(others):
            text.append(f"{label}: no other value completed.")
            continue
        best = others.loc[others["vs baseline"].idxmax()]
        if best["vs baseline"] > 0:
            text.append(f"{label}: the best change is {best['value']} instead of {t.iloc[0]['value']}, "
                        f"{best['vs baseline']:+.3f} best val_acc ({best['seed noise']}).")
        else:
            text.append(f"{label}: no value beats the baseline {t.iloc[0]['value']}; the closest, {best['value']}, "
                        f"is {best['vs baseline']:+.3f} best val_acc ({best['seed noise']}).")
        headline[f"{label} best gain"] = float(best["vs baseline"])
    return headline, text + diverged_sentence(df)
