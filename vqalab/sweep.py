"""Sweeps: an outer loop over single runs (timm's ``bulk_runner``), one ``fit`` per grid point.

``sweep(base, grid={"optim.lr": [...], "model.depth": [...]}, seeds=[0, 1])`` trains every
combination of the grid values (dotted params keys, as in ``--set``) for every seed and returns one
pandas DataFrame row per run. ``sweep(configs=[cfg, ...])`` trains explicit configs instead, each as
given (its own name and seed): runs that differ in whole sections, such as models that each read
their own input of a data set (``vqalab.studies.vqa_models``). A point that already finished (status ``completed`` or
``diverged``, found under ``runs_root/experiment``) is reused, not retrained, when three things
match: its config hash (weights files by content, the device by its type, inert keys left out:
``runs.config_hash``), the fingerprint of the code that trained it (the modules ``fit`` imports:
``vqalab.provenance.code_fingerprint``) and the identity of its data set (name, root, counts and
fingerprint of the files, ``vqalab.data.data_status``). An edit to that code or to the data
retrains, an edit to the report, the CLI or a study does not; re-running an unchanged report is cheap. ``reuse=False``, or the environment variable
``VQALAB_FRESH=1`` (set by ``vqalab report --fresh``), retrains everything. A diverged run is a
row with status ``diverged`` (step and LR recorded) and the sweep goes on; the helpers below show
it as diverged, never as a missing point.

``pruner="asha"`` (``"hyperband"``, ``"median"``: ``vqalab.pruning``) stops hopeless points after a
few epochs: such a row has status ``pruned`` and ``pruned_at_epoch``; the statistics below keep
pruned points out of means and winners (``vqalab.plots`` draws them apart).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from vqalab.data import DataSplits, build_data, data_status
from vqalab.monitor import write_hparams
from vqalab.notebook import RUN_LOG_ENV
from vqalab.params import RunConfig
from vqalab.provenance import code_fingerprint
from vqalab.pruning import SweepPruner, check_pruner
from vqalab.registry import ConfigError
from vqalab.results import metrics_table
from vqalab.runs import (
    FINISHED_STATUSES,
    METRICS_FILE,
    PRUNED_STATUS,
    DiskFullError,
    check_writable_folder,
    read_summary,
)
from vqalab.sweep_points import (
    config_points,
    expand_grid,
    finished_runs,
    fresh_requested,
    pruned_runs,
    reuse_key,
    sweep_row,
)
from vqalab.train import fit

log = logging.getLogger(__name__)



def sweep(base: RunConfig | dict | None = None, grid: dict[str, Sequence] | None = None, *,
          configs: Sequence[RunConfig | dict] | None = None, seeds: Sequence[int] | None = None,
          data: DataSplits | None = None, reuse: bool = True, workers: int = 1,
          storage: str | None = None, pruner: str | None = None) -> pd.DataFrame:
    """Train (or reuse) one run per grid point and seed; one DataFrame row per run.

    base, grid, seeds: as in ``expand_grid`` (seeds default to ``[0]``).
    configs: instead of base, grid and seeds: explicit configs, one point each, trained as given
        (``config_points``; the grid key is ``name``, the run name).
    data: loaded splits used by every point (they must match ``data`` of the configs); None: each
        distinct ``data`` spec is loaded once, and only if some point needs training.
    reuse: take a finished run with the same config, code fingerprint and data identity instead of
        training it again (False, or ``VQALAB_FRESH=1``: train every point).
    workers: points trained at once, each in its own process (one per GPU when the machine has that
        many, else one per CPU slot) through an Optuna study (``vqalab.sweep_queue``); 1: this loop,
        in this process.
    storage: Optuna storage URL of that study (e.g. ``postgresql://...``, so that ``vqalab sweep
        work`` on other machines can join); None: a journal file under the experiment's folder.
    pruner: ``asha``, ``hyperband`` or ``median`` (``vqalab.pruning``): points report ``val_acc``
        each epoch and the pruner stops hopeless ones; None: every point trains all its epochs.
        A pruned run is reused only by a sweep with the same pruner that would prune it again
        (in this process; with workers, the points running at once share the pruner through the
        study, and a pruned run trains again).

    Columns: the grid keys, ``seed``, ``status`` (completed / pruned / diverged / failed), the summary
    figures (``best_val_acc``, ``best_epoch``, ``pruned_at_epoch``, ``diverged_step``, ``diverged_lr``, …, ``finished``:
    when the run ended), ``reused``,
    ``run_dir``, ``config_hash``, ``error``. A run that raises (other than a config error) is a
    ``failed`` row and the sweep goes on. ``df.attrs["grid_keys"]`` lists the grid keys.
    """
    check_pruner(pruner)
    if configs is not None:
        if base is not None or grid is not None or seeds is not None:
            raise ConfigError("sweep(configs=...): each config is a whole point with its own seed; "
                              "leave base, grid and seeds out")
        if workers > 1 or storage is not None:
            raise ConfigError("sweep(configs=...) runs in this process: worker sweeps queue a base and a grid; "
                              "leave workers and storage out")
        points, grid_keys = config_points(configs), ["name"]
    else:
        if base is None or grid is None:
            raise ConfigError("sweep: expected a base config and a grid, or configs=[...]")
        seeds = (0,) if seeds is None else seeds
        if workers > 1 or storage is not None:
            if data is not None:
                raise ConfigError("sweep(data=...) with workers: each worker process loads its own data; "
                                  "leave data=None")
            from vqalab.sweep_queue import sweep_with_workers  # optuna loads only for worker sweeps

            return sweep_with_workers(base, grid, seeds=seeds, reuse=reuse, workers=workers, storage=storage,
                                      pruner=pruner)
        points, grid_keys = expand_grid(base, grid, seeds), list(grid)
    reuse = reuse and not fresh_requested()
    code = code_fingerprint()
    indexes: dict[tuple[str, str], dict[str, Path]] = {}
    data_fingerprints: dict[str, str] = {}
    loaded: dict[str, DataSplits] = {}
    pruning = SweepPruner(pruner, max(p.cfg.train.epochs for p in points)) if pruner else None
    pruned_indexes: dict[tuple[str, str], dict[str, Path]] = {}
    rows = []
    for n, point in enumerate(points, 1):
        cfg = point.cfg
        index = indexes.setdefault((cfg.runs_root, cfg.experiment),
                                   finished_runs(cfg.runs_root, cfg.experiment) if reuse else {})
        data_key = json.dumps(cfg.data, sort_keys=True, default=str)
        if reuse and data_key not in data_fingerprints:
            data_fingerprints[data_key] = data_status(cfg.data).fingerprint
        key = reuse_key(point.hash, code, data_fingerprints.get(data_key, ""))
        trial = pruning.trial() if pruning else None  # one trial per point, in grid order
        run_dir = index.get(key) if reuse else None
        if run_dir is None and reuse and pruning:
            pruned = pruned_indexes.setdefault((cfg.runs_root, cfg.experiment),
                                               pruned_runs(cfg.runs_root, cfg.experiment, pruner)).get(key)
            if pruned is not None and trial.replay(pruned) is not None:
                run_dir = pruned  # the pruner stops it again: training it would end the same way
            elif pruned is not None:
                log.info("sweep point %s: the pruner no longer stops %s (the sweep's history changed): "
                         "training it again", cfg.name, pruned)
        if run_dir is not None:
            log.info("sweep point %d/%d %s: reusing %s", n, len(points), cfg.name, run_dir)
            summary = read_summary(run_dir)
            if trial is not None:
                if summary["status"] != PRUNED_STATUS:  # a pruned run was replayed above
                    trial.replay(run_dir)
                trial.end(summary)
            rows.append(sweep_row(point, summary, run_dir, reused=True))
            continue
        log.info("sweep point %d/%d %s: training", n, len(points), cfg.name)
        try:
            point_data = data
            check_writable_folder(cfg.runs_root, "runs_root")  # before the data loads, as fit does
            if point_data is None:
                if data_key not in loaded:
                    loaded[data_key] = build_data(cfg.data)
                point_data = loaded[data_key]
            result = fit(cfg, data=point_data, on_epoch=trial.on_epoch if trial else None)
        except (ConfigError, DiskFullError):  # every later point would fail the same way
            raise
        except Exception as err:  # one broken point must not lose the others
            log.exception("sweep point %s failed", cfg.name)
            failed = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
            if trial is not None:
                trial.end(failed)
            rows.append(sweep_row(point, failed, None, False))
            continue
        if trial is not None:
            trial.end(result.summary)
        if result.summary["status"] in FINISHED_STATUSES:
            index[key] = result.run_dir
        if cfg.train.tensorboard:
            write_hparams(result.run_dir, {**point.values, "seed": point.seed}, result.summary)
        rows.append(sweep_row(point, result.summary, result.run_dir, reused=False))
    log_points(rows)
    df = pd.DataFrame(rows)
    df.attrs["grid_keys"] = grid_keys
    return df


def log_points(rows: list[dict]) -> None:
    """Append one JSON line per sweep point to the file named by ``$VQALAB_RUN_LOG`` (if set)."""
    path = os.environ.get(RUN_LOG_ENV)
    if not path:
        return
    # "logged" (UTC, as papermill's cell times): the report finds the cell whose sweep ran the point
    logged = dt.datetime.now(dt.timezone.utc).isoformat()
    with open(path, "a") as f:
        for row in rows:
            finished = row.get("finished")
            f.write(json.dumps({"run_dir": row["run_dir"], "status": row["status"], "reused": row["reused"],
                                "finished": finished if isinstance(finished, str) else None,
                                "logged": logged}) + "\n")


def load_curves(df: pd.DataFrame, keys: Sequence[str] | None = None) -> pd.DataFrame:
    """Every run's ``metrics.csv`` stacked: one row per run and epoch, with its grid values and seed.

    keys: grid columns to carry over (default ``df.attrs["grid_keys"]``).
    """
    keys = list(keys if keys is not None else df.attrs.get("grid_keys", []))
    frames = []
    for _, run in df.iterrows():
        if pd.isna(run["run_dir"]) or not (Path(run["run_dir"]) / METRICS_FILE).is_file():  # failed: NaN
            continue
        curve = metrics_table(run["run_dir"])
        for key in [*keys, "seed", "status"]:
            curve[key] = [run[key]] * len(curve)
        frames.append(curve)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def seed_stats(df: pd.DataFrame, by: Sequence[str], metric: str = "best_val_acc") -> pd.DataFrame:
    """Mean, std and count of ``metric`` over the seeds of each group, other runs counted apart.

    The mean and std are over the runs that completed; ``n_pruned`` / ``n_diverged`` / ``n_failed``
    say how many did not (a pruned run's accuracy is that of a shorter run: never in the mean), so a
    group whose every run diverged shows as diverged, not as a missing value.
    """
    by = list(by)
    out = []
    for values, group in df.groupby(by, sort=True, dropna=False):
        values = values if isinstance(values, tuple) else (values,)
        done = group.loc[group["status"] == "completed", metric].astype(float)
        out.append({**dict(zip(by, values)), "mean": done.mean(), "std": done.std(ddof=1) if len(done) > 1 else math.nan,
                    "n": len(done), "n_pruned": int((group["status"] == PRUNED_STATUS).sum()),
                    "n_diverged": int((group["status"] == "diverged").sum()),
                    "n_failed": int((group["status"] == "failed").sum()), "runs": len(group)})
    return pd.DataFrame(out)


def format_stat(row: pd.Series | dict, digits: int = 3) -> str:
    """``0.812 ± 0.013`` for a ``seed_stats`` row; ``diverged (3/3)`` when no run completed,
    ``0.790 (1/2 pruned)`` when some did not."""
    n, runs_ = int(row["n"]), int(row["runs"])
    n_pruned, n_diverged = int(row.get("n_pruned", 0)), int(row["n_diverged"])
    counts = {"pruned": n_pruned, "diverged": n_diverged, "failed": runs_ - n - n_pruned - n_diverged}
    others = {what: k for what, k in counts.items() if k > 0}
    if n == 0 and len(others) == 1:
        return f"{next(iter(others))} ({runs_}/{runs_})"
    parts = ", ".join(f"{k}/{runs_} {what}" for what, k in others.items())
    if n == 0:
        return parts
    text = f"{row['mean']:.{digits}f}"
    if n > 1:
        text += f" ± {row['std']:.{digits}f}"
    if parts:
        text += f" ({parts})"
    return text


# Two-sided 95% critical values of Student's t by degrees of freedom (any statistics table): with
# two or three seeds per point the normal 1.96 would call far too many differences real.
T_CRITICAL_95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
                 9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000}
Z_95 = 1.960  # beyond the table


def t_critical(dof: float) -> float:
    """Two-sided 95% critical value of t with ``dof`` degrees of freedom (table rows rounded down)."""
    if dof < 1:
        return math.nan
    rows = [d for d in T_CRITICAL_95 if d <= dof]
    return Z_95 if dof > max(T_CRITICAL_95) else T_CRITICAL_95[max(rows)]


def pooled_seed_std(stats: pd.DataFrame) -> tuple[float, int]:
    """Seed-to-seed standard deviation pooled over the groups of a ``seed_stats`` table, and its
    degrees of freedom (NaN, 0 when no group has two completed seeds)."""
    usable = stats[stats["n"] > 1]
    dof = int((usable["n"] - 1).sum())
    if dof == 0:
        return math.nan, 0
    return float(math.sqrt(((usable["n"] - 1) * usable["std"] ** 2).sum() / dof)), dof


def spread_vs_noise(stats: pd.DataFrame) -> dict:
    """Do the group means of a ``seed_stats`` table differ by more than seed noise explains?

    spread: best minus worst mean. noise_std: pooled seed std (``dof`` degrees of freedom).
    se_diff: standard error of the difference of two group means, noise_std × √(2/n) with n the
    typical number of seeds per group. threshold: t(95%, dof) × se_diff.
    exceeds: spread > threshold (None when the noise cannot be estimated: fewer than 2 seeds).
    """
    done = stats[stats["n"] > 0]
    spread = float(done["mean"].max() - done["mean"].min()) if len(done) else math.nan
    noise, dof = pooled_seed_std(stats)
    n = float(done["n"].median()) if len(done) else math.nan
    se_diff = noise * math.sqrt(2 / n) if dof and n > 0 else math.nan
    threshold = t_critical(dof) * se_diff if dof else math.nan
    exceeds = bool(spread > threshold) if math.isfinite(threshold) else None
    return {"spread": spread, "noise_std": noise, "dof": dof, "se_diff": se_diff, "threshold": threshold,
            "exceeds": exceeds}


def gap_vs_noise(a: Sequence[float], b: Sequence[float]) -> dict:
    """Mean of ``b`` minus mean of ``a``: a two-sample t-test at 95% (pooled variance).

    se: √(s²/n_a + s²/n_b) with s the pooled std; threshold: t(95%, n_a + n_b − 2) × se.
    exceeds: |gap| > threshold (None with fewer than 2 values on either side).
    """
    a, b = pd.Series(a, dtype=float).dropna(), pd.Series(b, dtype=float).dropna()
    gap = float(b.mean() - a.mean()) if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return {"gap": gap, "se": math.nan, "threshold": math.nan, "exceeds": None}
    dof = len(a) + len(b) - 2
    pooled = ((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / dof
    se = math.sqrt(pooled * (1 / len(a) + 1 / len(b)))
    threshold = t_critical(dof) * se
    return {"gap": gap, "se": se, "threshold": threshold, "exceeds": bool(abs(gap) > threshold)}
