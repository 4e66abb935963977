"""The one training loop. Trains a single run described by a ``RunConfig`` into a run folder.

Run folder contents: ``params.yaml`` (resolved config), ``metrics.csv`` (one row per epoch),
``summary.json`` (status, best epoch, environment), ``confusion_matrix.csv`` and
``val_predictions.csv`` (best epoch, classification only), ``checkpoints/epoch_NNN.pt``.

The data set's ``task`` picks the objective: classification trains with ``train.loss`` and scores
accuracy; segmentation (map-view masks) trains with binary cross-entropy per mask cell
(``train.loss`` must be ``bce``) and scores IoU@0.50 over the whole validation split. Either score
is the ``val_acc`` column, so early stopping, best epoch and sweeps work alike for both.

A run ends ``completed``, ``pruned`` (the ``on_epoch`` callback of ``fit`` stopped it: a sweep's
pruner; the epoch is recorded), ``diverged`` (a non-finite loss or gradient stopped it; step, epoch and LR
are recorded), ``interrupted`` (Ctrl-C or SIGTERM, as sent by ``timeout`` and job schedulers;
``RunInterrupted`` is raised) or ``failed`` (an exception; re-raised). A run interrupted, even
killed, continues with ``fit(cfg, resume=run_dir)`` from its last checkpoint in the same folder and
ends with the same weights and metrics as an uninterrupted run on the CPU: checkpoints hold the
model, optimizer, scheduler, scaler and RNG states and the metrics history, and the batch order is
a pure function of (seed, epoch). A run folder is locked while it trains: a second ``fit`` on it
(e.g. two resumes at once) is refused.

Sweeps are an outer loop over ``fit`` (``vqalab.sweep``); the loop knows nothing of them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import pickle
import random
import signal
import threading
import time
import zipfile
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vqalab import distributed, runs
from vqalab.data import DataSplits, build_data, data_status
from vqalab.devices import set_interop_threads, torch_threads
from vqalab.engine import (
    autocast_context,
    build_model,
    build_optimizer,
    compute_loss,
    make_grad_scaler,
    make_loader,
    micro_batch_loss,
    model_spec,
    optimizer_step,
    peak_memory_mb,
    seed_everything,
    select_device,
    to_device,
    uncompiled,
)
from vqalab.metrics import IOU_THRESHOLD, iou_counts, iou_of_counts
from vqalab.models import weight_files_off
from vqalab.monitor import RunMonitor
from vqalab.params import RunConfig, read_yaml
from vqalab.paths import resolve
from vqalab.provenance import code_fingerprint
from vqalab.registry import ConfigError, short_repr
from vqalab.runs import (
    ENDED_STATUSES,
    EXACT_METRIC_COLUMNS,
    METRICS_FILE,
    PRUNED_STATUS,
    append_metrics,
    config_hash,
    confusion_matrix,
    environment,
    flatten,
    latest_checkpoint,
    per_class_accuracy,
    read_metrics_rows,
    write_confusion,
    write_metrics,
    write_predictions,
)
from vqalab.schedules import lr_factor
from vqalab.threads import ThreadChoice, choose_threads

log = logging.getLogger(__name__)

# Keys allowed to differ between a run and its resumption (e.g. continue on another GPU, or
# without torch.compile on a machine with no C compiler: the same computation, not the same kernels).
RESUME_FREE_KEYS = ("train.progress", "train.device", "train.tensorboard", "train.log_every_steps",
                    "train.compile", "train.compile_mode")

# Mixup draws from its own random stream, a pure function of (seed, epoch, this tag).
MIXUP_STREAM = 0x6D69


@dataclass
class RunResult:
    run_dir: Path
    summary: dict


class Diverged(RuntimeError):
    """A non-finite loss or gradient: the run stops at this optimizer step."""

    def __init__(self, step: int, lr: float, what: str, epoch: int | None = None):
        super().__init__(f"non-finite {what} at step {step} (lr {lr:.3g})")
        self.step, self.lr, self.what, self.epoch = step, lr, what, epoch


class Terminated(KeyboardInterrupt):
    """SIGTERM received: handled like Ctrl-C (the run ends ``interrupted``, resumable)."""

    signal_name = "SIGTERM"


class RunInterrupted(KeyboardInterrupt):
    """A run stopped by Ctrl-C or SIGTERM; its summary says ``interrupted`` and it can be resumed."""

    def __init__(self, run_dir: Path, signal_name: str):
        self.run_dir, self.signal_name = run_dir, signal_name
        self.resume_command = f"vqalab train --resume {run_dir}"
        super().__init__(f"run {run_dir} interrupted by {signal_name}; resume it with: {self.resume_command}")


@contextmanager
def sigterm_as_interrupt():
    """Within the block SIGTERM raises ``Terminated`` (so ``finally`` blocks run and the summary is
    written) instead of ending the process silently. Only the main thread can set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def precision_name(amp: str) -> str:
    """What ran, for summary.json: fp32, bf16-autocast or fp16-autocast+scaler."""
    return {"off": "fp32", "bf16": "bf16-autocast", "fp16": "fp16-autocast+scaler"}[amp]


def execution_fields(cfg: RunConfig) -> dict:
    """How the run computes, recorded in summary.json: precision, memory format and compilation."""
    return {"precision": precision_name(cfg.train.amp),
            "memory_format": "channels_last" if cfg.train.channels_last else "contiguous",
            "compile": cfg.train.compile, "compile_mode": cfg.train.compile_mode if cfg.train.compile else None}


