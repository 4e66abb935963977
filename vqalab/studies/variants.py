"""Lab note 004's variant study: train cross-view transformer variants, mark where they diverged,
and tabulate IoU@0.50, parameters, FLOPs and latency with the IoU per millisecond.

A variant is a params file ``params/train/<name>.yaml`` (``cvt``, ``cvt_io_v1_1``, ``cvt_io_v2_1`` …);
the study keeps each file's model keywords and learning rate and replaces the sizes (model width,
map-view grid, data, steps) with its own, so that every variant runs at the same scale.

Divergence: a run the training loop stopped on a non-finite loss or gradient (status "diverged",
at its ``diverged_step``), or whose train or validation loss at an epoch end exceeded
``EXPLOSION_FACTOR`` × ln 2 — ten times the binary cross-entropy of predicting 0.5 everywhere,
i.e. confidently wrong on most cells (the lab note's "the loss suddenly shot up").
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import torch

from vqalab.bench import fixed_batch, flops_report, measure_latency
from vqalab.config import build_config
from vqalab.data import DataSplits, build_data
from vqalab.engine import build_model, select_device, to_device
from vqalab.memory import predict_memory, predicted_column
from vqalab.metrics import IOU_SWEEP_THRESHOLDS, iou_counts, iou_of_counts
from vqalab.params import merge, read_yaml
from vqalab.paths import resolve
from vqalab.plots import DIVERGED_COLOR
from vqalab.registry import ConfigError
from vqalab.runs import latest_checkpoint, model_from_checkpoint, safe_name
from vqalab.studies.common import swept_sentence
from vqalab.sweep import load_curves, sweep

log = logging.getLogger(__name__)

VARIANTS_DIR = "params/train"
EXPLOSION_FACTOR = 10.0
UNINFORMED_BCE = math.log(2)  # binary cross-entropy of p = 0.5 on every cell
LAB_BATCH_SIZE = 16  # the batch size of lab note 004's params files (params/train/cvt*.yaml)
PREDICTED_COLUMN = predicted_column(LAB_BATCH_SIZE)


def variant_config(name: str, overrides: dict, *, lr: float | None = None) -> dict:
    """The params tree of variant ``name`` (``params/train/<name>.yaml``) with ``overrides`` merged
    over it (sizes, data, steps); ``lr`` replaces the variant's learning rate when given."""
    path = resolve(VARIANTS_DIR) / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in resolve(VARIANTS_DIR).glob("cvt*.yaml"))
        raise ConfigError(f"variant '{name}': no params file {path} (variants: {', '.join(known)})")
    tree = merge(read_yaml(path), overrides)
    if lr is not None:
        tree = merge(tree, {"optim": {"lr": lr}})
    build_config(tree, source=str(path))  # every error before any training
    return tree


def variant_configs(names: Sequence[str], overrides: dict, *,
                    lr_overrides: dict[str, float] | None = None) -> dict[str, dict]:
    """Variant name → params tree (``variant_config``), all on one data set; errors before any work.

    lr_overrides: variant → learning rate replacing its params file's (e.g. an exploding one).
    """
    if not names:
        raise ConfigError("variants: expected at least one variant name")
    lr_overrides = dict(lr_overrides or {})
    unknown = set(lr_overrides) - set(names)
    if unknown:
        raise ConfigError(f"lr_overrides: {', '.join(sorted(unknown))} not among the variants {list(names)}")
    trees = {name: variant_config(name, overrides, lr=lr_overrides.get(name)) for name in names}
    datas = {name: build_config(tree).data for name, tree in trees.items()}
    first = datas[names[0]]
    for name, data in datas.items():
        if data != first:
            raise ConfigError(f"variant '{name}': data {data} differs from {first}: "
                              "the study compares the variants on one data set")
    return trees


def swept_text(*, variants: Sequence[str], lr_overrides: dict, seed: int, epochs: int) -> list[str]:
    """What this run trained: each variant once, with one seed, at its params file's learning rate
    unless ``lr_overrides`` replaces it."""
    replaced = ", ".join(f"{name} at lr {lr:g}" for name, lr in lr_overrides.items() if name in variants)
    note = f"learning rates from their params files, {replaced} instead" if replaced else \
        "learning rates from their params files"
    return [swept_sentence({"variant": list(variants)}, [seed], epochs=epochs, note=note)]


def study_data(configs: dict[str, dict]) -> DataSplits:
    """The data set every variant trains and is measured on (built once)."""
    cfg = build_config(next(iter(configs.values())))
    return build_data(cfg.data)


