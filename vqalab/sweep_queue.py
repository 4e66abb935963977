"""Sweeps spread over processes, GPUs and machines: the points of a sweep queued in an Optuna study.

``create_sweep(spec)`` expands a spec (base config, grid, seeds: the grid of ``vqalab.sweep``) and
enqueues every point once into an Optuna study (``study.enqueue_trial``; no sampler picks points).
``work(name)`` runs worker lanes, one per GPU (``CUDA_VISIBLE_DEVICES``) or per CPU slot, on any
number of machines sharing the storage: a lane takes a waiting trial (``study.ask()``), trains its
point with ``fit`` in a subprocess (the usual run folder, on the worker's own disk) and tells the
result (``study.tell``). A point that already finished (same reuse key as ``sweep``) is not trained
again. Only Optuna's public API is used.

What other machines need lives in the study, so no disk is shared: a finished trial holds its
``summary.json`` and its ``metrics.csv`` rows as user attributes (``sweep_table`` and
``sweep_metrics`` read them from any machine), and the worker uploads the run's files and each new
checkpoint with Optuna's artifact API into the sweep's artifact store (a folder, or an S3 bucket:
``s3://bucket``), recorded on the trial.

Storage: a journal file (``JournalFileBackend``; the default, under the experiment's folder: shared
by the processes of one machine, or by machines sharing a file system) or an RDB URL such as
``postgresql://user@host/db`` for several machines.

Successive halving: a spec's ``pruner`` (``asha``, ``hyperband``, ``median``: ``vqalab.pruning``) is
the study's pruner on every worker. The trial process sends each epoch's ``val_acc`` to its worker
and waits; the worker reports it to the trial and answers with the pruner's verdict, so the pruner
judges each point against every point finished or running on any machine. A pruned point ends
``pruned`` (trial state PRUNED); a reused run, and the epochs a retry resumes after, are reported
first, so the pruner sees them as if trained now. A pruned run is not reused: it trains again.

A lane beats while its trial trains (the trial's ``heartbeat_at`` user attribute, in both storages).
A running trial whose beat is older than the grace period belonged to a worker that died: it is
told failed and a copy is queued (``RetryHeartbeatStaleTrialCallback``, which keeps its user
attributes: the run folder and the last uploaded checkpoint). The worker taking the copy continues
the dead run from that checkpoint: in its folder when the folder is under its own runs root, else
in a new folder of the same name rebuilt from the artifact store. A point that fails by itself (an
exception, a non-finite loss) is recorded failed or diverged and not retried.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import optuna
import pandas as pd
from optuna.artifacts import (
    Boto3ArtifactStore,
    FileSystemArtifactStore,
    download_artifact,
    upload_artifact,
)
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import BaseJournalBackend, JournalFileBackend
from optuna.trial import FrozenTrial, Trial, TrialState

from vqalab import runs
from vqalab.params import RunConfig, read_yaml
from vqalab.paths import resolve
from vqalab.pruning import PRUNED_METRIC, PointTrial, check_pruner, make_pruner
from vqalab.registry import ConfigError, mask_secrets, short_repr
from vqalab.sweep_points import SweepPoint, expand_grid, find_finished, finished_runs, sweep_row
from vqalab.threads import SHARE_ENV, affinity_cores

log = logging.getLogger(__name__)

SPEC_ATTR = "vqalab_sweep_spec"  # study user attribute: the spec every worker expands
ARTIFACTS_ATTR = "vqalab_artifact_store"  # study user attribute: where run files and checkpoints go
POINT_ATTR = "point"  # trial user attribute: the point's parameters as JSON (its key in the grid)
# How often a worker looks for the run folder of a trial that just started: a retry can resume the
# folder only once it is recorded on the trial.
FOLDER_POLL_S = 0.1
SPEC_KEYS = ("name", "base", "grid", "seeds", "reuse", "pruner")
JOURNAL_DIR = "sweeps"  # under runs_root/experiment: <name>.journal
HEARTBEAT_S = 10.0
GRACE_S = 60.0  # a running trial without a beat for this long belonged to a dead worker
# Each beat is a storage write per lane: faster than this floods the journal or the database.
MIN_HEARTBEAT_S = 0.5
# A healthy worker that misses this many beats in a row (a slow storage, a busy machine) must not
# be taken for dead: the grace period spans at least this many beats.
GRACE_BEATS = 4
MAX_RETRIES = 3  # times a point is queued again after its worker died
# What a rebuilt run folder needs besides its checkpoint (metrics.csv comes from the checkpoint's history).
START_FILES = ("params.yaml", "summary.json")
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass
class SweepSpec:
    """What ``vqalab sweep create`` reads: the study name, base params tree, grid, seeds, reuse and
    pruner (None: every point trains all its epochs)."""

    name: str
    base: dict
    grid: dict[str, list]
    seeds: list[int] = field(default_factory=lambda: [0])
    reuse: bool = True
    pruner: str | None = None

    def points(self) -> list[SweepPoint]:
        """Every point, validated; expanded once (a 10,000-point grid takes seconds)."""
        if getattr(self, "_points", None) is None:
            self._points = expand_grid(self.base, self.grid, self.seeds)
        return self._points


def load_spec(path: str | Path) -> SweepSpec:
    """Read a spec file: ``name`` (default: the file name), ``base`` (a params file, relative to the
    spec or the project root, or an inline params tree), ``grid`` (dotted key → list), ``seeds``.

    Every point is built and validated here, so a bad spec stops before anything is queued.
    """
    path = resolve(path)
    tree = read_yaml(path)
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping with keys {', '.join(SPEC_KEYS)}")
    unknown = sorted(set(tree) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(unknown)}; a sweep spec has {', '.join(SPEC_KEYS)}")
    if "grid" not in tree:
        raise ConfigError(f"{path}: no 'grid' (dotted params key → list of values)")
    base = tree.get("base", {})
    if isinstance(base, str):
        base_file = path.parent / base if (path.parent / base).is_file() else resolve(base)
        if not base_file.is_file():
            raise ConfigError(f"{path}: base = {base!r}: no such params file (looked beside the spec "
                              f"and under the project root)")
        try:
            base = read_yaml(base_file) or {}  # the file's content is stored: later edits do not leak in
        except ConfigError as err:
            raise ConfigError(f"{path}: base = {base!r}: {err}") from None
        if not isinstance(base, dict):  # never echo the file: it may be anything (/etc/passwd)
            raise ConfigError(f"{path}: base = {str(base_file)!r}: expected a params file (a mapping of "
                              f"params keys), but the file holds a {type(base).__name__}")
    if not isinstance(base, dict):
        raise ConfigError(f"{path}: base = {short_repr(base)}: expected a params file name or a params mapping")
    seeds = tree.get("seeds", [0])
    reuse = tree.get("reuse", True)
    if not isinstance(reuse, bool):
        raise ConfigError(f"{path}: reuse = {reuse!r}: expected true or false")
    try:
        pruner = check_pruner(tree.get("pruner"))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    spec = SweepSpec(name=runs.safe_name(str(tree.get("name") or path.stem)), base=base,
                     grid=tree["grid"], seeds=seeds if isinstance(seeds, list) else [seeds], reuse=reuse,
                     pruner=pruner)
    spec.points()  # raises ConfigError naming the point, before any storage is touched
    return spec


def point_params(point: SweepPoint) -> dict[str, Any]:
    """The trial parameters of a point: its grid values (tuples as lists, as JSON has them) and seed."""
    plain = json.loads(json.dumps(point.values))
    return {**plain, "seed": point.seed}


def _point_key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def default_storage(spec: SweepSpec) -> Path:
    """``runs_root/experiment/sweeps/<name>.journal`` of the spec's first point."""
    cfg: RunConfig = spec.points()[0].cfg
    return resolve(cfg.runs_root) / runs.safe_name(cfg.experiment) / JOURNAL_DIR / f"{spec.name}.journal"


