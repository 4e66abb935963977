"""Run folders and the records in them: params, summary, metrics CSV, confusion matrix,
checkpoints, config hash and environment. Nothing here ever overwrites an earlier result.

A run folder ``runs/<experiment>/<YYYYmmdd-HHMMSS>-<name>/`` is created with ``mkdir`` that fails
if the folder exists, so two runs (even started in the same second) never share one. Files are
written to a temporary name and renamed, so an interrupted write never destroys what was there;
they get the permissions the umask gives, so lab members sharing a machine can read each other's
runs. A folder being written is locked (``folder_lock``): a second writer is refused, naming the
process holding it.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import math
import os
import platform
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml

from vqalab import distributed
from vqalab.data import DATASETS
from vqalab.devices import auto_device_name
from vqalab.io import (
    DiskFullError,
    is_disk_full,
    json_digest,
    lock_folder,
    new_folder,
    open_no_follow,
    read_json_record,
    write_atomically,
)
from vqalab.models import MODELS, WEIGHT_FILE_KEYS, create_model, weight_files_off
from vqalab.params import RunConfig, inert_keys
from vqalab.paths import project_root, resolve, resolve_data
from vqalab.provenance import file_digest
from vqalab.registry import ConfigError, flatten, short_repr

CHECKPOINT_DIR = "checkpoints"
METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
CONFUSION_FILE = "confusion_matrix.csv"
PREDICTIONS_FILE = "val_predictions.csv"  # the best epoch's answer per validation item
PREDICTION_COLUMNS = ["index", "predicted"]
METRIC_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_acc", "lr", "epoch_time_s",
                  "step_time_s", "samples_per_s", "peak_memory_mb"]
INT_COLUMNS = ("epoch", "step")
# Written from the training state, so repeated exactly by a resumed run (times and memory are not).
EXACT_METRIC_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_acc", "lr")

# A run in one of these states is over: resuming it or re-running its sweep point changes nothing.
FINISHED_STATUSES = ("completed", "diverged")
# A run a sweep's pruner stopped early: over too (never resumed), but not a finished run of its
# config (a sweep without that pruner trains the point in full).
PRUNED_STATUS = "pruned"
ENDED_STATUSES = (*FINISHED_STATUSES, PRUNED_STATUS)

# Keys that do not change what is trained: left out of the config hash (sweep reuse).
HASH_FREE_KEYS = ("name", "runs_root", "train.progress", "train.tensorboard", "train.log_every_steps")




class RunFolderLost(OSError):
    """The run folder was removed, or became unwritable (e.g. remounted read-only), while the run trained."""

    def __str__(self) -> str:
        return self.args[0]


@contextmanager
def folder_lock(folder: Path, what: str, lock_file: Path | None = None) -> Iterator[None]:
    """``io.lock_folder`` on rank 0 only: the ranks of one torchrun job share their run folder."""
    if distributed.launch_rank() != 0:
        yield
        return
    with lock_folder(folder, what, lock_file):
        yield


def check_writable_folder(path: str | Path, what: str) -> Path:
    """``path`` resolved, refused now (not after the data loaded) if it cannot hold new folders."""
    folder = resolve(path)
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} = {str(path)!r}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} = {str(path)!r}: {existing} is not writable by this user")
    return folder


def safe_name(name: str) -> str:
    """Folder-safe version of a user-typed name (``<script>`` → ``script``)."""
    cleaned = re.sub(r"[^A-Za-z0-9._=+-]+", "_", name).strip("._")
    return cleaned[:80] or "run"


def new_run_dir(runs_root: str | Path, experiment: str, name: str) -> Path:
    """A new, empty run folder (under torchrun: rank 0's, shared with the other ranks)."""
    return distributed.share_run_dir(lambda: new_folder(
        resolve(runs_root) / safe_name(experiment), f"{time.strftime('%Y%m%d-%H%M%S')}-{safe_name(name)}"))


def atomic_write_bytes(path: Path, write) -> None:
    """``io.write_atomically`` (temporary file, fsync, rename over ``path``) on rank 0 only:
    under torchrun the ranks hold the same state, so the others skip the write."""
    if distributed.is_main():
        write_atomically(path, write)


def append_text(path: Path, text: str) -> None:
    """Append to a file (e.g. a metrics row), reporting a full disk like ``atomic_write_bytes``."""
    try:
        with os.fdopen(open_no_follow(path, os.O_WRONLY | os.O_APPEND, "file"), "a", newline="") as f:
            f.write(text)
    except OSError as err:
        if is_disk_full(err, path.parent):
            raise DiskFullError(path) from err
        raise


def write_json(path: Path, data: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write(json.dumps(data, indent=2, default=str).encode()))


def write_yaml(path: Path, data: Any) -> None:
    atomic_write_bytes(path, lambda f: f.write(yaml.safe_dump(data, sort_keys=False).encode()))


def save_checkpoint(path: Path, payload: dict) -> None:
    atomic_write_bytes(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path) -> dict:
    """Checkpoints hold only tensors and plain Python values: ``weights_only=True`` loads them."""
    return torch.load(resolve(path), map_location="cpu", weights_only=True)


def model_from_checkpoint(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from the checkpoint alone (its registry name, resolved kwargs and
    weights): no weights file is read (``weight_files_off``), so it loads on a machine without
    the files the model was first built from."""
    ckpt = load_checkpoint(path)
    with weight_files_off():
        model = create_model(ckpt["model_name"], **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model_state"])
    model.eval()
    return model, ckpt


def weight_file_digests(model: dict) -> dict[str, str | None]:
    """SHA-256 of each weights file a model section (or a model's kwargs) names, by key (None: the
    file is missing). Recorded in checkpoints; the config hash holds them instead of the paths."""
    return {key: file_digest(resolve_data(model[key])) for key in WEIGHT_FILE_KEYS if model.get(key)}


def checkpoint_path(run_dir: Path, epoch: int) -> Path:
    return run_dir / CHECKPOINT_DIR / f"epoch_{epoch:03d}.pt"


def checkpoints(run_dir: str | Path) -> list[Path]:
    """The run's ``epoch_*.pt`` files, lowest epoch first."""
    return sorted((resolve(run_dir) / CHECKPOINT_DIR).glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of the highest epoch in ``run_dir`` (None if there is none).

    Saves go to a hidden temporary file renamed at the end, so every ``epoch_*.pt`` is complete
    (unless damaged afterwards: ``train.load_resume_checkpoint`` says so).
    """
    found = checkpoints(run_dir)
    return found[-1] if found else None


def read_metrics_rows(path: Path) -> list[dict]:
    """Rows of a run's ``metrics.csv`` with numbers parsed (floats round-trip exactly through repr).

    A cell that is not a number is refused naming the file, line and column.
    """
    rows = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            parsed = {}
            for key, value in row.items():
                try:
                    parsed[key] = int(value) if key in INT_COLUMNS else float(value) if value != "" else math.nan
                except (TypeError, ValueError):
                    raise ConfigError(f"{path}: line {reader.line_num}: {key} = {short_repr(value)}: expected "
                                      f"{'an integer' if key in INT_COLUMNS else 'a number'} (restore "
                                      "metrics.csv, or start the run again)") from None
            rows.append(parsed)
    return rows


def read_summary(run_dir: str | Path) -> dict:
    """A run's ``summary.json`` (a damaged one is refused naming the file: ``io.read_json_record``)."""
    return read_json_record(Path(run_dir) / SUMMARY_FILE)


def write_csv(path: Path, rows: list[list]) -> None:
    """Write a whole CSV file at once (atomically)."""
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    atomic_write_bytes(path, lambda f: f.write(buffer.getvalue().encode()))


def write_metrics(path: Path, history: list[dict]) -> None:
    """Write the whole ``metrics.csv`` at once: used when a resumed run drops rows."""
    write_csv(path, [METRIC_COLUMNS, *([row[c] for c in METRIC_COLUMNS] for row in history)])


def append_metrics(path: Path, row: dict) -> None:
    """One epoch's row at the end of ``metrics.csv``."""
    if not distributed.is_main():
        return  # one run folder: rank 0 writes it
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerow([row[c] for c in METRIC_COLUMNS])
    append_text(path, buffer.getvalue())


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts: rows true class, columns predicted class."""
    k = num_classes
    return torch.bincount(targets * k + preds, minlength=k * k).reshape(k, k)


def write_confusion(run_dir: Path, class_names: list[str], matrix: torch.Tensor) -> None:
    """``confusion_matrix.csv`` of the best epoch so far (rows: true class, columns: predicted)."""
    write_csv(run_dir / CONFUSION_FILE, [["true\\predicted", *class_names],
                                         *([name, *counts] for name, counts in zip(class_names, matrix.tolist()))])


def write_predictions(run_dir: Path, class_names: list[str], preds: torch.Tensor) -> None:
    """``val_predictions.csv`` of the best epoch so far: the predicted class name of each validation
    item, by its index in the split (what per-type accuracies are computed from)."""
    write_csv(run_dir / PREDICTIONS_FILE, [PREDICTION_COLUMNS, *([i, class_names[p]] for i, p in enumerate(preds.tolist()))])


def read_predictions(run_dir: str | Path) -> list[str]:
    """The predicted class names of ``val_predictions.csv``, in validation item order; a missing or
    damaged file is refused naming it."""
    path = Path(run_dir) / PREDICTIONS_FILE
    if not path.is_file():
        raise ConfigError(f"{path} is missing: the run predates per-item predictions or is not a "
                          "classification run (retrain it, e.g. with VQALAB_FRESH=1)")
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or rows[0] != PREDICTION_COLUMNS:
        raise ConfigError(f"{path}: header {rows[0] if rows else 'missing'}: expected {','.join(PREDICTION_COLUMNS)}")
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 2 or row[0] != str(line - 2):
            raise ConfigError(f"{path}: line {line}: {short_repr(row)}: expected index {line - 2} and "
                              "one predicted answer (restore the file, or retrain the run)")
    return [row[1] for row in rows[1:]]


def per_class_accuracy(matrix: torch.Tensor, class_names: list[str]) -> dict[str, float]:
    """Recall per true class from a confusion matrix (classes never seen: NaN)."""
    return {name: (row[i] / total if (total := sum(row)) else math.nan)
            for i, (name, row) in enumerate(zip(class_names, matrix.tolist()))}


def with_builder_defaults(section: dict, registry) -> dict:
    """A ``model`` / ``data`` section with every keyword its builder defaults filled in, so that
    ``{"name": "ir_vit"}``, ``{"name": "ir50_vit"}`` (its former name) and ``{"name": "ir_vit",
    "attn_drop": 0.0}`` are the same run."""
    try:
        params = registry.parameters(section.get("name"))
    except ConfigError:
        return dict(section)  # a builder no longer registered: compare the section as written
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    named = {**section, "name": registry.canonical(section["name"])}  # a former name is the same builder
    return json.loads(json.dumps({**defaults, **named}, default=str))  # tuples → lists, as to_dict


def device_type(name: str) -> str:
    """``train.device`` as the kind of device a run trains on here: auto → cuda when available,
    else cpu; cuda:1 → cuda."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name).type


CONFIG_HASH_DIGITS = 16  # recorded in every summary.json: a new length would make every run new


def config_hash(cfg: RunConfig | dict) -> str:
    """Identity of what a run trains: equal for two configs that differ only in HASH_FREE_KEYS, in
    spelling out a model / data builder's default, or in keys the run never reads
    (``config.inert_keys``: momentum with adam…). The device enters as the type it resolves to
    here (cpu, cuda), a weights file by the digest of its bytes (a file replaced in place is a new
    run; the same file moved is not).

    ``cfg``: a RunConfig or its ``to_dict()`` form (e.g. a run's ``params.yaml``).
    """
    tree = dict(cfg.to_dict() if isinstance(cfg, RunConfig) else cfg)
    for section, registry in (("model", MODELS), ("data", DATASETS)):
        if isinstance(tree.get(section), dict):
            tree[section] = with_builder_defaults(tree[section], registry)
    if isinstance(tree.get("model"), dict):
        tree["model"] = {**tree["model"], **{key: {"sha256": digest}
                                             for key, digest in weight_file_digests(tree["model"]).items()}}
    flat = {k: v for k, v in flatten(tree).items() if k not in HASH_FREE_KEYS}
    for key in inert_keys(flat):
        del flat[key]
    if isinstance(flat.get("train.device"), str):
        flat["train.device"] = device_type(flat["train.device"])
    return json_digest(flat, length=CONFIG_HASH_DIGITS)


def git_output(root: Path, *args: str) -> str | None:
    """Output of ``git args`` in ``root`` (None: no git, not a repository, or it failed)."""
    try:
        out = subprocess.run(["git", *args], check=False, capture_output=True, text=True, cwd=root, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device | None = None, root: Path | None = None) -> dict:
    """Where something ran: device, GPU, CPU and its cores, Python, torch and CUDA versions, the
    git commit and whether tracked files differ from it. Recorded in every run's summary and in
    the weekly report.

    device: the device used (None: what ``train.device: auto`` means here, ``devices.auto_device_name``).
    root: the project folder whose git commit is recorded (None: the project root).
    """
    device = device if device is not None else torch.device(auto_device_name())
    root = root if root is not None else project_root()
    on_gpu = device.type == "cuda"
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if on_gpu else None,
        "cpu": cpu_name(),
        "cpu_cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "git_commit": git_output(root, "rev-parse", "--short", "HEAD") or None,
        "git_dirty": bool(git_output(root, "status", "--porcelain", "--untracked-files=no")),
    }
