"""Watching runs: TensorBoard event files in every run folder, and the runs table for the terminal.

``metrics.csv`` and ``summary.json`` stay the record that notebooks and reports read; the event
files under ``<run>/tb/`` are a view for TensorBoard while a run is going. Each run writes:

- every ``train.log_every_steps`` optimizer steps: ``train/loss`` (mean over those steps),
  ``train/lr``, ``train/grad_norm``, ``train/samples_per_s``;
- every epoch: ``val/loss``, ``val/acc``, ``train/epoch_loss``, ``system/peak_memory_mb``;
- sweep points also write their grid values and final figures for the HParams tab into
  ``<run>/tb/hparams/`` (``write_hparams``).

``vqalab tb`` names each run in TensorBoard by its run folder name.
"""

from __future__ import annotations

import logging
import math
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from vqalab.io import read_json_record
from vqalab.paths import resolve
from vqalab.registry import ConfigError, flatten

log = logging.getLogger(__name__)

TB_DIR = "tb"
HPARAMS_DIR = "hparams"  # inside TB_DIR: a fixed name, so the HParams tab finds every sweep point
# Final figures shown beside the hyperparameters in the HParams tab (when the summary has them).
HPARAM_METRICS = ("best_val_acc", "best_val_loss", "final_val_acc", "best_epoch", "epochs")


class RunMonitor:
    """TensorBoard scalars of one run. ``enabled=False`` gives a monitor that writes nothing.

    start_step: the optimizer step this process starts after (a resumed run: its checkpoint's);
        events an earlier attempt wrote for later steps are purged, so the curves show each step once.
    """

    def __init__(self, run_dir: str | Path, *, every_n_steps: int, enabled: bool = True, start_step: int = 0):
        self.every_n_steps = every_n_steps
        self.writer = None
        self._loss_sum, self._samples, self._t0 = 0.0, 0, time.perf_counter()
        if enabled:
            # Imported only when used: tensorboard's import is slow and notebooks may turn it off.
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TB_DIR),
                                        purge_step=start_step + 1 if start_step else None)

    def micro_batch(self, loss: float, samples: int) -> None:
        """Account one micro-batch's mean loss over ``samples`` items."""
        self._loss_sum += loss * samples
        self._samples += samples

    def optimizer_step(self, step: int, *, lr: float, grad_norm) -> None:
        """Called after optimizer step ``step`` (1-based); writes every ``every_n_steps`` steps."""
        if self.writer is None or step % self.every_n_steps:
            return
        elapsed = time.perf_counter() - self._t0
        scalars = {
            "train/loss": self._loss_sum / max(self._samples, 1),
            "train/lr": lr,
            "train/grad_norm": float(grad_norm),  # a number the training loop read in bulk, or a tensor
            "train/samples_per_s": self._samples / elapsed if elapsed > 0 else math.nan,
        }
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)
        self._loss_sum, self._samples, self._t0 = 0.0, 0, time.perf_counter()

    def epoch_end(self, row: Mapping[str, Any]) -> None:
        """One ``metrics.csv`` row: validation figures and peak memory at the epoch's last step."""
        if self.writer is None:
            return
        step = row["step"]
        for tag, key in (("val/loss", "val_loss"), ("val/acc", "val_acc"),
                         ("train/epoch_loss", "train_loss"), ("system/peak_memory_mb", "peak_memory_mb")):
            value = row.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # an epoch is a natural point for a watcher to see new data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _hparam_value(value: Any) -> int | float | str | bool:
    """The HParams tab takes numbers, strings and booleans; anything else is shown as text."""
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def write_hparams(run_dir: str | Path, hparams: Mapping[str, Any], summary: Mapping[str, Any]) -> Path:
    """Record a sweep point's hyperparameters and final figures for TensorBoard's HParams tab."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    metrics = {f"hparam/{k}": float(summary[k]) for k in HPARAM_METRICS
               if isinstance(summary.get(k), (int, float)) and not isinstance(summary.get(k), bool)}
    folder = Path(run_dir) / TB_DIR / HPARAMS_DIR
    exp, ssi, sei = hparams_summary({k: _hparam_value(v) for k, v in hparams.items()}, metrics)
    with SummaryWriter(log_dir=str(folder)) as writer:  # the same layout as add_hparams, fixed name
        writer.file_writer.add_summary(exp)
        writer.file_writer.add_summary(ssi)
        writer.file_writer.add_summary(sei)
        for key, value in metrics.items():
            writer.add_scalar(key, value)
    return folder


# ---------------------------------------------------------------------------------------------
# `vqalab tb`


def run_folders(targets: list[str], runs_root: str | Path = "runs") -> list[Path]:
    """Run folders named by ``targets``: experiment names (under ``runs_root``) or run folders.

    No targets: every run under ``runs_root``. A target that is neither raises ``FileNotFoundError``
    naming it and where it was looked for.
    """
    root = resolve(runs_root)
    if not targets:
        return sorted(p.parent for p in root.glob("*/*/summary.json"))
    found: list[Path] = []
    for target in targets:
        path = Path(target)
        candidates = [path, root / target] if not path.is_absolute() else [path]
        folder = next((c for c in candidates if c.is_dir()), None)
        if folder is None:
            raise FileNotFoundError(f"{target}: neither a run folder nor an experiment under {root}")
        if (folder / "summary.json").is_file():
            found.append(folder.resolve())
        else:
            runs_in = sorted(p.parent.resolve() for p in folder.glob("*/summary.json"))
            if not runs_in:
                raise FileNotFoundError(f"{folder}: no run folders (*/summary.json) in it")
            found.extend(runs_in)
    return found


def link_logdir(run_dirs: list[Path], folder: Path) -> Path:
    """Fill ``folder`` with one link per run, named by its run folder, to the run's ``tb/``.

    TensorBoard names a run by its path under ``--logdir``, so each run shows under its folder
    name (its HParams entry under ``<name>/hparams``); a name found in two experiments shows as
    ``<experiment>/<name>``.
    """
    seen: set[str] = set()
    for run_dir in run_dirs:
        name = run_dir.name if run_dir.name not in seen else f"{run_dir.parent.name}/{run_dir.name}"
        seen.add(name)
        link = folder / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(run_dir / TB_DIR, target_is_directory=True)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class TensorBoardServer:
    process: subprocess.Popen
    url: str
    logdir: Path  # the folder of links; removed by ``stop``

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Return once the server answers on its port; refuse (naming why) if it ended instead."""
        port = int(self.url.rsplit(":", 1)[1].strip("/"))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = (self.process.stderr.read() or "").strip().splitlines()[-1:] or [f"exit code {self.process.returncode}"]
                self.stop()
                raise ConfigError(f"TensorBoard did not start on 127.0.0.1:{port}: {tail[0]}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise ConfigError(f"TensorBoard did not answer on 127.0.0.1:{port} within {timeout_s:g} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.logdir, ignore_errors=True)