def default_artifacts(spec: SweepSpec) -> Path:
    """``runs_root/experiment/sweeps/<name>.artifacts/`` of the spec's first point, beside the journal."""
    return default_storage(spec).with_suffix(".artifacts")


def open_artifact_store(location: str, *, create: bool = False):
    """``s3://bucket`` → ``Boto3ArtifactStore`` (boto3 is needed only then; an S3-compatible server's
    endpoint comes from ``$AWS_ENDPOINT_URL``, as boto3 reads it); anything else is a folder →
    ``FileSystemArtifactStore`` (made when ``create``, refused when missing otherwise)."""
    if location.startswith("s3://"):
        bucket, _, rest = location[len("s3://"):].partition("/")
        if not bucket or rest.strip("/"):
            raise ConfigError(f"artifact store {location}: expected s3://<bucket> (the bucket alone)")
        try:
            import boto3
        except ImportError:
            raise ConfigError(f"artifact store {location}: an s3:// store needs boto3, which is not installed "
                              "(pip install boto3)") from None
        return Boto3ArtifactStore(bucket, client=boto3.client("s3"))
    if "://" in location:
        raise ConfigError(f"artifact store {location}: expected a folder or s3://<bucket>")
    folder = Path(location)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    if not folder.is_dir():
        raise ConfigError(f"artifact store {folder}: no such folder on this machine (a folder serves several "
                          "machines only on a shared file system: create the sweep with --artifacts s3://<bucket>)")
    return FileSystemArtifactStore(folder)


def find_storage(name: str, runs_root: str | Path = "runs") -> str:
    """The journal file of sweep ``name`` under ``runs_root/*/sweeps/`` (exactly one must exist)."""
    found = sorted(resolve(runs_root).glob(f"*/{JOURNAL_DIR}/{runs.safe_name(name)}.journal"))
    if len(found) != 1:
        where = resolve(runs_root) / "*" / JOURNAL_DIR / f"{name}.journal"
        what = "no journal" if not found else f"{len(found)} journals ({', '.join(map(str, found))})"
        raise ConfigError(f"sweep {name!r}: {what} at {where}: pass --storage")
    return str(found[0])


def is_rdb_url(storage: str | Path) -> bool:
    return "://" in str(storage)