def check_task(cfg: RunConfig, data: DataSplits) -> None:
    """Segmentation trains with binary cross-entropy on the mask; the class-label options do not
    apply. Classification with bce needs soft scores in the items (``config.check_settings`` refused
    a data set declared without them before loading; this checks the loaded data)."""
    if data.task != "segmentation":
        if cfg.train.loss == "bce" and len(data.train) and "soft_target" not in data.train[0]:
            raise ConfigError(f"train.loss = 'bce': data '{cfg.data.get('name')}' has no soft answer scores "
                              "(soft_target) to train on: set train.loss to 'ce'")
        return
    wrong = [(key, value, expected) for key, value, expected in (
        ("train.loss", cfg.train.loss, "bce"), ("train.label_smoothing", cfg.train.label_smoothing, 0.0))
        if value != expected]
    if wrong:
        key, value, expected = wrong[0]
        raise ConfigError(f"{key} = {value!r}: data '{cfg.data.get('name')}' is a segmentation data set "
                          f"(binary cross-entropy on its masks): set {key} to {expected!r}")


def check_mixup(cfg: RunConfig, data: DataSplits) -> None:
    """Mixup blends images and their one-hot labels: only for image classification with ce."""
    if cfg.train.mixup_alpha == 0:
        return
    if tuple(data.input_keys) != ("image",) or cfg.train.loss != "ce":
        raise ConfigError(
            f"train.mixup_alpha = {cfg.train.mixup_alpha}: mixup needs an image classification data set "
            f"(model inputs ('image',) and train.loss 'ce'); data '{cfg.data.get('name')}' has inputs "
            f"{tuple(data.input_keys)} and train.loss is '{cfg.train.loss}': set train.mixup_alpha to 0"
        )


def mix_batch(batch: dict, rng: np.random.Generator, alpha: float) -> tuple[dict, float, torch.Tensor]:
    """Mixup (Zhang et al. 2018): image ← λ·image + (1-λ)·image[perm], λ ~ Beta(α, α).

    Returns the mixed batch, λ and ``perm`` (B,): the loss is λ·CE(y) + (1-λ)·CE(y[perm]).
    """
    lam = float(rng.beta(alpha, alpha))
    image = batch["image"]  # (B, 3, H, W)
    perm = torch.from_numpy(rng.permutation(image.shape[0])).to(image.device)
    return {**batch, "image": lam * image + (1 - lam) * image[perm]}, lam, perm


def batch_accuracy_sum(logits: torch.Tensor, batch: dict) -> float:
    """Sum over the batch of the score of the predicted answer: VQA soft score when given, else 0/1."""
    pred = logits.argmax(dim=1)
    if "soft_target" in batch:
        return batch["soft_target"].gather(1, pred[:, None]).sum().item()
    return (pred == batch["target"]).sum().item()


@torch.no_grad()
def evaluate(model, data: DataSplits, cfg: RunConfig, device: torch.device) -> tuple[float, float, torch.Tensor | None]:
    """Mean validation loss, the score (accuracy, or IoU@0.50 for segmentation) and the predicted
    class of every validation sample (None for segmentation)."""
    model.eval()
    loss_sum, score_sum, count, preds = 0.0, 0.0, 0, []
    intersection, union = 0, 0
    loader = make_loader(data.val, distributed.val_batches(len(data.val), cfg.train.batch_size), data, cfg, device)
    for batch in loader:
        batch = to_device(batch, device, cfg.train.channels_last)
        with autocast_context(device, cfg.train.amp):
            logits = model(**{k: batch[k] for k in data.input_keys})
        n = logits.shape[0]
        loss_sum += compute_loss(logits, batch, cfg, data.task).item() * n
        count += n
        if data.task == "segmentation":
            inter, uni = iou_counts(torch.sigmoid(logits.float()), batch["mask"], IOU_THRESHOLD)
            intersection, union = intersection + inter, union + uni
        else:
            score_sum += batch_accuracy_sum(logits, batch)
            preds.append(logits.argmax(dim=1).cpu())
    loss_sum, score_sum, count = distributed.sum_over_ranks(loss_sum, score_sum, count)  # whole split
    if data.task == "segmentation":  # over the whole split; no object and none predicted: perfect
        intersection, union = distributed.sum_over_ranks(intersection, union)
        return loss_sum / count, iou_of_counts(intersection, union), None
    preds = distributed.gather_predictions(torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long))
    return loss_sum / count, score_sum / count, preds


def rng_state() -> dict:
    """Python, NumPy, torch and CUDA generator states as plain values and tensors (weights_only)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Inverse of ``rng_state``."""
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# What torch.load raises for a cut or overwritten checkpoint file.
UNREADABLE_CHECKPOINT = (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile)


def load_resume_checkpoint(path: Path) -> dict:
    """The checkpoint to resume from; a damaged one is refused naming it and the previous intact one."""
    try:
        return runs.load_checkpoint(path)
    except UNREADABLE_CHECKPOINT as err:
        reason = f"{type(err).__name__}: {str(err).strip()[:200]}"
    earlier = [p for p in runs.checkpoints(path.parent.parent) if p != path]
    for candidate in reversed(earlier):
        try:
            runs.load_checkpoint(candidate)
        except UNREADABLE_CHECKPOINT:
            continue  # damaged too: try the one before
        raise ConfigError(f"{path}: the checkpoint cannot be read ({reason}); the previous "
                          f"intact checkpoint is {candidate}: move {path.name} out of {path.parent} and "
                          "resume again to continue from it")
    raise ConfigError(f"{path}: the checkpoint cannot be read ({reason}) and there is no "
                      "earlier intact checkpoint: start the run again")