def check_port(port: int) -> None:
    """Refuse a port out of range, or one another program already listens on (its URL is not ours)."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: expected a port number from 1 to 65535 (or no --port: a free one)")
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as err:
            raise ConfigError(f"--port {port}: cannot listen on 127.0.0.1:{port} ({err.strerror}; another "
                              "server may be using it): pick another port, or leave --port out") from None


def start_tensorboard(run_dirs: list[Path], *, port: int | None = None) -> TensorBoardServer:
    """Start TensorBoard (this environment's) on localhost over ``run_dirs``."""
    if port is not None:
        check_port(port)
    port = port or free_port()
    logdir = link_logdir(run_dirs, Path(tempfile.mkdtemp(prefix="vqalab-tb-")))
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
               "--host", "127.0.0.1", "--port", str(port), "--reload_interval", "5"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return TensorBoardServer(process=process, url=f"http://127.0.0.1:{port}/", logdir=logdir)


# ---------------------------------------------------------------------------------------------
# `vqalab runs`


def flat_params(run_dir: Path) -> dict[str, Any]:
    """A run's ``params.yaml`` as dotted keys (``optim.lr``)."""
    return flatten(yaml.safe_load((run_dir / "params.yaml").read_text()) or {})


# Keys that name a run rather than describe it: never shown as a differing parameter.
NAMING_KEYS = ("name", "experiment", "runs_root")


def differing_params(params: list[dict[str, Any]]) -> list[str]:
    """Dotted keys whose value is not the same in every run (missing counts as different)."""
    keys = sorted({k for p in params for k in p} - set(NAMING_KEYS))
    marker = object()
    return [k for k in keys if len({repr(p.get(k, marker)) for p in params}) > 1]


def runs_overview(run_dirs: list[Path]) -> pd.DataFrame:
    """One row per run: status, best metric and epoch, epochs done, duration, and the parameters
    that differ between the listed runs (one column each)."""
    params = [flat_params(d) for d in run_dirs]
    differ = differing_params(params)
    rows = []
    for run_dir, p in zip(run_dirs, params):
        summary = read_json_record(run_dir / "summary.json")
        rows.append({
            "run": run_dir.name,
            "status": summary.get("status"),
            "best_val_acc": summary.get("best_val_acc"),
            "best_epoch": summary.get("best_epoch"),
            "epochs": summary.get("epochs", 0),
            "of_epochs": p.get("train.epochs"),
            "duration_s": summary.get("wall_time_s"),
            **{k: p.get(k) for k in differ},
        })
    df = pd.DataFrame(rows)
    df.attrs["differing"] = differ
    return df


def diff_runs(run_a: Path, run_b: Path) -> pd.DataFrame:
    """Two runs side by side: every parameter that differs, then their final figures."""
    pa, pb = flat_params(run_a), flat_params(run_b)
    rows = [{"key": k, run_a.name: pa.get(k), run_b.name: pb.get(k)} for k in differing_params([pa, pb])]
    sa, sb = (read_json_record(d / "summary.json") for d in (run_a, run_b))
    for key in ("status", *HPARAM_METRICS, "wall_time_s"):
        rows.append({"key": f"summary.{key}", run_a.name: sa.get(key), run_b.name: sb.get(key)})
    return pd.DataFrame(rows, columns=["key", run_a.name, run_b.name])