def check_timing(heartbeat_s: float, grace_s: float) -> None:
    """Refuse beats that would flood the storage and a grace period a healthy worker can outlast."""
    if not heartbeat_s >= MIN_HEARTBEAT_S:  # also NaN
        raise ConfigError(f"--heartbeat {heartbeat_s:g}: expected at least {MIN_HEARTBEAT_S:g} s (each beat "
                          "is a write to the sweep's storage)")
    if not grace_s >= GRACE_BEATS * heartbeat_s:
        raise ConfigError(f"--grace {grace_s:g}: expected at least {GRACE_BEATS} × --heartbeat = "
                          f"{GRACE_BEATS * heartbeat_s:g} s, so that a healthy worker missing a beat or two is "
                          "not taken for dead")


def open_storage(storage: str | Path, *, create: bool = False) -> optuna.storages.BaseStorage:
    """An RDB URL (``postgresql://...``) → ``RDBStorage``; anything else is the path of a journal
    file (made when ``create``: a missing journal is refused otherwise).

    Every way of not opening it (no server, wrong password, missing database, no driver for the
    URL's scheme, a port that is not a number, a journal that is a folder or not a journal) is a
    ``ConfigError`` naming the storage, its password masked.
    """
    if is_rdb_url(storage):
        return open_rdb(str(storage))
    path = Path(storage)
    if path.is_dir():
        raise ConfigError(f"storage {path}: is a folder; expected an Optuna journal file")
    if path.exists():
        check_journal(path)
    elif not create:
        raise ConfigError(f"storage {path}: no such journal file (create the sweep with `vqalab sweep create`, "
                          "or check the path)")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def check_journal(path: Path) -> None:
    """Refuse a file whose first record is not an Optuna journal record (never echoing it)."""
    try:
        with open(path, "rb") as f:
            first = f.readline(2**20)
    except OSError as err:
        raise ConfigError(f"storage {path}: cannot be read ({err.strerror})") from None
    if not first:
        return  # empty: a journal nothing was written to yet
    try:
        record = json.loads(first)
    except (UnicodeDecodeError, json.JSONDecodeError):
        record = None
    if not isinstance(record, dict) or "op_code" not in record:
        raise ConfigError(f"storage {path}: not an Optuna journal file (its first line is not a journal "
                          "record): pass the journal of the sweep, or a new file name to `sweep create`")


def open_rdb(url: str) -> optuna.storages.RDBStorage:
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    shown = mask_secrets(url)
    try:
        port = make_url(url).port
    except sqlalchemy.exc.ArgumentError:
        raise ConfigError(f"storage {shown}: not a database URL (expected e.g. "
                          "postgresql://user:password@host:5432/database)") from None
    except ValueError:
        raise ConfigError(f"storage {shown}: the port is not a number (expected e.g. "
                          "postgresql://user:password@host:5432/database)") from None
    if port is not None and not 0 < port < 65536:
        raise ConfigError(f"storage {shown}: port {port} is out of range (1-65535)")
    if url.startswith("postgresql://"):  # SQLAlchemy ≥ 2.1 would pick psycopg 3; we ship psycopg2
        url = "postgresql+psycopg2://" + url[len("postgresql://"):]
    try:
        return optuna.storages.RDBStorage(url)
    except ImportError:
        raise ConfigError(f"storage {shown}: no database driver for {url.split('://')[0]}:// is installed "
                          "(postgresql:// is supported, or use a journal file)") from None
    except sqlalchemy.exc.SQLAlchemyError as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise ConfigError(f"storage {shown}: cannot open the database: {mask_secrets(reason)}") from None


def create_sweep(spec: SweepSpec, storage: str | Path | None = None,
                 artifacts: str | Path | None = None) -> tuple[str, int]:
    """Create (or extend) the study ``spec.name`` and enqueue every point not queued yet.

    ``artifacts``: where workers upload run files and checkpoints (a folder, or ``s3://bucket``),
    recorded in the study for every worker; default: ``<name>.artifacts/`` beside the default
    journal. Returns the storage (URL or journal path) and the number of points newly queued. A
    study of that name holding a different base, seeds, reuse setting or artifact store is refused
    (pick another name).
    """
    points = spec.points()
    storage = str(storage or default_storage(spec))
    location = str(artifacts or default_artifacts(spec))
    open_artifact_store(location, create=True)  # a bad location is refused before anything is queued
    study = optuna.create_study(study_name=spec.name, storage=open_storage(storage, create=True), load_if_exists=True,
                                direction="maximize")
    wanted = spec_tree(spec)
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        study.set_user_attr(SPEC_ATTR, wanted)
    elif without_grid(spec_tree(SweepSpec(**stored))) != without_grid(wanted):  # keys added since: their defaults
        raise ConfigError(f"sweep {spec.name!r} in {mask_secrets(storage)} already exists with another base, seeds, "
                          f"reuse setting or pruner: give the spec another name")
    elif stored["grid"] != wanted["grid"]:
        study.set_user_attr(SPEC_ATTR, wanted)  # a grown grid: its new points are queued below
    stored_location = study.user_attrs.get(ARTIFACTS_ATTR)
    if stored_location is None:
        study.set_user_attr(ARTIFACTS_ATTR, location)
    elif artifacts is not None and stored_location != location:
        raise ConfigError(f"sweep {spec.name!r} in {mask_secrets(storage)} uploads to the artifact store "
                          f"{stored_location}, not {location}: leave --artifacts out, or give the spec another name")
    held = None
    if not is_rdb_url(storage):
        # One journal write for all new points: queueing 10,000 points one write (one lock, one
        # fsync) each takes minutes.
        held = HeldJournalBackend(JournalFileBackend(storage))
        study = optuna.load_study(study_name=spec.name, storage=optuna.storages.JournalStorage(held))
    # One read of what is queued, then the new points: linear in the grid's size
    # (enqueue_trial(skip_if_exists=True) reads every trial again for every point).
    queued = {t.user_attrs[POINT_ATTR] for t in study.get_trials(deepcopy=False) if POINT_ATTR in t.user_attrs}
    added = 0
    for point in points:
        params = point_params(point)
        key = _point_key(params)
        if key in queued:
            continue
        study.enqueue_trial(params, user_attrs={"name": point.cfg.name, POINT_ATTR: key})
        queued.add(key)
        added += 1
    if held is not None:
        held.flush()
    log.info("sweep %s: %d points, %d newly queued in %s", spec.name, len(points), added, mask_secrets(storage))
    return storage, added


