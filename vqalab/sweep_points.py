"""Sweep points, shared by both executors of a sweep (``sweep.sweep`` in this process and
``sweep_queue`` over worker processes): a grid × seeds expanded into validated configs
(``expand_grid``) or explicit configs taken as they are (``config_points``), the finished run that stands for a point (``finished_runs``, ``find_finished``:
config hash, code fingerprint and data identity must match), and a point's row of the sweep table
(``sweep_row``).
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqalab import runs
from vqalab.config import build_config
from vqalab.data import data_status
from vqalab.notebook import FRESH_ENV
from vqalab.params import RunConfig, set_dotted
from vqalab.paths import resolve
from vqalab.provenance import code_fingerprint
from vqalab.registry import ConfigError, short_repr
from vqalab.runs import FINISHED_STATUSES, PRUNED_STATUS, config_hash

# Figures copied from each run's summary.json into its row (missing ones are NaN / None).
SUMMARY_COLUMNS = ("best_val_acc", "best_epoch", "final_val_acc", "best_val_loss", "epochs", "steps",
                   "diverged_step", "diverged_epoch", "diverged_lr", "pruned_at_epoch", "wall_time_s", "params",
                   "finished")


@dataclass
class SweepPoint:
    """One run of a sweep: its grid values, seed, resolved config and config hash."""

    values: dict[str, Any]
    seed: int
    cfg: RunConfig
    hash: str


def format_grid_value(value: Any) -> str:
    """Short text of a grid value for run names and labels (``1e-05``, ``4``, ``0.9-0.99``)."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "-".join(format_grid_value(v) for v in value)
    return str(value)


def _hashable(value: Any) -> Any:
    """Grid values become DataFrame cells that groupby can use: lists → tuples."""
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


def expand_grid(base: RunConfig | dict, grid: dict[str, Sequence], seeds: Sequence[int] = (0,)) -> list[SweepPoint]:
    """Every grid combination × seed as a validated config; all errors raise before any training.

    base: the config every point starts from (a RunConfig or a partial params tree).
    grid: dotted params key → list of values, e.g. ``{"optim.lr": [1e-4, 1e-3], "model.depth": [2, 4]}``.
        Keys vary in the given order, the last fastest. Setting ``model.name`` keeps the other model
        keys (two models with the same keywords are compared at the same settings).
    seeds: one run per seed at every point.
    """
    base_tree = base.to_dict() if isinstance(base, RunConfig) else copy.deepcopy(dict(base or {}))
    if not isinstance(grid, dict):
        raise ConfigError(f"sweep grid: expected a mapping of dotted keys to lists, got {type(grid).__name__}")
    for key, values in grid.items():
        if key == "seed":
            raise ConfigError("sweep grid: 'seed' is not a grid key: pass seeds=[...]")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ConfigError(f"sweep grid: {key} = {short_repr(values)}: expected a non-empty list of values")
        refuse_repeats(f"sweep grid: {key}", values)
    seeds = list(seeds)
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"sweep seeds = {short_repr(seeds)}: expected a non-empty list of integers ≥ 0")
    refuse_repeats("sweep seeds", seeds)
    base_name = base_tree.get("name", "run")
    points = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        for seed in seeds:
            label = "_".join(f"{k.split('.')[-1]}={format_grid_value(v)}" for k, v in values.items())
            tree = copy.deepcopy(base_tree)
            for key, value in values.items():
                set_dotted(tree, key, copy.deepcopy(value))
            tree["seed"] = seed
            tree["name"] = runs.safe_name(f"{base_name}-{label}_s{seed}" if label else f"{base_name}_s{seed}")
            cfg = build_config(tree, source=f"sweep point {label or '(base)'} seed {seed}")
            points.append(SweepPoint(values={k: _hashable(v) for k, v in values.items()}, seed=seed,
                                     cfg=cfg, hash=config_hash(cfg)))
    return points