def train_variants(configs: dict[str, dict], data: DataSplits, *, seed: int = 0) -> pd.DataFrame:
    """Train (or reuse) one run per variant, all in one sweep (``sweep(configs=...)``: each variant a
    point, named ``<params file name>_s<seed>`` as a sweep names a seed's run); one row per variant:
    ``sweep``'s columns, ``variant``, ``lr``."""
    trees = [merge(tree, {"seed": seed, "name": safe_name(f"{tree.get('name', name)}_s{seed}")})
             for name, tree in configs.items()]
    return sweep(configs=trees, data=data).assign(variant=list(configs),
                                                  lr=[build_config(tree).optim.lr for tree in trees])


def divergence_step(run: pd.Series | dict, curve: pd.DataFrame | None) -> float:
    """The step where a run diverged or its loss exploded (see the module docstring); NaN if neither."""
    if run["status"] == "diverged" and not pd.isna(run.get("diverged_step")):
        return float(run["diverged_step"])
    if curve is not None and len(curve):
        limit = EXPLOSION_FACTOR * UNINFORMED_BCE
        blown = curve[(curve["train_loss"] > limit) | (curve["val_loss"] > limit)
                      | ~curve["train_loss"].map(math.isfinite) | ~curve["val_loss"].map(math.isfinite)]
        if len(blown):
            return float(blown["step"].iloc[0])
    return math.nan


