"""CLS blocks against the ViT baseline across learning rates × seeds, with an efficiency table
(lab note 002's main comparison; the winner in bold only when its lead is beyond seed noise)."""

from __future__ import annotations

import math

import pandas as pd

from vqalab.bench import efficiency_table
from vqalab.config import build_config
from vqalab.data import build_data
from vqalab.memory import predict_memory, predicted_column
from vqalab.studies.common import (
    best_per_group,
    diverged_sentence,
    grid_values,
    noise_verdict,
    swept_sentence,
    with_values,
)
from vqalab.sweep import format_stat, gap_vs_noise, seed_stats

LAB_BATCH_SIZE = 256  # lab note 002's efficiency table: peak CUDA memory at batch 256
PREDICTED_COLUMN = predicted_column(LAB_BATCH_SIZE)
EFFICIENCY_COLUMNS = ["name", "params_m", "forward_gflops_per_sample", "train_gflops_per_sample", "latency_ms",
                      "samples_per_s", "peak_memory_mb", "memory_kind", PREDICTED_COLUMN, "device", "status"]
EFFICIENCY_FORMAT = {"params_m": "{:.3f}", "forward_gflops_per_sample": "{:.4f}", "train_gflops_per_sample": "{:.4f}",
                     "latency_ms": "{:.2f}", "samples_per_s": "{:.1f}", "peak_memory_mb": "{:.0f}",
                     PREDICTED_COLUMN: "{:.0f}"}


def gap_column(models: list) -> str:
    return f"gap ({models[1]} − {models[0]})"


def winner_table(df: pd.DataFrame, models: list) -> pd.DataFrame:
    """Per learning rate: each model's best val_acc (mean ± std), the winner, the gap of the
    second model over the first, its 95% threshold and the seed-noise verdict."""
    rows = []
    for lr, group in df.groupby("optim.lr"):
        row = {"learning rate": f"{lr:.2g}"}
        means = {}
        for m in models:
            stat = seed_stats(group[group["model.name"] == m], ["model.name"]).iloc[0]
            row[m] = format_stat(stat)
            means[m] = stat["mean"]
        completed = {m: v for m, v in means.items() if not math.isnan(v)}  # NaN: no run completed
        row["winner"] = max(completed, key=completed.get) if completed else "–"
        cmp = gap_vs_noise(*(group[(group["model.name"] == m) & (group["status"] == "completed")]["best_val_acc"]
                            for m in models[:2]))
        row[gap_column(models)] = cmp["gap"]
        row["95% threshold"] = cmp["threshold"]
        row["seed noise"] = noise_verdict(cmp["exceeds"])
        rows.append(row)
    return pd.DataFrame(rows)


def swept_text(*, models: list, lrs: list, seeds: list) -> list[str]:
    """What this run compared: the models at each learning rate."""
    note = "at one learning rate only: a ranking that may not hold at another" if len(lrs) == 1 else ""
    return [swept_sentence({"model": models, "learning rate": lrs}, seeds, note=note)]


def style_winner_table(table: pd.DataFrame, models: list):
    """``table`` for display, a row's winner in bold only when its lead is beyond seed noise (the
    row's t-test): a lead inside the noise, or with the noise unknown, is not a win to show."""
    def bold_winner(row):
        beyond = row["seed noise"] == noise_verdict(True)
        return ["font-weight: bold" if beyond and col == row["winner"] else "" for col in row.index]

    return (table.style.apply(bold_winner, axis=1).hide(axis="index")
            .format({gap_column(models): "{:+.3f}", "95% threshold": "{:.3f}"}, na_rep="–"))


def efficiency(base: dict, models: list, *, batch_size: int, timed_steps: int) -> pd.DataFrame:
    """``bench.efficiency_table`` of each model built from ``base`` (with the runs' threads), and
    beside the peak memory measured on this device the CUDA peak predicted at the lab's batch size
    (``PREDICTED_COLUMN``, ``memory.predict_memory``) at the runs' precision."""
    configs = {m: build_config(with_values(base, model={"name": m})) for m in models}
    # FLOPs counted on 2 samples: BatchNorm in training mode needs more than one value per channel.
    table = efficiency_table(configs, batch_size=batch_size, flops_batch_size=2, warmup_steps=2,
                             timed_steps=timed_steps)
    data = build_data(configs[models[0]].data)  # both models train on the base's data
    table[PREDICTED_COLUMN] = [predict_memory(configs[name], batch_size=LAB_BATCH_SIZE, data=data)["peak_mb"]
                               for name in table["name"]]
    return table


def findings_of(df: pd.DataFrame, table: pd.DataFrame, eff: pd.DataFrame, *, models: list,
                bench_batch_size: int) -> tuple[dict, list[str]]:
    """What the run compared, wins per model, gaps beyond seed noise, best overall, the efficiency ratios; headline:
    each model's best val_acc and the second model's wins."""
    gap_col = gap_column(models)
    wins = table["winner"].value_counts().to_dict()
    lrs, seeds = df["optim.lr"].nunique(), df["seed"].nunique()
    text = swept_text(models=grid_values(df, "model.name"), lrs=grid_values(df, "optim.lr"), seeds=grid_values(df, "seed"))
    text += [f"Across {lrs} learning rates × {seeds} seeds: " + ", ".join(
        f"{m} wins at {wins.get(m, 0)}" for m in models) + "."]
    beyond = table[table["seed noise"] == noise_verdict(True)]
    if len(beyond):
        text.append("Gaps beyond seed noise (t-test, 95%) at learning rate(s) " + ", ".join(
            f"{r['learning rate']} ({r[gap_col]:+.3f})" for _, r in beyond.iterrows()) + ".")
    elif (table["seed noise"] == noise_verdict(False)).any():
        text.append("No gap exceeds the 95% threshold of the seed noise (t-test): the two models tie on this data.")
    else:
        text.append("One seed per point: the seed noise is unknown, so no gap can be called beyond it.")
    stats = seed_stats(df, ["model.name", "optim.lr"])
    best = best_per_group(stats, "model.name")
    if len(best):
        top = best.loc[best["mean"].idxmax()]
        text.append(f"Best overall: {top.name} at learning rate {top['optim.lr']:.2g} ({format_stat(top)}).")
    e = eff.set_index("name")
    if {models[0], models[1]} <= set(e.index) and (e["status"] == "ok").all():
        base, other = e.loc[models[0]], e.loc[models[1]]
        text.append(f"{models[1]} vs {models[0]}: throughput ×{other['samples_per_s'] / base['samples_per_s']:.2f}, "
                    f"forward FLOPs ×{other['forward_gflops_per_sample'] / base['forward_gflops_per_sample']:.2f}, "
                    f"parameters ×{other['params_m'] / base['params_m']:.3f} "
                    f"(measured on {base['device']}, batch {bench_batch_size}).")
    text += diverged_sentence(df)
    headline = {f"{m} best val_acc": float(best["mean"].get(m, float("nan"))) for m in models}
    headline[f"{models[1]} wins"] = int(wins.get(models[1], 0))
    return headline, text