def check_history(metrics_file: Path, rows: list[dict], ckpt_path: Path, ckpt: dict) -> list[dict]:
    """The metrics rows up to the checkpoint's epoch, refused unless they match the checkpoint's own
    record (its history, or the last row for checkpoints written before the history was kept)."""
    epoch = ckpt["epoch"]
    kept = [r for r in rows if r["epoch"] <= epoch]
    expected = ckpt.get("history") or [ckpt["metrics"]]
    got = {r["epoch"]: r for r in kept}
    problems = []
    if "history" in ckpt and [r["epoch"] for r in kept] != list(range(1, epoch + 1)):
        problems.append(f"it has epochs {[r['epoch'] for r in kept]} up to epoch {epoch}, "
                        f"the checkpoint has 1-{epoch}")
    for want in expected:
        row = got.get(want["epoch"])
        if row is None:
            if not problems:
                problems.append(f"epoch {want['epoch']} is missing")
            continue
        for column in EXACT_METRIC_COLUMNS:
            if not same_number(row[column], want[column]):
                problems.append(f"epoch {want['epoch']} {column} is {row[column]!r}, the checkpoint "
                                f"recorded {want[column]!r}")
    if problems:
        raise ConfigError(f"resume: {metrics_file} disagrees with checkpoint {ckpt_path}: "
                          f"{'; '.join(problems[:3])}: restore metrics.csv, or start the run again")
    return ckpt.get("history") or kept


def same_number(a: float, b: float) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


@dataclass
class ResumePoint:
    """An interrupted run checked against its own records, ready to continue (``prepare_resume``).

    summary: its ``summary.json``; None when that is missing or unreadable (``rebuilt`` says which):
        ``restore_run`` then writes a whole new record, as for a new run, noting that it was rebuilt.
    checkpoint, ckpt, history: its last checkpoint (None: killed before the first) and what it
        holds, and the ``metrics.csv`` rows up to it.
    """

    run_dir: Path
    summary: dict | None
    checkpoint: Path | None
    ckpt: dict | None = None
    history: list[dict] = field(default_factory=list)
    rebuilt: str | None = None


# What a run records about itself at its start (summary.json) and must still hold on resume.
RECORDED_KEYS = ("experiment", "name", "seed")


def config_differences(have: dict, want: dict) -> list[tuple[str, object, object]]:
    """(dotted key, value in ``have``, value in ``want``) of every key that differs, the keys a
    resumption may change (``RESUME_FREE_KEYS``) left out. A key added to RunConfig after the run
    started (train.compile…) is missing from its record: it counts at its default."""
    defaults = flatten(RunConfig().to_dict())
    a, b = {**defaults, **flatten(have)}, {**defaults, **flatten(want)}
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if k not in RESUME_FREE_KEYS and json.dumps(a.get(k)) != json.dumps(b.get(k))]


def read_summary_for_resume(summary_file: Path) -> tuple[dict | None, str | None]:
    """The run's summary, or (None, why it cannot be used)."""
    if not summary_file.is_file():
        return None, f"{summary_file} is missing"
    try:
        summary = runs.read_json_record(summary_file)
    except ConfigError as err:
        return None, str(err)
    missing = [k for k in (*RECORDED_KEYS, "model", "config_hash") if k not in summary]
    if missing:
        return None, f"{summary_file} lacks {', '.join(missing)}"
    return summary, None


def prepare_resume(cfg: RunConfig, resume: str | Path) -> ResumePoint:
    """Check that ``resume`` is a run folder of this same config, as the run recorded it at its
    start, and read its last checkpoint and metrics; any difference is refused naming the key.

    ``cfg`` is compared with the folder's ``params.yaml``, and ``params.yaml`` with the config in
    the last checkpoint (written by the run itself) and with the experiment, name, seed, model and
    config hash in ``summary.json``. A missing or unreadable ``summary.json`` is rebuilt from the
    checkpoint, or refused when there is none.
    """
    run_dir = resolve(resume)
    params_file = run_dir / "params.yaml"
    if not params_file.is_file():
        raise ConfigError(f"resume {run_dir}: not a run folder (no params.yaml)")
    saved = read_yaml(params_file)
    if not isinstance(saved, dict):
        raise ConfigError(f"resume {run_dir}: {params_file} is not a params mapping")
    differ = [f"{k}: run has {short_repr(a)}, config has {short_repr(b)}"
              for k, a, b in config_differences(saved, cfg.to_dict())]
    if differ:
        raise ConfigError(f"resume {run_dir}: the config differs from the run's params.yaml: " + "; ".join(differ))
    summary, unusable = read_summary_for_resume(run_dir / "summary.json")
    checkpoint = latest_checkpoint(run_dir)
    point = ResumePoint(run_dir=run_dir, summary=summary, checkpoint=checkpoint, rebuilt=unusable)
    if summary is not None:
        recorded = {**{k: summary[k] for k in RECORDED_KEYS}, "model.name": summary["model"]}
        for key, value in recorded.items():
            if json.dumps(flatten(saved).get(key)) != json.dumps(value):
                raise ConfigError(f"resume {run_dir}: {key} is {short_repr(flatten(saved).get(key))} in "
                                  f"params.yaml but {short_repr(value)} in summary.json (recorded at the "
                                  "start): restore params.yaml, or start a new run")
        if summary.get("status") in ENDED_STATUSES:
            return point
    if checkpoint is None:
        if summary is None:
            raise ConfigError(f"resume {run_dir}: {unusable} and there is no checkpoint to rebuild it "
                              "from: start the run again")
        # The hash holds the device type the run resolved: that of summary.json's device, or here.
        on_recorded_device = {**saved, "train": {**saved.get("train", {}), "device": summary.get("device", "auto")}}
        hashes = {config_hash(saved), config_hash(on_recorded_device)}
        if summary["config_hash"] not in hashes:
            raise ConfigError(f"resume {run_dir}: params.yaml (or a weights file it names) changed after the run "
                              f"started: its config_hash is {config_hash(saved)}, summary.json recorded "
                              f"{summary['config_hash']}: restore it, or start a new run")
        return point
    ckpt = load_resume_checkpoint(checkpoint)
    differ = config_differences(saved, ckpt.get("config") or saved)
    if differ:
        listed = "; ".join(f"{k} is {short_repr(a)} in params.yaml but {short_repr(b)} in the checkpoint"
                           for k, a, b in differ[:4])
        raise ConfigError(f"resume {run_dir}: params.yaml differs from what the run trained with (checkpoint "
                          f"{checkpoint.name}): {listed}{'; …' if len(differ) > 4 else ''}: restore "
                          "params.yaml, or start a new run")
    metrics_file = run_dir / METRICS_FILE
    if not metrics_file.is_file():
        raise ConfigError(f"resume: {metrics_file} is missing (checkpoint {checkpoint} "
                          f"is at epoch {ckpt['epoch']}): restore it, or start the run again")
    point.ckpt = ckpt
    point.history = check_history(metrics_file, read_metrics_rows(metrics_file), checkpoint, ckpt)
    return point