def spec_tree(spec: SweepSpec) -> dict:
    """The spec as the study stores it (JSON: tuples become lists)."""
    return json.loads(json.dumps(asdict(spec)))


def without_grid(tree: dict) -> dict:
    return {k: v for k, v in tree.items() if k != "grid"}


class HeldJournalBackend(BaseJournalBackend):
    """A journal file read once, whose appended records are held in memory until ``flush`` writes
    them in one append (atomic under the journal's lock: other workers see all or none).

    For queueing only: records appended by other processes meanwhile are not seen here, and the
    held records create trials, whose ids every reader derives from the file's order."""

    def __init__(self, backend: JournalFileBackend):
        self.backend = backend
        self.logs = list(backend.read_logs(0))
        self.held: list[dict] = []

    def read_logs(self, log_number_from: int) -> list[dict]:
        return self.logs[log_number_from:]

    def append_logs(self, logs: list[dict]) -> None:
        self.logs.extend(logs)
        self.held.extend(logs)

    def flush(self) -> None:
        if self.held:
            self.backend.append_logs(self.held)
            self.held = []


def load_sweep(name: str, storage: str | Path | None = None, *,
               with_pruner: bool = False) -> tuple[optuna.Study, SweepSpec]:
    """The study of sweep ``name`` and its spec; ``with_pruner``: the study judges reported epochs
    with the spec's pruner (workers need it; readers of the table do not)."""
    storage = storage or find_storage(name)
    opened = open_storage(storage)
    try:
        study = optuna.load_study(study_name=name, storage=opened)
    except KeyError:
        raise ConfigError(f"sweep {name!r}: no such study in {mask_secrets(storage)} (create it with "
                          "`vqalab sweep create`)") from None
    stored = study.user_attrs.get(SPEC_ATTR)
    if stored is None:
        raise ConfigError(f"study {name!r} in {mask_secrets(storage)} was not created by `vqalab sweep create`")
    spec = SweepSpec(**stored)
    if with_pruner and spec.pruner:
        max_epochs = max(point.cfg.train.epochs for point in spec.points())
        study = optuna.load_study(study_name=name, storage=opened, pruner=make_pruner(spec.pruner, max_epochs))
    return study, spec


def retry_history(trial: FrozenTrial) -> list[int]:
    """The numbers of the dead workers' trials this one retries, oldest first (empty: not a retry)."""
    with warnings.catch_warnings():  # the retry callback's helpers are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback.retry_history(trial)


def requeue(study: optuna.Study, trial: FrozenTrial, *, max_retries: int = MAX_RETRIES) -> None:
    """Queue again the point of a trial whose worker died: a copy with its user attributes (run
    folder, last uploaded checkpoint), so that the next worker continues the dead run."""
    retries = len(retry_history(trial))
    if retries >= max_retries:
        log.error("trial %d (%s): worker lost %d times, not queued again", trial.number,
                  trial.user_attrs.get("name"), retries + 1)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=max_retries)(study, trial)
    uploaded = trial.user_attrs.get("checkpoint")
    log.warning("trial %d (%s): its worker stopped beating; queued again%s", trial.number,
                trial.user_attrs.get("name"), f" to resume from epoch {uploaded['epoch']}" if uploaded else "")


def last_sign_of_life(trial: FrozenTrial) -> float:
    """The trial's last beat, or its start: a retry carries the dead worker's last beat until its
    own first one."""
    return max(trial.user_attrs.get("heartbeat_at", 0.0), trial.datetime_start.timestamp())


def fail_stale_trials(study: optuna.Study, *, grace_s: float, max_retries: int) -> None:
    """Tell the running trials of dead workers failed and queue them again (one process wins each)."""
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if POINT_ATTR not in trial.user_attrs or now - last_sign_of_life(trial) <= grace_s:
            continue
        try:
            failed = study.tell(trial.number, state=TrialState.FAIL)
        except (UpdateFinishedTrialError, ValueError):
            continue  # another worker failed it first and queues the retry (or it just finished)
        requeue(study, failed, max_retries=max_retries)


def take_waiting_trial(study: optuna.Study) -> Trial | None:
    """A waiting trial, now running for this process (``study.ask()``), or None when none is waiting."""
    if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return None
    trial = study.ask()
    if POINT_ATTR not in trial.user_attrs:
        # Another worker took the last waiting point first, so ask() made a new trial: close it.
        trial.set_user_attr("unused", "no point was waiting any more")
        study.tell(trial, state=TrialState.FAIL)
        return None
    return trial


