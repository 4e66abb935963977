"""The one training loop. Trains a single run described by a ``RunConfig`` into a new run folder.

Run folder contents: ``params.yaml`` (resolved config), ``metrics.csv`` (one row per epoch),
``summary.json`` (status, best epoch, environment), ``checkpoints/epoch_NNN.pt``.
Sweeps are an outer loop over ``fit``; the loop knows nothing of them.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import platform
import random
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vqalab import runs
from vqalab.config import RunConfig
from vqalab.data import DataSplits, build_data
from vqalab.data.samplers import epoch_batches, eval_batches
from vqalab.models import create_model
from vqalab.schedules import lr_factor

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_acc", "lr", "epoch_time_s",
                  "step_time_s", "samples_per_s", "peak_memory_mb"]


@dataclass
class RunResult:
    run_dir: Path
    summary: dict


class Diverged(RuntimeError):
    def __init__(self, step: int, lr: float, what: str):
        super().__init__(f"non-finite {what} at step {step} (lr {lr:.3g})")
        self.step, self.lr, self.what = step, lr, what


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device = {name!r} but CUDA is not available here")
    return device


def autocast_context(device: torch.device, amp: str):
    """bf16/fp16 autocast on CUDA; full precision on the CPU (where AMP is not the point)."""
    if device.type != "cuda" or amp == "off":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA allocator peak on a GPU; the process's peak resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "adam":
        return torch.optim.Adam(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    if o.name == "adamw":
        return torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)


def compute_loss(logits: torch.Tensor, batch: dict, cfg: RunConfig) -> torch.Tensor:
    if cfg.train.loss == "bce":
        # Soft VQA scores; scaled by the number of answers as in the bottom-up-attention recipe.
        return F.binary_cross_entropy_with_logits(logits.float(), batch["soft_target"]) * logits.shape[1]
    return F.cross_entropy(logits.float(), batch["target"], label_smoothing=cfg.train.label_smoothing)


def batch_accuracy_sum(logits: torch.Tensor, batch: dict) -> float:
    """Sum over the batch of the score of the predicted answer: VQA soft score when given, else 0/1."""
    pred = logits.argmax(dim=1)
    if "soft_target" in batch:
        return batch["soft_target"].gather(1, pred[:, None]).sum().item()
    return (pred == batch["target"]).sum().item()


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def make_loader(dataset, batches, data: DataSplits, cfg: RunConfig, device: torch.device) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batches, collate_fn=data.collate,
                      num_workers=cfg.train.num_workers, pin_memory=device.type == "cuda")


@torch.no_grad()
def evaluate(model, data: DataSplits, cfg: RunConfig, device: torch.device) -> tuple[float, float, torch.Tensor]:
    """Mean validation loss, accuracy and the predicted class of every validation sample."""
    model.eval()
    loss_sum, score_sum, count, preds = 0.0, 0.0, 0, []
    loader = make_loader(data.val, eval_batches(len(data.val), cfg.train.batch_size), data, cfg, device)
    for batch in loader:
        batch = to_device(batch, device)
        with autocast_context(device, cfg.train.amp):
            logits = model(**{k: batch[k] for k in data.input_keys})
        n = len(batch["target"])
        loss_sum += compute_loss(logits, batch, cfg).item() * n
        score_sum += batch_accuracy_sum(logits, batch)
        count += n
        preds.append(logits.argmax(dim=1).cpu())
    return loss_sum / count, score_sum / count, torch.cat(preds)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def environment(device: torch.device) -> dict:
    env = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "git_commit": runs.git_commit()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def fit(cfg: RunConfig, data: Optional[DataSplits] = None) -> RunResult:
    """Train one run into a new folder. ``data`` may be passed to reuse loaded splits across runs."""
    seed_everything(cfg.seed)
    data = data or build_data(cfg.data, seed=cfg.seed)
    device = select_device(cfg.train.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels

    model_spec = dict(cfg.model)
    model_name = model_spec.pop("name")
    model_kwargs = {**model_spec, **data.model_kwargs}
    model = create_model(model_name, **model_kwargs).to(device)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.train.amp == "fp16")

    micro_batches = len(epoch_batches(len(data.train), cfg.train.batch_size, cfg.seed, 0, data.train_groups))
    steps_per_epoch = max(micro_batches // cfg.train.grad_accum_steps, 1)
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.schedule, steps_per_epoch, total_steps))

    run_dir = runs.new_run_dir(cfg.runs_root, cfg.experiment, cfg.name)
    runs.write_yaml(run_dir / "params.yaml", cfg.to_dict())
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary = {
        "status": "running", "experiment": cfg.experiment, "name": cfg.name, "run_dir": str(run_dir),
        "model": model_name, "seed": cfg.seed, "params": n_params, "trainable_params": n_trainable,
        "data": data.info, "started": time.strftime("%Y-%m-%dT%H:%M:%S"), **environment(device),
    }
    runs.write_json(run_dir / "summary.json", summary)
    log.info("run %s: %s on %s, %d params", run_dir, model_name, device, n_params)

    metrics_file = run_dir / "metrics.csv"
    with open(metrics_file, "w", newline="") as f:
        csv.writer(f).writerow(METRIC_COLUMNS)

    history: list[dict] = []
    step = 0
    t_run = time.perf_counter()
    try:
        for epoch in range(1, cfg.train.epochs + 1):
            row, step = train_one_epoch(model, optimizer, scheduler, scaler, data, cfg, device, epoch, step)
            val_loss, val_acc, val_pred = evaluate(model, data, cfg, device)
            row.update(val_loss=val_loss, val_acc=val_acc, peak_memory_mb=peak_memory_mb(device))
            history.append(row)
            if summarise(history, cfg.train.early_stop_metric)["best_epoch"] == epoch:
                write_confusion(run_dir, data, val_pred)
            with open(metrics_file, "a", newline="") as f:
                csv.writer(f).writerow([row[c] for c in METRIC_COLUMNS])
            if epoch % cfg.train.checkpoint_every == 0 or epoch == cfg.train.epochs:
                runs.save_checkpoint(runs.checkpoint_path(run_dir, epoch), {
                    "model_name": model_name, "model_kwargs": model_kwargs,
                    "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                    "scheduler_state": scheduler.state_dict(), "scaler_state": scaler.state_dict(),
                    "rng_state": rng_state(), "epoch": epoch, "step": step, "config": cfg.to_dict(),
                    "class_names": data.class_names, "vocab": data.vocab, "metrics": row,
                })
            log.info("epoch %d: train_loss %.4f val_loss %.4f val_acc %.4f", epoch, row["train_loss"], val_loss, val_acc)
            if should_stop_early(history, cfg) or (cfg.train.max_steps and step >= cfg.train.max_steps):
                break
        summary["status"] = "completed"
        if (run_dir / "confusion_matrix.csv").is_file():
            summary["per_class_acc"] = per_class_accuracy(run_dir)
    except Diverged as err:
        summary.update(status="diverged", diverged_step=err.step, diverged_lr=err.lr, error=str(err))
        log.warning("run %s diverged: %s", run_dir, err)
    except BaseException as err:
        summary.update(status="failed", error=f"{type(err).__name__}: {err}")
        raise
    finally:
        summary.update(summarise(history, cfg.train.early_stop_metric), wall_time_s=time.perf_counter() - t_run,
                       finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        runs.write_json(run_dir / "summary.json", summary)
    return RunResult(run_dir=run_dir, summary=summary)


def train_one_epoch(model, optimizer, scheduler, scaler, data: DataSplits, cfg: RunConfig,
                    device: torch.device, epoch: int, step: int) -> tuple[dict, int]:
    from tqdm.auto import tqdm

    model.train()
    accum = cfg.train.grad_accum_steps
    batches = epoch_batches(len(data.train), cfg.train.batch_size, cfg.seed, epoch, data.train_groups)
    loader = make_loader(data.train, batches, data, cfg, device)
    loss_sum, samples, step_times = 0.0, 0, []
    t_epoch = time.perf_counter()
    t_step = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    for i, batch in enumerate(tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not cfg.train.progress)):
        batch = to_device(batch, device)
        with autocast_context(device, cfg.train.amp):
            logits = model(**{k: batch[k] for k in data.input_keys})
        loss = compute_loss(logits, batch, cfg)
        lr = optimizer.param_groups[0]["lr"]
        if not torch.isfinite(loss):
            raise Diverged(step, lr, "loss")
        scaler.scale(loss / accum).backward()
        n = len(batch["target"])
        loss_sum += loss.item() * n
        samples += n
        if (i + 1) % accum and i + 1 != len(loader):
            continue
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), cfg.train.clip_norm if cfg.train.clip_norm else float("inf"))
        if not torch.isfinite(grad_norm) and not scaler.is_enabled():
            raise Diverged(step, lr, "gradient")  # with fp16 the scaler skips the step instead
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # time the finished step, not the queued one
        now = time.perf_counter()
        step_times.append(now - t_step)
        t_step = now
        if cfg.train.max_steps and step >= cfg.train.max_steps:
            break
    epoch_time = time.perf_counter() - t_epoch
    row = {"epoch": epoch, "step": step, "train_loss": loss_sum / max(samples, 1),
           "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": epoch_time,
           "step_time_s": float(np.mean(step_times)) if step_times else math.nan,
           "samples_per_s": samples / epoch_time}
    return row, step


def write_confusion(run_dir: Path, data: DataSplits, val_pred: torch.Tensor) -> None:
    """Confusion matrix (rows: true class, columns: predicted) of the best epoch so far."""
    targets = torch.as_tensor(data.val.targets)
    k = len(data.class_names)
    matrix = torch.bincount(targets * k + val_pred, minlength=k * k).reshape(k, k)
    with open(run_dir / "confusion_matrix.csv.tmp", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["true\\predicted", *data.class_names])
        for name, counts in zip(data.class_names, matrix.tolist()):
            writer.writerow([name, *counts])
    os.replace(run_dir / "confusion_matrix.csv.tmp", run_dir / "confusion_matrix.csv")


def per_class_accuracy(run_dir: Path) -> dict[str, float]:
    """Recall per true class from the run's confusion matrix (classes never seen: NaN)."""
    with open(run_dir / "confusion_matrix.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    return {r[0]: (int(r[i + 1]) / total if (total := sum(map(int, r[1:]))) else math.nan)
            for i, r in enumerate(rows)}


def should_stop_early(history: list[dict], cfg: RunConfig) -> bool:
    patience = cfg.train.early_stop_patience
    if not patience or len(history) <= patience:
        return False
    best = summarise(history, cfg.train.early_stop_metric)["best_epoch"]
    return history[-1]["epoch"] - best >= patience


def summarise(history: list[dict], metric: str = "val_acc") -> dict:
    """Seed 000's record: best and average loss, first loss, best epoch, times per epoch and step."""
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