def resolve_auto_batch(cfg: RunConfig, data: DataSplits, device: torch.device,
                       point: ResumePoint | None) -> dict | None:
    """``batch_size: auto`` → the measured choice (``bench.choose_batch_size``); a resumed run keeps
    the batch size it started with, so its batch order is unchanged. None for a fixed batch size."""
    if cfg.train.batch_size != "auto":
        return None
    if point is not None and point.summary is None and point.checkpoint is not None:
        # The choice lived in the lost summary.json; measuring again may choose another size,
        # which would change the batch order and the schedule mid-run.
        raise ConfigError(f"resume {point.run_dir}: summary.json held the batch size train.batch_size auto chose, "
                          "and it is lost: set train.batch_size to the size the run trained with, or start again")
    if point is not None and point.summary.get("batch_size_auto"):
        choice = point.summary["batch_size_auto"]
    elif distributed.is_main():
        # bench (pandas, FLOP counting) loads only for auto
        from vqalab.bench import choose_batch_size

        choice = choose_batch_size(cfg, data, device)
    else:
        choice = None  # measured on rank 0 only: every rank must train the same number of steps
    return distributed.from_main(choice)


def fit(cfg: RunConfig, data: DataSplits | None = None, *, resume: str | Path | None = None,
        on_start: Callable[[Path], None] | None = None,
        on_epoch: Callable[[dict], str | None] | None = None) -> RunResult:
    """Train one run and return its folder and summary.

    cfg: the resolved run configuration (``load_config`` / ``build_config``).
    data: loaded splits to reuse across runs (a sweep loads them once); None: built from ``cfg.data``.
    resume: the folder of an interrupted (even killed) run of this same config. Training continues
        there from its last checkpoint; ``metrics.csv`` rows after that epoch are dropped and trained
        again, so nothing is duplicated. A run that already ended (completed, diverged or pruned) is
        returned unchanged. None: train from scratch into a new run folder.
    on_start: called with the run folder once it holds ``params.yaml`` and ``summary.json``, before
        the first step (a sweep worker records the folder while the run is still training).
    on_epoch: called with each epoch's metrics row once it is in ``metrics.csv``; a returned name
        (a sweep's pruner, e.g. ``"asha"``) stops the run after that epoch's checkpoint as
        ``pruned``, with ``pruned_by`` and ``pruned_at_epoch`` in ``summary.json``. None: never.

    The run folder is locked while training: another ``fit`` on it raises ``runs.FolderBusy``.
    Ctrl-C or SIGTERM end the run ``interrupted`` and raise ``RunInterrupted`` (a KeyboardInterrupt)
    carrying the resume command. A full disk raises ``runs.DiskFullError`` naming the file.
    """
    # Checked before any data is loaded: the device exists and the output can be written.
    device = select_device(cfg.train.device)
    with contextlib.ExitStack() as held, sigterm_as_interrupt():  # held: the run folder's lock
        point = None
        if resume is not None:
            point = lock_resume_point(cfg, resume, held)
            if point.summary is not None and point.summary.get("status") in ENDED_STATUSES:
                log.info("run %s already %s: nothing to resume", point.run_dir, point.summary["status"])
                return RunResult(run_dir=point.run_dir, summary=point.summary)
            distributed.check_resume(point.run_dir, point.summary)  # the same number of processes
        else:
            runs.check_writable_folder(cfg.runs_root, "runs_root")
        setup = prepare_training(cfg, data, device, point)
        state = new_run(setup, held) if point is None else restore_run(setup, point)
        publish_start(setup, state, on_start)
        train_to_the_end(setup, state, on_epoch)
    return RunResult(run_dir=state.run_dir, summary=state.summary)


def lock_resume_point(cfg: RunConfig, resume: str | Path, held: contextlib.ExitStack) -> ResumePoint:
    """Lock the run folder to resume (the lock joins ``held``), then check and read its state."""
    run_dir = resolve(resume)
    if not (run_dir / "params.yaml").is_file():
        raise ConfigError(f"resume {run_dir}: not a run folder (no params.yaml)")
    held.enter_context(runs.folder_lock(run_dir, "run folder"))  # before reading its state
    return prepare_resume(cfg, run_dir)


@dataclass
class Training:
    """What ``prepare_training`` builds for a run: data, model, optimizer, schedule, loss scaler."""

    cfg: RunConfig  # as trained: ``batch_size: auto`` resolved
    asked: RunConfig  # as asked: params.yaml and the config hash keep it
    auto_batch: dict | None  # the measured batch size choice (``resolve_auto_batch``)
    data: DataSplits
    device: torch.device  # this rank's under torchrun
    model: torch.nn.Module  # as built (compiled when configured): trained and evaluated
    module: torch.nn.Module  # the uncompiled module: what checkpoints save and load
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    model_name: str  # with model_kwargs and weight_files: recorded in every checkpoint
    model_kwargs: dict
    weight_files: dict
    steps_per_epoch: int
    total_steps: int
    threads: ThreadChoice
    thread_fields: dict  # the thread choice as summary.json records it


@dataclass
class RunState:
    """Where a run stands: its folder and record, the epochs done and the optimizer steps taken."""

    run_dir: Path
    summary: dict
    history: list[dict] = field(default_factory=list)  # metrics.csv's rows
    step: int = 0
    start_epoch: int = 1
    best_confusion: torch.Tensor | None = None  # of the best epoch so far (classification)
    best_predictions: torch.Tensor | None = None  # (N_val,) its predicted classes, int32