def mark_divergence(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs with a ``diverged_at`` column, their stacked per-epoch curves with a ``variant`` column)."""
    curves = load_curves(runs, keys=["variant"])
    runs = runs.copy()
    runs["diverged_at"] = [divergence_step(run, curves[curves["variant"] == run["variant"]] if len(curves) else None)
                           for _, run in runs.iterrows()]
    return runs, curves


def plot_curves(runs: pd.DataFrame, curves: pd.DataFrame):
    """Train loss (log scale) and validation IoU@0.50 against the step, one line per variant; a red
    cross and a dotted line where a variant diverged — also for a run that diverged before its
    first epoch ended (no curve points)."""
    fig, (ax_loss, ax_iou) = plt.subplots(1, 2, figsize=(11, 4))
    colours = dict(zip(runs["variant"], plt.get_cmap("tab10").colors * 3))
    for _, run in runs.iterrows():
        curve = curves[curves["variant"] == run["variant"]] if len(curves) else pd.DataFrame()
        colour = colours[run["variant"]]
        if len(curve):
            ax_loss.plot(curve["step"], curve["train_loss"], marker="o", color=colour, label=run["variant"])
            ax_iou.plot(curve["step"], curve["val_acc"], marker="o", color=colour, label=run["variant"])
        if not math.isnan(run["diverged_at"]):
            for ax in (ax_loss, ax_iou):
                ax.axvline(run["diverged_at"], color=colour, linestyle=":")
            y = curve["train_loss"].iloc[-1] if len(curve) and math.isfinite(curve["train_loss"].iloc[-1]) else 1.0
            ax_loss.plot([run["diverged_at"]], [y], marker="X", markersize=12, color=DIVERGED_COLOR, linestyle="none",
                         label=f"{run['variant']} diverged (step {int(run['diverged_at'])})")
    ax_loss.set(yscale="log", xlabel="optimizer step", ylabel="train loss (BCE)", title="training loss")
    ax_iou.set(xlabel="optimizer step", ylabel="IoU@0.50", title="validation IoU@0.50", ylim=(0, None))
    ax_loss.legend(fontsize="small")
    fig.tight_layout()
    return fig


def cost_table(runs: pd.DataFrame, configs: dict[str, dict], data: DataSplits, *, latency_batch_size: int,
               device: str, warmup: int = 3, repeats: int = 10) -> pd.DataFrame:
    """Lab note 004's table: IoU@0.50 (best epoch), parameters, forward GFLOPs per sample (attention
    included) and inference latency (median ms at ``latency_batch_size`` on ``device``), with
    ``iou_per_ms``, and the CUDA training-step peak predicted at the lab's batch size
    (``PREDICTED_COLUMN``, ``memory.predict_memory``). Costs are measured on each variant's config,
    untrained (they do not depend on the weights)."""
    rows = []
    for _, run in runs.iterrows():
        cfg = build_config(merge(configs[run["variant"]], {"train": {"device": device}}))
        flops = flops_report(cfg, batch_size=1, data=data)
        dev = select_device(device)
        model = build_model(cfg, data, dev)
        batch = to_device(fixed_batch(data, latency_batch_size, cfg.seed), dev)
        latency = measure_latency(model, {k: batch[k] for k in data.input_keys}, dev, warmup=warmup, repeats=repeats)
        diverged = not math.isnan(run["diverged_at"])
        rows.append({"variant": run["variant"], "lr": run["lr"], "status": "diverged" if diverged else run["status"],
                     "diverged_at_step": run["diverged_at"], "iou@0.50": run["best_val_acc"],
                     "params_k": flops["params_total"] / 1e3, "gflops": flops["forward_gflops_per_sample"],
                     "latency_ms": latency["latency_ms"], "latency_batch_size": latency_batch_size,
                     PREDICTED_COLUMN: predict_memory(cfg, batch_size=LAB_BATCH_SIZE, data=data)["peak_mb"],
                     "device": str(dev)})
    table = pd.DataFrame(rows)
    table["iou_per_ms"] = table["iou@0.50"] / table["latency_ms"]
    return table


def iou_by_threshold(runs: pd.DataFrame, data: DataSplits,
                     thresholds: Sequence[float] = IOU_SWEEP_THRESHOLDS) -> pd.DataFrame:
    """Validation IoU of each run's last checkpoint at each threshold (rows: variants); NaN for a
    run without a checkpoint (diverged in its first epoch)."""
    rows = []
    for _, run in runs.iterrows():
        ckpt = latest_checkpoint(run["run_dir"]) if pd.notna(run["run_dir"]) else None  # failed: NaN
        values = {t: math.nan for t in thresholds}
        if ckpt is not None:
            model, _ = model_from_checkpoint(ckpt)
            batch = data.collate([data.val[i] for i in range(len(data.val))])
            with torch.no_grad():
                probs = torch.sigmoid(model.eval()(**{k: batch[k] for k in data.input_keys}))
            for t in thresholds:
                inter, union = iou_counts(probs, batch["mask"], t)
                values[t] = iou_of_counts(inter, union)
        rows.append({"variant": run["variant"], **{f"iou@{t:.2f}": v for t, v in values.items()}})
    return pd.DataFrame(rows).set_index("variant")


def best_per_ms(table: pd.DataFrame) -> dict | None:
    """The non-diverged variant with the highest IoU@0.50 per millisecond (None: every run diverged)."""
    ok = table[(table["status"] == "completed") & table["iou_per_ms"].notna()]
    if not len(ok):
        return None
    return ok.loc[ok["iou_per_ms"].idxmax()].to_dict()


def findings_text(table: pd.DataFrame, by_threshold: pd.DataFrame | None = None,
                  understated_by: float = 0.05) -> list[str]:
    """Sentences from the table: the best IoU per ms, the best IoU, the diverged variants and, given
    ``iou_by_threshold``, the completed variants whose IoU at another threshold beats IoU@0.50 by
    more than ``understated_by`` (probabilities not yet confident enough to cross 0.5)."""
    text = []
    best = best_per_ms(table)
    device, batch = table["device"].iloc[0], int(table["latency_batch_size"].iloc[0])
    if best is not None:
        text.append(f"Best IoU@0.50 per millisecond: {best['variant']} ({best['iou@0.50']:.3f} IoU at "
                    f"{best['latency_ms']:.2f} ms, batch {batch} on {device}: {best['iou_per_ms']:.4f} per ms).")
        ok = table[table["status"] == "completed"]
        top = ok.loc[ok["iou@0.50"].idxmax()]
        if top["variant"] != best["variant"]:
            text.append(f"Highest IoU@0.50: {top['variant']} ({top['iou@0.50']:.3f}) at {top['latency_ms']:.2f} ms.")
    else:
        text.append("Every variant diverged: no IoU per millisecond to compare.")
    diverged = table[table["status"] == "diverged"]
    for _, row in diverged.iterrows():
        text.append(f"{row['variant']} at lr {row['lr']:.3g} diverged at step {int(row['diverged_at_step'])}; "
                    f"its IoU is from before that and it is left out of the comparison.")
    if by_threshold is not None:
        for _, row in table[table["status"] == "completed"].iterrows():
            ious = by_threshold.loc[row["variant"]].dropna()
            if len(ious) and ious.max() > ious.get("iou@0.50", math.nan) + understated_by:
                text.append(f"IoU@0.50 understates {row['variant']}: {ious.max():.3f} at {ious.idxmax().replace('iou@', 'threshold ')} "
                            f"against {ious['iou@0.50']:.3f}; its probabilities have not yet learned to cross 0.5, "
                            "so train longer before ranking it.")
    return text
