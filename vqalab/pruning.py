"""Successive halving for sweeps: Optuna's pruners stop hopeless points after a few epochs.

A sweep given ``pruner="asha"`` (``"hyperband"``, ``"median"``) keeps one Optuna study in memory;
each point, in grid order, is one trial. ``fit`` calls ``PointTrial.on_epoch`` after each epoch:
the trial reports ``val_acc`` at that epoch and asks the pruner; a pruned point stops there and
its run ends ``pruned`` (``pruned_by``, ``pruned_at_epoch`` in ``summary.json``).

Reuse: every point's trial is rebuilt from the runs a sweep reuses (their ``metrics.csv`` reported
epoch by epoch, in grid order), so the pruner judges a newly trained point against the same
history as a sweep that trained them all. A pruned run is reused by a sweep with the same pruner
(and config, code and data) when the pruner, given that history, prunes it again within the
epochs it trained; otherwise (the history changed: another grid, retrained points) it is trained
again. A sweep without a pruner never takes a pruned run for a finished one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from vqalab.registry import ConfigError, short_repr
from vqalab.runs import METRICS_FILE, PRUNED_STATUS, read_metrics_rows

if TYPE_CHECKING:
    import optuna

PRUNER_NAMES = ("asha", "hyperband", "median")
PRUNED_METRIC = "val_acc"  # reported each epoch; higher is better (the sweeps' best_val_acc)
# Rungs at epochs 1, 3, 9, 27, …: at each, a point goes on only when it is in the best third of the
# points that reached that rung so far (Li et al. 2020, ASHA; η = 3 as in Hyperband's paper).
MIN_EPOCHS = 1
REDUCTION_FACTOR = 3
# The median rule needs a few whole curves before it may stop anything: two points of two seeds.
MEDIAN_STARTUP_TRIALS = 4
STUDY_NAME = "vqalab-sweep"  # Hyperband assigns brackets from the study name and trial number


def check_pruner(pruner: str | None) -> str | None:
    """``pruner`` when it names a known pruner (or is None); a ConfigError naming it otherwise."""
    if pruner is None or pruner in PRUNER_NAMES:
        return pruner
    raise ConfigError(f"pruner = {short_repr(pruner)}: expected one of {', '.join(PRUNER_NAMES)} "
                      "(or none: every point trains all its epochs)")


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    """Optuna's pruner for ``name``; ``max_epochs``: the longest run of the sweep (Hyperband's budget)."""
    import optuna

    check_pruner(name)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=MIN_EPOCHS, reduction_factor=REDUCTION_FACTOR)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=MIN_EPOCHS, max_resource=max(max_epochs, MIN_EPOCHS),
                                              reduction_factor=REDUCTION_FACTOR)
    return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS)


class SweepPruner:
    """The in-memory study of one sweep with a pruner: ``trial()`` once per point, in grid order."""

    def __init__(self, name: str, max_epochs: int):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial would flood notebooks
        self.name = name
        self.study = optuna.create_study(direction="maximize", pruner=make_pruner(name, max_epochs),
                                         study_name=STUDY_NAME)

    def trial(self) -> PointTrial:
        return PointTrial(self.study, self.name)


class PointTrial:
    """One point's trial: ``on_epoch`` for ``fit``, ``replay`` for a reused run, then ``end``.

    ``trial``: a trial already running (a queued sweep's worker took it); default: a new one."""

    def __init__(self, study: optuna.Study, pruner_name: str, trial: optuna.Trial | None = None):
        self.study = study
        self.pruner_name = pruner_name
        self.trial = trial if trial is not None else study.ask()
        self.reported: set[int] = set()

    def on_epoch(self, row: dict) -> str | None:
        """Report the epoch's ``val_acc``; the pruner's name when it stops the point here, else None."""
        epoch = int(row["epoch"])
        if epoch not in self.reported:  # a run retrained after a replay repeats its first epochs
            self.trial.report(float(row[PRUNED_METRIC]), epoch)
            self.reported.add(epoch)
        return self.pruner_name if self.trial.should_prune() else None

    def replay(self, run_dir: Path) -> int | None:
        """Report a reused run's epochs as if it trained now; the first epoch at which the pruner
        stops it (None: never within the epochs it has)."""
        pruned_at = None
        for row in read_metrics_rows(Path(run_dir) / METRICS_FILE):
            if self.on_epoch(row) and pruned_at is None:
                pruned_at = int(row["epoch"])
        return pruned_at

    def end(self, summary: dict) -> None:
        """Close the trial: completed → its best_val_acc; pruned → pruned; diverged or failed → failed."""
        from optuna.trial import TrialState

        status = summary.get("status")
        if status == "completed":
            self.study.tell(self.trial, float(summary.get("best_val_acc") or 0.0))
        elif status == PRUNED_STATUS:
            self.study.tell(self.trial, state=TrialState.PRUNED)
        else:
            self.study.tell(self.trial, state=TrialState.FAIL)