def beat(trial: Trial) -> None:
    """Record that this trial's worker is alive; raises ``UpdateFinishedTrialError`` when others
    took the worker for dead and told the trial failed."""
    trial.set_user_attr("heartbeat_at", time.time())


class EpochChannel:
    """Two pipes between a worker and the process of a trial it runs: the trial process writes each
    epoch's ``val_acc`` and waits; the worker asks the study's pruner and writes the verdict back (a
    pruner's name: stop here; empty: go on). So the trial process needs no storage of its own.

    ``judge``: the worker's side, an epoch's message → the verdict (``PointTrial.on_epoch``)."""

    def __init__(self, judge):
        self.judge = judge
        self.epochs_read, self.epochs_write = os.pipe()
        self.verdicts_read, self.verdicts_write = os.pipe()
        self.pending = b""
        self.open = True

    def child_args(self) -> list[str]:
        return ["--epochs-fd", str(self.epochs_write), "--verdicts-fd", str(self.verdicts_read)]

    def child_fds(self) -> tuple[int, int]:
        return self.epochs_write, self.verdicts_read

    def started(self) -> None:
        """Close the child's ends here, so that its exit reads as the end of the epochs pipe."""
        os.close(self.epochs_write)
        os.close(self.verdicts_read)

    def receive(self, timeout: float) -> dict | None:
        """The next epoch's message, or None after ``timeout`` s (or once the trial process is gone)."""
        if b"\n" not in self.pending:
            ready, _, _ = select.select([self.epochs_read], [], [], max(timeout, 0.0))
            if not ready:
                return None
            chunk = os.read(self.epochs_read, 65536)
            if not chunk:
                self.open = False
                return None
            self.pending += chunk
            if b"\n" not in self.pending:
                return None
        line, self.pending = self.pending.split(b"\n", 1)
        return json.loads(line)

    def answer(self, verdict: str | None) -> None:
        try:
            os.write(self.verdicts_write, f"{verdict or ''}\n".encode())
        except BrokenPipeError:  # the trial process died meanwhile: its exit code tells the rest
            pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.epochs_read)
        os.close(self.verdicts_write)


def wait_for_trial(child: subprocess.Popen, timeout: float, channel: EpochChannel | None) -> int | None:
    """Wait up to ``timeout`` s for the trial process to exit (its exit code; None: still running),
    meanwhile answering its epochs with the pruner's verdicts."""
    deadline = time.monotonic() + timeout
    while channel is not None and channel.open:
        left = deadline - time.monotonic()
        if left <= 0:
            return child.poll()
        message = channel.receive(left)
        if message is not None:
            channel.answer(channel.judge(message))
    try:
        return child.wait(timeout=max(deadline - time.monotonic(), 0.0))
    except subprocess.TimeoutExpired:
        return None


@dataclass
class Lane:
    """One worker lane: its environment additions (a GPU or a thread count) and a label for logs."""

    label: str
    env: dict[str, str]