def prepare_training(cfg: RunConfig, data: DataSplits | None, device: torch.device,
                     point: ResumePoint | None) -> Training:
    """Data, the batch size ``auto`` chooses, model, optimizer, LR schedule and loss scaler of a run
    (``point``: the run being resumed, whose weights come from its checkpoint)."""
    seed_everything(cfg.seed)  # in case a data builder draws from the global generators
    if data is None:
        data = build_data(cfg.data)
    check_task(cfg, data)
    check_mixup(cfg, data)
    device = distributed.setup(device)  # under torchrun: this rank's device
    asked = cfg
    auto_batch = resolve_auto_batch(cfg, data, device, point)
    if auto_batch is not None:
        cfg = cfg.model_copy(deep=True)
        cfg.train.batch_size = auto_batch["batch_size"]
    # Seeded again so the model is initialised alike whether or not the data was passed in.
    seed_everything(cfg.seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels
        torch.cuda.reset_peak_memory_stats(device)  # this run's peak, not an earlier run's or the measurement's

    model_name, model_kwargs = model_spec(cfg, data)
    weight_files = runs.weight_file_digests(model_kwargs)  # what the weights files held
    # A resumed run's weights come from its checkpoint: no weights file is read (it may be gone).
    with weight_files_off() if point is not None and point.checkpoint is not None else nullcontext():
        model = build_model(cfg, data, device)  # channels_last and torch.compile as configured
    module = uncompiled(model)
    distributed.sync_batchnorm(module, device, model_name)  # under DDP: SyncBatchNorm, in place (or refused)
    optimizer = build_optimizer(model, cfg)

    micro_batches = len(distributed.epoch_batches(len(data.train), cfg.train.batch_size, cfg.seed, 0, data.train_groups))
    # A last, shorter accumulation group still makes an optimizer step.
    steps_per_epoch = math.ceil(micro_batches / cfg.train.grad_accum_steps)
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.schedule, steps_per_epoch, total_steps))

    threads = choose_threads(cfg.train.num_threads)  # the cores free to this run, and why
    thread_fields = {**threads.record(), "interop_threads": set_interop_threads(1)}
    log.info("CPU threads: %d (%s)", threads.threads, threads.reason)
    return Training(cfg=cfg, asked=asked, auto_batch=auto_batch, data=data, device=device, model=model,
                    module=module, optimizer=optimizer, scheduler=scheduler,
                    scaler=make_grad_scaler(device, cfg.train.amp), model_name=model_name,
                    model_kwargs=model_kwargs, weight_files=weight_files, steps_per_epoch=steps_per_epoch,
                    total_steps=total_steps, threads=threads, thread_fields=thread_fields)


def run_fields(t: Training) -> dict:
    """What summary.json says of how this attempt computes: precision, machine, threads, processes."""
    return {**execution_fields(t.cfg), **environment(t.device), **t.thread_fields,
            **distributed.summary_fields(t.cfg.train.batch_size, t.cfg.train.grad_accum_steps)}


def start_record(t: Training, run_dir: Path) -> dict:
    """summary.json of a run starting now: what it trains, on what data, code and machine."""
    cfg = t.cfg
    return {
        "status": "running", "experiment": cfg.experiment, "name": cfg.name, "run_dir": str(run_dir),
        "config_hash": config_hash(t.asked), "batch_size": cfg.train.batch_size,
        **({"batch_size_auto": t.auto_batch} if t.auto_batch is not None else {}), "model": t.model_name,
        "seed": cfg.seed, "params": sum(p.numel() for p in t.model.parameters()),
        "trainable_params": sum(p.numel() for p in t.model.parameters() if p.requires_grad),
        "data": t.data.info, "task": t.data.task, "data_identity": data_status(cfg.data).identity(),
        "code_fingerprint": code_fingerprint(), "weight_files": t.weight_files,
        "steps_per_epoch": t.steps_per_epoch, "total_steps": t.total_steps,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"), **run_fields(t),
    }


def new_run(t: Training, held: contextlib.ExitStack) -> RunState:
    """A new run folder, locked (the lock joins ``held``), holding the config as asked."""
    run_dir = runs.new_run_dir(t.cfg.runs_root, t.cfg.experiment, t.cfg.name)
    held.enter_context(runs.folder_lock(run_dir, "run folder"))
    runs.write_yaml(run_dir / "params.yaml", t.asked.to_dict())
    return RunState(run_dir=run_dir, summary=start_record(t, run_dir))


