"""Shared parts of the studies: the FER base config, the seed-noise verdict, best per group, the
sentence saying what a run swept."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from vqalab.studies.sections import fer_data_section
from vqalab.sweep import spread_vs_noise
from vqalab.sweep_points import format_grid_value

# Columns of a sweep's table shown after each sweep (after the grid keys).
RUN_COLUMNS = ["seed", "status", "best_val_acc", "best_epoch", "diverged_step", "reused"]


def fer_base_config(*, study: str, experiment: str, runs_root: str, model: str, depth: int, img_size: int,
                    backbone_depth: int, width: float, dataset: str, dataset_kwargs: dict, num_train: int,
                    num_val: int, face_options: dict, epochs: int, batch_size: int, lr: float, device: str,
                    amp: str, cpu_threads: int) -> dict:
    """The config every run of a FER study starts from; the sweeps vary one or two keys of it.

    The report passes the values per preset from ``params/fer_base.yaml``, which every FER study's
    params file extends; the notebooks' defaults are its quick preset.

    ``study``: the run name. ``cpu_threads`` 0 keeps torch's default. ``checkpoint_every`` is
    ``epochs``: only the last checkpoint of each run is kept on disk.
    """
    return {
        "experiment": experiment, "runs_root": runs_root, "name": study,
        "model": {"name": model, "depth": depth, "backbone_depth": backbone_depth,  # img_size: from the data
                  "width": width},
        "data": fer_data_section(dataset=dataset, dataset_kwargs=dataset_kwargs, img_size=img_size,
                                 num_train=num_train, num_val=num_val, face_options=face_options),
        "optim": {"lr": lr},
        "train": {"epochs": epochs, "batch_size": batch_size, "checkpoint_every": epochs, "device": device,
                  "amp": amp, "num_threads": cpu_threads or None, "progress": False},
    }


def with_values(base: dict, **sections: dict) -> dict:
    """``base`` with some keys of its sections replaced: ``with_values(base, optim={"lr": 1e-4})``."""
    return {**base, **{name: {**base.get(name, {}), **values} for name, values in sections.items()}}


def noise_verdict(exceeds: bool | None) -> str:
    """A difference against the seed noise in words, from the ``exceeds`` of ``gap_vs_noise`` or
    ``spread_vs_noise`` (None: fewer than two seeds, the noise is unknown)."""
    if exceeds is None:
        return "seed noise unknown (one seed)"
    return "beyond seed noise" if exceeds else "within seed noise"


def spread_sentence(name: str, stats: pd.DataFrame, key: str) -> tuple[str, dict]:
    """One sentence on the spread of the group means of ``stats`` (a ``seed_stats`` table over
    ``key``) against the seed noise, and the ``spread_vs_noise`` figures behind it."""
    s = spread_vs_noise(stats)
    done = stats[stats["n"] > 0]
    if not len(done):
        return f"{name}: every run diverged.", s
    best = done.loc[done["mean"].idxmax()]
    line = (f"{name} over {' | '.join(format_grid_value(v) for v in stats[key])}: mean best val_acc from "
            f"{done['mean'].min():.3f} to {done['mean'].max():.3f} (spread {s['spread']:.3f}, best at "
            f"{format_grid_value(best[key])})")
    if s["exceeds"] is None:
        return f"{line}: {noise_verdict(None)}, so no conclusion.", s
    noise = (f"95% threshold {s['threshold']:.3f} from a t-test on the seed noise: pooled std "
             f"{s['noise_std']:.3f}, {s['dof']} degrees of freedom")
    if s["exceeds"]:
        return f"{line}, above the {noise}: the metric depends on it {noise_verdict(True)}.", s
    return f"{line}, below the {noise}: {noise_verdict(False)}, no effect.", s


def best_per_group(stats: pd.DataFrame, group: str) -> pd.DataFrame:
    """The row of ``stats`` (a ``seed_stats`` table) with the highest mean in each ``group``,
    indexed by the group; groups where no run completed are left out."""
    done = stats[stats["n"] > 0]
    return done.loc[done.groupby(group)["mean"].idxmax()].set_index(group)


def diverged_sentence(df: pd.DataFrame) -> list[str]:
    """``["N runs diverged (…)."]`` for a sweep table with diverged runs, else ``[]``."""
    diverged = int((df["status"] == "diverged").sum())
    return [f"{diverged} runs diverged (shown as red ×, not in the means)."] if diverged else []


def format_value(value) -> str:
    """A grid value as prose: ``1e-08``, ``0.001``, ``(0.9, 0.999)``, ``ir_vit``."""
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(format_value(v) for v in value) + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)


def grid_values(df: pd.DataFrame, key: str) -> list:
    """The values of ``key`` in a sweep table, in grid order (first appearance), each once."""
    return list(dict.fromkeys(df[key]))


def swept_sentence(grid: dict[str, Sequence], seeds: Sequence[int], *, epochs: int | None = None,
                   note: str = "", points: int | None = None) -> str:
    """What a run of a study trained, from its parameters: ``grid`` maps a label to the values it
    took (``{"depth": [2, 4], "learning rate": [1e-3]}``), ``note`` follows the grid (e.g. what
    stays fixed); ``points``: how many points that makes, when not every combination (default).
    The lab notes' full grids are the gpu presets'; this says what ran here."""
    if points is None:
        points = math.prod(len(values) for values in grid.values())
    parts = [f"{label} over {', '.join(format_value(v) for v in values)}" for label, values in grid.items()]
    grids = " and ".join(parts) if len(parts) <= 2 else "; ".join(parts)  # values are comma-separated
    sentence = f"This run swept {grids}{f' ({note})' if note else ''}: {points} point(s)"
    sentence += f" × {len(seeds)} seed(s) ({', '.join(str(s) for s in seeds)})"
    if epochs is not None:
        sentence += f", {epochs} epoch(s) per run"
    if len(seeds) < 2:
        sentence += "; with one seed per point the seed noise is unknown, so no difference can be called beyond it"
    return sentence + "."