def make_lanes(devices: list[str] | None, slots: int) -> list[Lane]:
    if devices:
        return [Lane(f"cuda:{d}", {"CUDA_VISIBLE_DEVICES": str(d)}) for d in devices]
    if slots < 1:
        raise ConfigError(f"--slots {slots}: expected at least 1")
    # The slots share the cores, none oversubscribed: each run takes its share (vqalab.threads).
    threads = max(1, len(affinity_cores()) // slots)
    return [Lane(f"cpu{i}", {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                             SHARE_ENV: str(slots)})
            for i in range(slots)]


class Worker:
    """Lanes of one process taking trials of one study until nothing is waiting or running."""

    def __init__(self, name: str, storage: str | Path | None = None, *, devices: list[str] | None = None,
                 slots: int = 1, max_trials: int | None = None, heartbeat_s: float = HEARTBEAT_S,
                 grace_s: float = GRACE_S, max_retries: int = MAX_RETRIES):
        check_timing(heartbeat_s, grace_s)  # before the storage is opened
        self.study, self.spec = load_sweep(name, storage, with_pruner=True)
        location = self.study.user_attrs.get(ARTIFACTS_ATTR)
        if location is None:
            raise ConfigError(f"sweep {name!r} names no artifact store (it was created by an older vqalab): "
                              "create it again under a new name")
        self.store = open_artifact_store(location)
        self.points = {_point_key(point_params(p)): p for p in self.spec.points()}
        self.lanes = make_lanes(devices, slots)
        self.max_trials, self.heartbeat_s, self.grace_s, self.max_retries = max_trials, heartbeat_s, grace_s, max_retries
        self.taken = 0
        self.lock = threading.Lock()
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}"

    def run(self) -> int:
        """Work until done; returns the number of trials this process took."""
        threads = [threading.Thread(target=self.lane_loop, args=(lane,), name=lane.label) for lane in self.lanes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return self.taken

    def claim(self) -> Trial | None:
        with self.lock:
            if self.max_trials is not None and self.taken >= self.max_trials:
                return None
            trial = take_waiting_trial(self.study)
            if trial is not None:
                beat(trial)
                self.taken += 1
            return trial

    def lane_loop(self, lane: Lane) -> None:
        while True:
            fail_stale_trials(self.study, grace_s=self.grace_s, max_retries=self.max_retries)
            trial = self.claim()
            if trial is None:
                if self.max_trials is not None and self.taken >= self.max_trials:
                    return
                # Trials running elsewhere may still come back to the queue if their worker dies.
                if not self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)):
                    return
                time.sleep(min(self.heartbeat_s, self.grace_s / 4))
                continue
            try:
                self.run_trial(trial, lane)
            except Exception as err:  # a storage hiccup must not leave the trial running forever
                log.exception("trial %d: worker error", trial.number)
                self.finish(trial, "failed", {"error": f"worker: {type(err).__name__}: {err}"}, None, False)

    def run_trial(self, trial: Trial, lane: Lane) -> None:
        trial.set_user_attr("worker", f"{self.worker_id}/{lane.label}")
        point = self.points.get(trial.user_attrs[POINT_ATTR])
        if point is None:
            self.finish(trial, "failed", {"error": "point not in the sweep's grid"}, None, False)
            return
        pruning = PointTrial(self.study, self.spec.pruner, trial) if self.spec.pruner else None
        if self.spec.reuse:
            found = find_finished(point, finished_runs(point.cfg.runs_root, point.cfg.experiment))
            if found is not None:
                log.info("trial %d %s: reusing %s", trial.number, point.cfg.name, found)
                if pruning:
                    pruning.replay(found)  # its epochs count for the pruner as if trained now
                self.finish(trial, None, runs.read_summary(found), found, True)
                return
        resume = self.resume_folder(trial, point)
        log.info("trial %d %s on %s: %s", trial.number, point.cfg.name, lane.label,
                 f"resuming {resume}" if resume else "training")
        if pruning and resume:
            pruning.replay(resume)  # the dead worker's epochs, reported to this retry's trial
        with tempfile.TemporaryDirectory(prefix="vqalab-trial-") as tmp:
            config_file, report_file, output_file = Path(tmp, "config.json"), Path(tmp, "run_dir.json"), Path(tmp, "output.txt")
            config_file.write_text(json.dumps(point.cfg.to_dict()))
            command = [sys.executable, "-m", "vqalab.sweep_queue", "--config", str(config_file),
                       "--report", str(report_file), "--parent", str(os.getpid())]
            if resume:
                command += ["--resume", str(resume)]
            channel = EpochChannel(pruning.on_epoch) if pruning else None
            run_dir = None
            with open(output_file, "wb") as output, channel or contextlib.nullcontext():
                child = subprocess.Popen(command + (channel.child_args() if channel else []),
                                         env={**os.environ, **lane.env}, stdout=output, stderr=subprocess.STDOUT,
                                         cwd=resolve("."), pass_fds=channel.child_fds() if channel else ())
                if channel:
                    channel.started()
                while True:
                    try:
                        # Poll quickly until the run folder is known: a retry must find it.
                        code = wait_for_trial(child, self.heartbeat_s if run_dir else min(self.heartbeat_s, FOLDER_POLL_S),
                                              channel)
                        if code is not None:
                            break
                        beat(trial)
                    except UpdateFinishedTrialError:  # others took this worker for dead: let go
                        log.error("trial %d: failed as stale while training here; stopping it", trial.number)
                        child.kill()
                        child.wait()
                        return
                    if run_dir is None and report_file.is_file():
                        run_dir = Path(json.loads(report_file.read_text())["run_dir"])
                        self.record_start(trial, run_dir)
                    if run_dir is not None:
                        self.upload_checkpoint(trial, run_dir)
            if run_dir is None and report_file.is_file():
                run_dir = Path(json.loads(report_file.read_text())["run_dir"])
                self.record_start(trial, run_dir)
            summary = runs.read_summary(run_dir) if run_dir and (run_dir / runs.SUMMARY_FILE).is_file() else {}
            if code != 0:
                tail = output_file.read_text(errors="replace").strip().splitlines()[-1:] or [f"exit code {code}"]
                error = summary.get("error") if summary.get("status") == "failed" else None
                self.finish(trial, "failed", {**summary, "error": error or tail[0]}, run_dir, False)
                return
        self.finish(trial, None, summary, run_dir, False)

    def upload(self, trial: Trial, path: Path) -> str:
        return upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=trial)

    def record_start(self, trial: Trial, run_dir: Path) -> None:
        """The run folder on the trial, and the files that, with a checkpoint, rebuild it elsewhere."""
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("run_files", {name: self.upload(trial, run_dir / name) for name in START_FILES})

    def upload_checkpoint(self, trial: Trial, run_dir: Path) -> None:
        """Upload the run's newest checkpoint when it is newer than the one the trial records (the
        dead worker's, for a retry); the superseded one is removed from the store."""
        latest = runs.latest_checkpoint(run_dir)
        recorded = trial.user_attrs.get("checkpoint")
        if latest is None:
            return
        epoch = int(latest.stem.split("_")[1])  # epoch_NNN.pt
        if recorded is not None and recorded["epoch"] >= epoch:
            return
        trial.set_user_attr("checkpoint", {"epoch": epoch, "artifact_id": self.upload(trial, latest)})
        if recorded is not None:
            try:
                self.store.remove(recorded["artifact_id"])
            except ArtifactNotFound:
                pass

    def resume_folder(self, trial: Trial, point: SweepPoint) -> Path | None:
        """Where a dead worker's point continues: its run folder when that is under this worker's
        runs root, else a new folder of the same name rebuilt from the last uploaded checkpoint
        (metrics.csv from the checkpoint's history). None: not a retry, or killed before a
        checkpoint was uploaded (trained from the start)."""
        dead = trial.user_attrs.get("run_dir")
        if dead is None:
            return None
        runs_root = resolve(point.cfg.runs_root)
        if Path(dead).is_dir() and Path(dead).is_relative_to(runs_root):
            return Path(dead)
        uploaded, files = trial.user_attrs.get("checkpoint"), trial.user_attrs.get("run_files", {})
        if uploaded is None:
            return None
        run_dir = runs.new_folder(runs_root / runs.safe_name(point.cfg.experiment), Path(dead).name)
        for name in START_FILES:
            download_artifact(artifact_store=self.store, file_path=str(run_dir / name),
                                               artifact_id=files[name])
        checkpoint = runs.checkpoint_path(run_dir, uploaded["epoch"])
        checkpoint.parent.mkdir()
        download_artifact(artifact_store=self.store, file_path=str(checkpoint),
                                           artifact_id=uploaded["artifact_id"])
        runs.write_metrics(run_dir / runs.METRICS_FILE, runs.load_checkpoint(checkpoint)["history"])
        log.info("trial %d: %s rebuilt from the checkpoint of epoch %d uploaded by %s", trial.number, run_dir,
                 uploaded["epoch"], trial.user_attrs.get("worker"))
        return run_dir

    def finish(self, trial: Trial, status: str | None, summary: dict, run_dir: Path | None,
               reused: bool) -> None:
        """Record a trial's outcome in the study (summary, metrics rows, run files uploaded), then
        tell it: completed → COMPLETE with its best_val_acc; pruned → PRUNED; diverged or failed → FAIL."""
        status = status or summary.get("status", "failed")
        try:
            if run_dir is not None:
                trial.set_user_attr("run_dir", str(run_dir))
                if not reused:
                    self.upload_checkpoint(trial, run_dir)
                files = sorted(p for p in run_dir.iterdir() if p.is_file() and not p.name.startswith("."))  # not .lock
                trial.set_user_attr("run_files", {p.name: self.upload(trial, p) for p in files})
                metrics_file = run_dir / runs.METRICS_FILE
                trial.set_user_attr("metrics", runs.read_metrics_rows(metrics_file) if metrics_file.is_file() else [])
            trial.set_user_attr("summary", summary)
            trial.set_user_attr("status", status)
            trial.set_user_attr("reused", reused)
            if summary.get("error"):
                trial.set_user_attr("error", str(summary["error"]))
            if status == "completed":
                self.study.tell(trial, float(summary.get("best_val_acc") or 0.0))
            elif status == runs.PRUNED_STATUS:
                self.study.tell(trial, state=TrialState.PRUNED)
            else:
                self.study.tell(trial, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            log.error("trial %d: told failed by another worker (taken for dead) before it finished here; its retry "
                      "stands", trial.number)
            return
        log.info("trial %d %s: %s%s", trial.number, trial.user_attrs.get("name"), status, " (reused)" if reused else "")


def work(name: str, storage: str | Path | None = None, **kwargs) -> int:
    """Run ``Worker(name, storage, **kwargs)`` until the queue is empty; returns the trials taken."""
    return Worker(name, storage, **kwargs).run()


def latest_trials(study: optuna.Study) -> dict[str, FrozenTrial]:
    """Point key → its newest trial (a retry supersedes the trial of a dead worker)."""
    latest: dict[str, FrozenTrial] = {}
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if POINT_ATTR in trial.user_attrs:  # not a trial ask() made when the queue had just emptied
            latest[trial.user_attrs[POINT_ATTR]] = trial
    return latest


def trial_status(trial: FrozenTrial | None) -> str:
    if trial is None:
        return "not queued"
    if trial.state in (TrialState.WAITING, TrialState.RUNNING):
        return trial.state.name.lower()
    return trial.user_attrs.get("status", "failed")  # FAIL without one: its worker was lost for good


def sweep_table(name: str, storage: str | Path | None = None) -> pd.DataFrame:
    """The table ``sweep`` returns, read from the study alone (each trial's summary), in grid order:
    complete from any machine. ``run_dir`` is the folder on the machine that trained the point
    (``sweep status`` names the worker).

    Points not finished yet are rows with status ``waiting`` / ``running`` and no figures.
    """
    study, spec = load_sweep(name, storage)
    latest = latest_trials(study)
    rows = []
    for point in spec.points():
        trial = latest.get(_point_key(point_params(point)))
        status = trial_status(trial)
        run_dir = trial.user_attrs.get("run_dir") if trial else None
        summary = trial.user_attrs.get("summary", {}) if trial else {}
        if status not in runs.ENDED_STATUSES:
            summary = {**{k: None for k in summary}, "status": status,
                       "error": trial.user_attrs.get("error", "worker lost") if status == "failed" else None}
        rows.append(sweep_row(point, summary, Path(run_dir) if run_dir else None,
                              reused=bool(trial and trial.user_attrs.get("reused"))))
    df = pd.DataFrame(rows)
    df.attrs["grid_keys"] = list(spec.grid)
    return df


def sweep_metrics(name: str, storage: str | Path | None = None) -> pd.DataFrame:
    """Every finished point's ``metrics.csv`` rows, read from the study: one row per point and
    epoch, led by the point's grid values, seed and run name (as ``results.metrics_table`` gives
    for local run folders)."""
    study, spec = load_sweep(name, storage)
    latest = latest_trials(study)
    rows = []
    for point in spec.points():
        trial = latest.get(_point_key(point_params(point)))
        if trial is None or trial_status(trial) not in runs.ENDED_STATUSES:
            continue
        for epoch_row in trial.user_attrs.get("metrics", []):
            rows.append({**point.values, "seed": point.seed, "name": point.cfg.name, **epoch_row})
    df = pd.DataFrame(rows)
    df.attrs["grid_keys"] = list(spec.grid)
    return df


def sweep_status(name: str, storage: str | Path | None = None) -> dict:
    """Points per state, each point's run folder and an ETA (mean time of the points trained so far
    × points left / lanes running now)."""
    study, spec = load_sweep(name, storage)
    latest = latest_trials(study)
    points, durations = [], []
    for point in spec.points():
        trial = latest.get(_point_key(point_params(point)))
        status = trial_status(trial)
        points.append({"name": point.cfg.name, "status": status,
                       "reused": bool(trial and trial.user_attrs.get("reused")),
                       "retries": len(retry_history(trial)) if trial else 0,
                       "worker": trial.user_attrs.get("worker") if trial else None,
                       "run_dir": trial.user_attrs.get("run_dir") if trial else None})
        if trial and trial.datetime_complete and trial.datetime_start and not trial.user_attrs.get("reused"):
            durations.append((trial.datetime_complete - trial.datetime_start).total_seconds())
    counts: dict[str, int] = {}
    for p in points:
        counts[p["status"]] = counts.get(p["status"], 0) + 1
    left = counts.get("waiting", 0) + counts.get("running", 0)
    lanes = max(1, counts.get("running", 0))
    eta = sum(durations) / len(durations) * left / lanes if durations and left else (0.0 if not left else None)
    return {"name": name, "counts": counts, "eta_s": eta, "points": points}


def sweep_with_workers(base: RunConfig | dict, grid: dict, *, seeds, reuse: bool = True, workers: int = 2,
                       storage: str | None = None, pruner: str | None = None) -> pd.DataFrame:
    """``sweep(..., workers=N)``: a new study for this call, N lanes in this process, then the table.

    Lanes go one per GPU when this machine has ``workers`` GPUs, else one per CPU slot.
    """
    import torch

    tree = base.to_dict() if isinstance(base, RunConfig) else dict(base or {})
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    spec = SweepSpec(name=runs.safe_name(f"{tree.get('name', 'run')}-{stamp}"), base=tree,
                     grid={k: list(v) for k, v in grid.items()}, seeds=list(seeds), reuse=reuse, pruner=pruner)
    storage, _ = create_sweep(spec, storage)
    devices = [str(i) for i in range(workers)] if torch.cuda.device_count() >= workers else None
    work(spec.name, storage, devices=devices, slots=workers)
    return sweep_table(spec.name, storage)


def _die_with_parent(parent: int) -> None:
    """Linux: this trial process gets SIGKILL when its worker dies, so a retry never shares its folder."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the worker died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)


def trial_main(argv: list[str] | None = None) -> int:
    """The process of one trial: ``fit`` of one point, reporting its run folder as soon as it exists."""
    parser = argparse.ArgumentParser(description="one sweep trial (started by `vqalab sweep work`)")
    parser.add_argument("--config", required=True, help="resolved config as JSON")
    parser.add_argument("--report", required=True, help="file that receives {'run_dir': ...}")
    parser.add_argument("--parent", type=int, required=True, help="pid of the worker")
    parser.add_argument("--resume", default=None, help="run folder of a dead worker's trial")
    parser.add_argument("--epochs-fd", type=int, default=None, help="pipe for each epoch's val_acc (a pruned sweep)")
    parser.add_argument("--verdicts-fd", type=int, default=None, help="pipe for the pruner's verdicts")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from vqalab.config import build_config
    from vqalab.train import fit

    cfg = build_config(json.loads(Path(args.config).read_text()), source=args.config)
    cfg.train.progress = False
    report = Path(args.report)
    on_epoch = ask_worker(args.epochs_fd, args.verdicts_fd) if args.epochs_fd is not None else None
    fit(cfg, resume=args.resume, on_start=lambda run_dir: runs.write_json(report, {"run_dir": str(run_dir)}),
        on_epoch=on_epoch)
    return 0


def ask_worker(epochs_fd: int, verdicts_fd: int):
    """``fit``'s ``on_epoch`` in a trial process: send the epoch's val_acc, wait for the verdict."""
    epochs, verdicts = os.fdopen(epochs_fd, "w"), os.fdopen(verdicts_fd, "r")

    def on_epoch(row: dict) -> str | None:
        epochs.write(json.dumps({"epoch": int(row["epoch"]), PRUNED_METRIC: float(row[PRUNED_METRIC])}) + "\n")
        epochs.flush()
        return verdicts.readline().strip() or None  # empty: go on (also when the worker is gone)

    return on_epoch


if __name__ == "__main__":
    sys.exit(trial_main())