def config_points(configs: Sequence[RunConfig | dict]) -> list[SweepPoint]:
    """Explicit configs as sweep points, each trained as given (its own name and seed); all errors
    raise before any training.

    For runs that differ in whole sections (a model with its own data input), which no grid of
    values over one base expresses. A point's value is its run name (``{"name": cfg.name}``): the
    column of the sweep table and the HParams entry that tell the points apart.
    """
    if isinstance(configs, (str, bytes, dict)) or not isinstance(configs, Sequence) or len(configs) == 0:
        raise ConfigError(f"sweep configs = {short_repr(configs)}: expected a non-empty list of configs")
    points = []
    for n, cfg in enumerate(configs, 1):
        if isinstance(cfg, dict):
            cfg = build_config(copy.deepcopy(cfg), source=f"sweep config {n}")
        elif not isinstance(cfg, RunConfig):
            raise ConfigError(f"sweep config {n}: expected a RunConfig or a params tree, got {type(cfg).__name__}")
        points.append(SweepPoint(values={"name": cfg.name}, seed=cfg.seed, cfg=cfg, hash=config_hash(cfg)))
    refuse_repeats("sweep configs: run name", [p.cfg.name for p in points])
    return points


def refuse_repeats(where: str, values: Sequence) -> None:
    """A value listed twice would train (or show) the same point twice: refused, naming it."""
    seen: list = []
    for value in values:
        value = _hashable(value)
        if value in seen:  # equality, so 1 and 1.0 (the same learning rate) are one value
            raise ConfigError(f"{where} lists {short_repr(value)} twice: keep one")
        seen.append(value)


def reuse_key(config_hash: str, code: str, data_fingerprint: str) -> str:
    """What must match for a finished run to stand for a sweep point."""
    return f"{config_hash}/{code}/{data_fingerprint}"


def finished_runs(runs_root: str | Path, experiment: str) -> dict[str, Path]:
    """Reuse key → folder of the latest finished (completed or diverged) run of an experiment.

    Runs recorded without a code fingerprint or data identity (older runs) are never reused.
    """
    return _runs_by_key(runs_root, experiment, lambda summary: summary.get("status") in FINISHED_STATUSES)


def pruned_runs(runs_root: str | Path, experiment: str, pruner: str) -> dict[str, Path]:
    """Reuse key → folder of the latest run of an experiment that ``pruner`` stopped (``pruned``)."""
    return _runs_by_key(runs_root, experiment, lambda summary: summary.get("status") == PRUNED_STATUS
                        and summary.get("pruned_by") == pruner)


def _runs_by_key(runs_root: str | Path, experiment: str, wanted) -> dict[str, Path]:
    folder = resolve(runs_root) / runs.safe_name(experiment)
    found: dict[str, Path] = {}
    for summary_file in sorted(folder.glob(f"*/{runs.SUMMARY_FILE}")):  # folder names sort by start time
        try:
            summary = runs.read_summary(summary_file.parent)
        except (OSError, ConfigError):  # removed or damaged: not a run to reuse
            continue
        identity = summary.get("data_identity") or {}
        if wanted(summary) and summary.get("config_hash") and \
                summary.get("code_fingerprint") and identity.get("fingerprint"):
            key = reuse_key(summary["config_hash"], summary["code_fingerprint"], identity["fingerprint"])
            found[key] = summary_file.parent
    return found


def fresh_requested() -> bool:
    return os.environ.get(FRESH_ENV, "") not in ("", "0")


def find_finished(point: SweepPoint, index: dict[str, Path], *, code: str | None = None,
                  data_fingerprint: str | None = None) -> Path | None:
    """The finished run that stands for ``point`` in a ``finished_runs`` index, or None.

    code, data_fingerprint: the current code fingerprint and the fingerprint of the point's data
    set, when the caller has them already (a sweep computes each once); else computed here.
    """
    if data_fingerprint is None:
        data_fingerprint = data_status(point.cfg.data).fingerprint
    return index.get(reuse_key(point.hash, code or code_fingerprint(), data_fingerprint))


def sweep_row(point: SweepPoint, summary: dict, run_dir: Path | None, reused: bool) -> dict:
    """One row of a sweep table: the point's grid values and seed, then its run's summary figures."""
    row = {**point.values, "seed": point.seed, "status": summary.get("status", "failed")}
    for key in SUMMARY_COLUMNS:
        value = summary.get(key)
        row[key] = math.nan if value is None else value
    row.update(reused=reused, run_dir=str(run_dir) if run_dir else None, config_hash=point.hash,
               error=summary.get("error"))
    return row