def restore_run(t: Training, point: ResumePoint) -> RunState:
    """The interrupted run of ``point`` with the states of its last checkpoint restored (none:
    it starts again at epoch 1), and its summary noting this attempt."""
    run_dir, summary = point.run_dir, point.summary
    if summary is None:  # missing or unreadable: a whole record again, never a stripped one
        summary = {**start_record(t, run_dir), "started": None,
                   "summary_rebuilt": f"{point.rebuilt}: rebuilt from {point.checkpoint.name} on resume"}
        log.warning("run %s: %s; summary.json rebuilt from %s", run_dir, point.rebuilt, point.checkpoint)
    state = RunState(run_dir=run_dir, summary=summary)
    if point.ckpt is not None:
        # loaded onto the CPU: the states below are copied to the model's device, wherever
        # the run was before (the RNG states must stay CPU tensors)
        ckpt = point.ckpt
        t.module.load_state_dict(ckpt["model_state"])
        t.optimizer.load_state_dict(ckpt["optimizer_state"])
        t.scheduler.load_state_dict(ckpt["scheduler_state"])
        if t.scaler.is_enabled() and not ckpt["scaler_state"]:
            raise ConfigError(f"resume: checkpoint {point.checkpoint} holds no fp16 loss-scaler state (it was "
                              "written when train.amp fp16 did not apply on the CPU): start the run again")
        t.scaler.load_state_dict(ckpt["scaler_state"])
        state.history, state.step, state.start_epoch = point.history, ckpt["step"], ckpt["epoch"] + 1
        state.best_confusion = ckpt.get("best_confusion")
        state.best_predictions = ckpt.get("best_predictions")
        set_rng_state(ckpt["rng_state"])  # last: building the model drew from the generators
    for stale in (run_dir / runs.CHECKPOINT_DIR).glob(".epoch_*.tmp"):
        stale.unlink(missing_ok=True)  # a save cut short by the interruption
    for stale_key in ("interrupted_by", "resume_command"):
        summary.pop(stale_key, None)  # from the interruption being resumed
    summary.update(status="running", error=None, **run_fields(t))
    summary.setdefault("resumed", []).append(
        {"from_epoch": state.start_epoch - 1, "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    log.info("resuming run %s after epoch %d (step %d)", run_dir, state.start_epoch - 1, state.step)
    return state


def publish_start(t: Training, state: RunState, on_start: Callable[[Path], None] | None) -> None:
    """Write the run folder's records as training (re)starts: metrics.csv (header only, or the rows
    up to the checkpoint), the best epoch's confusion matrix and predictions and summary.json; then
    ``on_start``."""
    write_metrics(state.run_dir / METRICS_FILE, state.history)
    if state.best_confusion is not None:
        write_confusion(state.run_dir, t.data.class_names, state.best_confusion)
    else:
        (state.run_dir / runs.CONFUSION_FILE).unlink(missing_ok=True)  # from a dropped epoch
    if state.best_predictions is not None:
        write_predictions(state.run_dir, t.data.class_names, state.best_predictions)
    else:
        (state.run_dir / runs.PREDICTIONS_FILE).unlink(missing_ok=True)
    runs.write_json(state.run_dir / "summary.json", state.summary)
    if on_start is not None:
        on_start(state.run_dir)
    log.info("run %s: %s on %s, %d params", state.run_dir, t.model_name, t.device, state.summary["params"])


def train_to_the_end(t: Training, state: RunState, on_epoch: Callable[[dict], str | None] | None) -> None:
    """Train the remaining epochs and record how the run ended (completed, pruned, diverged,
    interrupted or failed) in summary.json, whatever happens."""
    summary, t_run = state.summary, time.perf_counter()
    monitor = RunMonitor(state.run_dir, every_n_steps=t.cfg.train.log_every_steps,
                         enabled=t.cfg.train.tensorboard and distributed.is_main(), start_step=state.step)
    with torch_threads(t.threads.threads):
        try:
            pruned_by = train_epochs(t, state, monitor, on_epoch)
            if pruned_by:
                summary.update(status=PRUNED_STATUS, pruned_by=pruned_by, pruned_at_epoch=state.history[-1]["epoch"])
                log.info("run %s pruned by %s after epoch %d", state.run_dir, pruned_by, state.history[-1]["epoch"])
            else:
                summary["status"] = "completed"
            if state.best_confusion is not None:
                summary["per_class_acc"] = per_class_accuracy(state.best_confusion, t.data.class_names)
        except Diverged as err:
            summary.update(status="diverged", diverged_step=err.step, diverged_epoch=err.epoch,
                           diverged_lr=err.lr, error=str(err))
            log.warning("run %s diverged: %s", state.run_dir, err)
        except KeyboardInterrupt as err:  # Ctrl-C, or SIGTERM through sigterm_as_interrupt
            signal_name = getattr(err, "signal_name", "SIGINT")
            summary.update(status="interrupted", error=None, interrupted_by=signal_name,
                           resume_command=f"vqalab train --resume {state.run_dir}")
            log.warning("run %s interrupted by %s", state.run_dir, signal_name)
            raise RunInterrupted(state.run_dir, signal_name) from None
        except BaseException as err:
            summary.update(status="failed", error=f"{type(err).__name__}: {err}")
            raise
        finally:
            monitor.close()
            summary.update(summarise(state.history, t.cfg.train.early_stop_metric),
                           wall_time_s=time.perf_counter() - t_run, finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
            record_end(state.run_dir, summary, len(state.history))


def train_epochs(t: Training, state: RunState, monitor: RunMonitor,
                 on_epoch: Callable[[dict], str | None] | None) -> str | None:
    """The epoch loop: train an epoch, evaluate and record it, ask ``on_epoch``, checkpoint; until
    the last epoch, ``max_steps``, early stopping or the pruner. Returns the pruner's name, if any."""
    cfg = t.cfg
    train_model = distributed.wrap(t.model, t.device)  # DDP under torchrun; ``t.model`` is saved and evaluated
    if state.history and limit_reached(state, cfg):  # resumed after its last epoch's checkpoint
        return None
    for epoch in range(state.start_epoch, cfg.train.epochs + 1):
        row, state.step = train_one_epoch(train_model, t.optimizer, t.scheduler, t.scaler, t.data, cfg, t.device,
                                          epoch, state.step, monitor=monitor)
        record_epoch(t, state, epoch, row, monitor)
        pruned_by = on_epoch(row) if on_epoch is not None else None
        done = bool(pruned_by) or limit_reached(state, cfg)
        if epoch % cfg.train.checkpoint_every == 0 or epoch == cfg.train.epochs or done:
            save_epoch_checkpoint(t, state, epoch, row)
        log.info("epoch %d: train_loss %.4f val_loss %.4f val_acc %.4f", epoch, row["train_loss"],
                 row["val_loss"], row["val_acc"])
        if done:
            return pruned_by
    return None


def limit_reached(state: RunState, cfg: RunConfig) -> bool:
    """Early stopping or ``train.max_steps`` ends the run after this epoch."""
    return should_stop_early(state.history, cfg) or bool(cfg.train.max_steps and state.step >= cfg.train.max_steps)


def record_epoch(t: Training, state: RunState, epoch: int, row: dict, monitor: RunMonitor) -> None:
    """Evaluate the epoch's model and record its row: metrics.csv, history, the best epoch's
    confusion matrix and predictions, TensorBoard. A non-finite validation loss stops the run as diverged."""
    val_loss, val_acc, val_pred = evaluate(t.model, t.data, t.cfg, t.device)
    if not math.isfinite(val_loss):
        raise Diverged(state.step, t.optimizer.param_groups[0]["lr"], "validation loss", epoch)
    row.update(val_loss=val_loss, val_acc=val_acc, peak_memory_mb=peak_memory_mb(t.device))
    check_run_folder(state.run_dir, epoch)  # the writes below would make a removed folder again
    state.history.append(row)
    if val_pred is not None and summarise(state.history, t.cfg.train.early_stop_metric)["best_epoch"] == epoch:
        state.best_confusion = confusion_matrix(torch.as_tensor(t.data.val.targets), val_pred,
                                                len(t.data.class_names))
        write_confusion(state.run_dir, t.data.class_names, state.best_confusion)
        # int32: the checkpoints carry it (exact resume) at 4 bytes per validation item
        state.best_predictions = val_pred.to(torch.int32)
        write_predictions(state.run_dir, t.data.class_names, state.best_predictions)
    append_metrics(state.run_dir / METRICS_FILE, row)
    monitor.epoch_end(row)


def save_epoch_checkpoint(t: Training, state: RunState, epoch: int, row: dict) -> None:
    """Everything an exact resume needs after ``epoch``, and enough to rebuild the model alone."""
    runs.save_checkpoint(runs.checkpoint_path(state.run_dir, epoch), {
        "model_name": t.model_name, "model_kwargs": t.model_kwargs, "weight_files": t.weight_files,
        "model_state": t.module.state_dict(), "optimizer_state": t.optimizer.state_dict(),
        "scheduler_state": t.scheduler.state_dict(), "scaler_state": t.scaler.state_dict(),
        "rng_state": rng_state(), "epoch": epoch, "step": state.step, "config": t.asked.to_dict(),
        "class_names": t.data.class_names, "vocab": t.data.vocab, "metrics": row,
        "history": state.history, "best_confusion": state.best_confusion,
        "best_predictions": state.best_predictions,
    })


def check_run_folder(run_dir: Path, epoch: int) -> None:
    """Stop (the run fails) when the run folder was removed while it trained."""
    if not run_dir.is_dir():
        raise runs.RunFolderLost(f"run folder {run_dir} was removed while the run trained (in epoch {epoch}): "
                                 "nothing more is recorded; start the run again")


def record_end(run_dir: Path, summary: dict, epochs_done: int) -> None:
    """Write the final summary.json; a folder removed or made read-only meanwhile is said in one
    line (``runs.RunFolderLost``) instead of a traceback, and never made again."""
    if not run_dir.is_dir():
        raise runs.RunFolderLost(f"run folder {run_dir} was removed while the run trained (after {epochs_done} "
                                 "epoch(s)): nothing more is recorded; start the run again")
    try:
        runs.write_json(run_dir / "summary.json", summary)
    except runs.DiskFullError:
        raise
    except OSError as err:
        raise runs.RunFolderLost(
            f"run folder {run_dir} cannot be written any more ({err.strerror or err}: {err.filename or run_dir}; "
            f"read-only or removed?): the run stopped, and its summary.json still says 'running', not "
            f"'{summary['status']}'") from err


class DeviceLog:
    """The loss of each micro-batch and the gradient norm of each optimizer step since the last
    read, kept on the device so that the loop never waits for them. ``read`` fetches them in one
    device→host transfer (every ``train.log_every_steps`` steps and at the epoch's end), stops the
    run at the first non-finite one and hands them on to the monitor as it would have had them.

    check_gradients: a non-finite gradient norm means divergence (not with fp16's GradScaler,
        which skips such a step itself).
    """

    def __init__(self, epoch: int, *, check_gradients: bool, monitor: RunMonitor | None):
        self.epoch, self.check_gradients, self.monitor = epoch, check_gradients, monitor
        self.loss_sum = 0.0  # Σ loss × items over the epoch's reads, in the order of the micro-batches
        self._values: list[torch.Tensor] = []  # 0-d, on the device, in the order they were computed
        self._events: list[tuple[str, int, float, int]] = []  # (what, step, lr, items) of each value

    def micro_batch(self, loss: torch.Tensor, items: int, *, step: int, lr: float) -> None:
        """The loss of a micro-batch of ``items`` items, part of optimizer step ``step`` (0-based)."""
        self._values.append(loss.detach())
        self._events.append(("loss", step, lr, items))

    def optimizer_step(self, grad_norm: torch.Tensor, *, step: int, lr: float) -> None:
        """The gradient norm of optimizer step ``step`` (0-based), taken at ``lr``."""
        self._values.append(grad_norm.detach())
        self._events.append(("gradient", step, lr, 0))

    def read(self) -> None:
        """Raises ``Diverged`` naming the first non-finite value's step, LR and kind, the same on
        every rank (``distributed.all_finite``)."""
        if not self._values:
            return
        values = torch.stack([v.float() for v in self._values]).tolist()  # the one host sync
        events, self._values, self._events = self._events, [], []
        for (what, step, lr, items), value, finite in zip(events, values, distributed.all_finite(values)):
            if not finite and (what == "loss" or self.check_gradients):
                raise Diverged(step, lr, what, self.epoch)
            if what == "loss":
                self.loss_sum += value * items
                if self.monitor is not None:
                    self.monitor.micro_batch(value, items)
            elif self.monitor is not None:
                self.monitor.optimizer_step(step + 1, lr=lr, grad_norm=value)


def train_one_epoch(model, optimizer, scheduler, scaler, data: DataSplits, cfg: RunConfig,
                    device: torch.device, epoch: int, step: int,
                    monitor: RunMonitor | None = None) -> tuple[dict, int]:
    """One pass over the training split; returns the epoch's metrics row and the new step count.

    The loop reads nothing back from the device but at ``DeviceLog.read``: every
    ``train.log_every_steps`` optimizer steps (counted over the run) and at the epoch's end.
    ``step_time_s`` is the epoch's time up to its last read over its steps.
    monitor: receives each micro-batch's loss and each optimizer step (TensorBoard scalars), at the reads.

    Raises ``Diverged``, at the read after it, for the first non-finite loss or (without a GradScaler)
    gradient norm: its step, LR and epoch. The steps after it are taken but never checkpointed.
    """
    model.train()
    accum = cfg.train.grad_accum_steps
    batches = distributed.epoch_batches(len(data.train), cfg.train.batch_size, cfg.seed, epoch, data.train_groups)
    # this rank's share of each global batch (1.0 in one process): the DDP step is the global mean's
    weights = distributed.loss_weights(len(data.train), cfg.train.batch_size, cfg.seed, epoch, data.train_groups)
    mix_rng = np.random.default_rng([cfg.seed, epoch, MIXUP_STREAM]) if cfg.train.mixup_alpha > 0 else None
    pending = DeviceLog(epoch, check_gradients=not scaler.is_enabled(), monitor=monitor)
    samples, first_step = 0, step
    t_epoch = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(progress_bar(make_loader(data.train, batches, data, cfg, device), cfg, epoch)):
        group_start = (i // accum) * accum
        group_end = min(group_start + accum, len(batches))  # micro-batches [start, end) make one step
        batch = to_device(batch, device, cfg.train.channels_last)
        lr = optimizer.param_groups[0]["lr"]
        loss = micro_batch_backward(model, scaler, batch, data, cfg, device, mix_rng, sync=i + 1 == group_end,
                                    weight=weights[i], group_size=group_end - group_start)
        n = batch[data.input_keys[0]].shape[0]  # items in this micro-batch (segmentation has no targets)
        pending.micro_batch(loss, n, step=step, lr=lr)
        samples += n
        if i + 1 < group_end:
            continue
        # A non-finite norm is not looked at here: the next read stops the run (diverged).
        grad_norm = optimizer_step(model, optimizer, scaler, cfg.train.clip_norm, skip_non_finite=False)
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        pending.optimizer_step(grad_norm, step=step, lr=lr)
        step += 1
        if step % cfg.train.log_every_steps == 0:
            pending.read()
        if cfg.train.max_steps and step >= cfg.train.max_steps:
            break
    pending.read()  # the steps since the last read; the device has then finished the epoch
    epoch_time = time.perf_counter() - t_epoch
    loss_sum, samples = distributed.sum_over_ranks(pending.loss_sum, samples)  # all ranks' samples
    steps = step - first_step
    row = {"epoch": epoch, "step": step, "train_loss": loss_sum / max(samples, 1),
           "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": epoch_time,
           "step_time_s": epoch_time / steps if steps else math.nan, "samples_per_s": samples / epoch_time}
    return row, step


def micro_batch_backward(model, scaler, batch: dict, data: DataSplits, cfg: RunConfig, device: torch.device,
                         mix_rng: np.random.Generator | None, *, sync: bool, weight: float,
                         group_size: int) -> torch.Tensor:
    """Forward, loss and backward of one micro-batch (mixed up when ``mix_rng`` is given); returns
    its loss, still on the device.

    weight / group_size: the share of the step's gradient (this rank's share of the global batch,
        over the micro-batches of the step). sync: the step's last micro-batch, which all-reduces it.
    """
    mix = None
    if mix_rng is not None:
        batch, lam, perm = mix_batch(batch, mix_rng, cfg.train.mixup_alpha)
        mix = (lam, perm)
    with distributed.no_sync(model, sync=sync):  # one gradient all-reduce per step
        loss = micro_batch_loss(model, batch, input_keys=data.input_keys, task=data.task, cfg=cfg,
                                device=device, amp=cfg.train.amp, mix=mix)
        scaler.scale(loss * weight / group_size).backward()
    return loss.detach()


def progress_bar(loader, cfg: RunConfig, epoch: int):
    """The loader, under a progress bar when ``train.progress``."""
    if not cfg.train.progress:
        return loader
    # imported only when shown: tqdm.auto warns in kernels without widgets
    from tqdm.auto import tqdm

    return tqdm(loader, desc=f"epoch {epoch}", leave=False)


def should_stop_early(history: list[dict], cfg: RunConfig) -> bool:
    patience = cfg.train.early_stop_patience
    if not patience or len(history) <= patience:
        return False
    best = summarise(history, cfg.train.early_stop_metric)["best_epoch"]
    return history[-1]["epoch"] - best >= patience


def summarise(history: list[dict], metric: str = "val_acc") -> dict:
    """Lab note 000's record: best and average loss, first loss, best epoch, times per epoch and step."""
    if not history:
        return {"epochs": 0, "best_epoch": None, "best_val_acc": None}
    key = (lambda r: r["val_acc"]) if metric == "val_acc" else (lambda r: -r["val_loss"])
    best = max(history, key=key)
    return {
        "epochs": len(history),
        "best_epoch": best["epoch"],
        "best_val_acc": max(r["val_acc"] for r in history),
        "best_val_loss": min(r["val_loss"] for r in history),
        "final_val_acc": history[-1]["val_acc"],
        "first_train_loss": history[0]["train_loss"],
        "average_train_loss": float(np.mean([r["train_loss"] for r in history])),
        "best_train_loss": min(r["train_loss"] for r in history),
        "epoch_time_s": float(np.mean([r["epoch_time_s"] for r in history])),
        "step_time_s": float(np.nanmean([r["step_time_s"] for r in history])),
        "samples_per_s": float(np.mean([r["samples_per_s"] for r in history])),
        "steps": history[-1]["step"],
    }
