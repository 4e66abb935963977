"""The one training loop. Trains a single run described by a ``RunConfig`` into a run folder.

Run folder contents: ``params.yaml`` (resolved config), ``metrics.csv`` (one row per epoch),
``summary.json`` (status, best epoch, environment), ``confusion_matrix.csv`` (best epoch),
``checkpoints/epoch_NNN.pt``.

A run ends ``completed``, ``diverged`` (a non-finite loss or gradient stopped it; step, epoch and LR
are recorded) or ``failed`` (an exception; re-raised). A run interrupted, even killed, continues
with ``fit(cfg, resume=run_dir)`` from its last checkpoint in the same folder and ends with the same
weights and metrics as an uninterrupted run on the CPU: checkpoints hold the model, optimizer,
scheduler, scaler and RNG states, and the batch order is a pure function of (seed, epoch).

Sweeps are an outer loop over ``fit`` (``vqalab.sweep``); the loop knows nothing of them.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import io
import json
import logging
import math
import os
import platform
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from vqalab import distributed, runs
from vqalab.config import RunConfig, read_yaml
from vqalab.data import DATASETS, DataSplits, build_data
from vqalab.models import MODELS, create_model
from vqalab.paths import resolve
from vqalab.registry import ConfigError
from vqalab.schedules import lr_factor

log = logging.getLogger(__name__)

METRIC_COLUMNS = ["epoch", "step", "train_loss", "val_loss", "val_acc", "lr", "epoch_time_s",
                  "step_time_s", "samples_per_s", "peak_memory_mb"]
INT_COLUMNS = ("epoch", "step")

# A run in one of these states is over: resuming it or re-running its sweep point changes nothing.
FINISHED_STATUSES = ("completed", "diverged")

# Keys that do not change what is trained: left out of the config hash (sweep reuse) ...
HASH_FREE_KEYS = ("name", "runs_root", "train.progress")
# ... and allowed to differ between a run and its resumption (e.g. continue on another GPU).
RESUME_FREE_KEYS = ("train.progress", "train.device")

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


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-3}}`` → ``{"optim.lr": 1e-3}`` (dotted keys, as in ``--set``)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def with_builder_defaults(section: dict, registry) -> dict:
    """A ``model`` / ``data`` section with every keyword its builder defaults filled in, so that
    ``{"name": "ir50_vit"}`` and ``{"name": "ir50_vit", "attn_drop": 0.0}`` are the same run."""
    try:
        params = registry.parameters(section.get("name"))
    except ConfigError:
        return dict(section)  # a builder no longer registered: compare the section as written
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    return json.loads(json.dumps({**defaults, **section}, default=str))  # tuples → lists, as to_dict


def config_hash(cfg: RunConfig | dict) -> str:
    """Identity of what a run trains: equal for two configs that differ only in HASH_FREE_KEYS or
    in spelling out a model / data builder's default.

    ``cfg``: a RunConfig or its ``to_dict()`` form (e.g. a run's ``params.yaml``).
    """
    tree = dict(cfg.to_dict() if isinstance(cfg, RunConfig) else cfg)
    for section, registry in (("model", MODELS), ("data", DATASETS)):
        if isinstance(tree.get(section), dict):
            tree[section] = with_builder_defaults(tree[section], registry)
    flat = {k: v for k, v in flatten(tree).items() if k not in HASH_FREE_KEYS}
    text = json.dumps(flat, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    loader = make_loader(data.val, distributed.val_batches(len(data.val), cfg.train.batch_size), data, cfg, device)
    for batch in loader:
        batch = to_device(batch, device)
        with autocast_context(device, cfg.train.amp):
            logits = model(**{k: batch[k] for k in data.input_keys})
        n = len(batch["target"])
        loss_sum += compute_loss(logits, batch, cfg).item() * n
        score_sum += batch_accuracy_sum(logits, batch)
        count += n
        preds.append(logits.argmax(dim=1).cpu())
    loss_sum, score_sum, count = distributed.sum_over_ranks(loss_sum, score_sum, count)  # whole split
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


def environment(device: torch.device) -> dict:
    env = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "git_commit": runs.git_commit()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint of the highest epoch in ``run_dir`` (None if there is none).

    Saves go to a hidden temporary file renamed at the end, so every ``epoch_*.pt`` is complete.
    """
    found = sorted((resolve(run_dir) / runs.CHECKPOINT_DIR).glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    return found[-1] if found else None


def read_metrics(path: Path) -> list[dict]:
    """Rows of a run's ``metrics.csv`` with numbers parsed (floats round-trip exactly through repr)."""
    with open(path, newline="") as f:
        return [{k: (int(v) if k in INT_COLUMNS else float(v) if v != "" else math.nan) for k, v in row.items()}
                for row in csv.DictReader(f)]


def write_metrics(path: Path, history: list[dict]) -> None:
    """Write the whole ``metrics.csv`` at once (atomically): used when a resumed run drops rows."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(METRIC_COLUMNS)
    for row in history:
        writer.writerow([row[c] for c in METRIC_COLUMNS])
    runs.atomic_write_bytes(path, lambda f: f.write(buffer.getvalue().encode()))


def append_metrics(path: Path, row: dict) -> None:
    if not distributed.is_main():
        return  # one run folder: rank 0 writes it
    with open(path, "a", newline="") as f:
        csv.writer(f).writerow([row[c] for c in METRIC_COLUMNS])


@dataclass
class ResumePoint:
    run_dir: Path
    summary: dict
    checkpoint: Path | None


def prepare_resume(cfg: RunConfig, resume: str | Path) -> ResumePoint:
    """Check that ``resume`` is a run folder of this same config and find its last checkpoint."""
    run_dir = resolve(resume)
    params_file = run_dir / "params.yaml"
    if not params_file.is_file():
        raise ConfigError(f"resume {run_dir}: not a run folder (no params.yaml)")
    saved = flatten(read_yaml(params_file))
    wanted = flatten(cfg.to_dict())
    differ = [f"{k}: run has {saved.get(k)!r}, config has {wanted.get(k)!r}"
              for k in sorted(set(saved) | set(wanted))
              if k not in RESUME_FREE_KEYS and json.dumps(saved.get(k)) != json.dumps(wanted.get(k))]
    if differ:
        raise ConfigError(f"resume {run_dir}: the config differs from the run's params.yaml: " + "; ".join(differ))
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    return ResumePoint(run_dir=run_dir, summary=summary, checkpoint=latest_checkpoint(run_dir))


def fit(cfg: RunConfig, data: DataSplits | None = None, *, resume: str | Path | None = None,
        on_start: Callable[[Path], None] | None = None) -> RunResult:
    """Train one run and return its folder and summary.

    cfg: the resolved run configuration (``load_config`` / ``build_config``).
    data: loaded splits to reuse across runs (a sweep loads them once); None: built from ``cfg.data``.
    resume: the folder of an interrupted (even killed) run of this same config. Training continues
        there from its last checkpoint; ``metrics.csv`` rows after that epoch are dropped and trained
        again, so nothing is duplicated. A run that already finished (completed or diverged) is
        returned unchanged. None: train from scratch into a new run folder.
    on_start: called with the run folder once it holds ``params.yaml`` and ``summary.json``, before
        the first step (a sweep worker records the folder while the run is still training).
    """
    point = prepare_resume(cfg, resume) if resume is not None else None
    if point is not None and point.summary.get("status") in FINISHED_STATUSES:
        log.info("run %s already %s: nothing to resume", point.run_dir, point.summary["status"])
        return RunResult(run_dir=point.run_dir, summary=point.summary)

    seed_everything(cfg.seed)  # in case a data builder draws from the global generators
    if data is None:
        data = build_data(cfg.data, seed=cfg.seed)
    check_mixup(cfg, data)
    # Seeded again so the model is initialised alike whether or not the data was passed in.
    seed_everything(cfg.seed)
    device = distributed.setup(select_device(cfg.train.device))  # under torchrun: this rank's device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick the fastest kernels

    model_spec = dict(cfg.model)
    model_name = model_spec.pop("name")
    model_kwargs = {**model_spec, **data.model_kwargs}
    model = create_model(model_name, **model_kwargs).to(device)
    optimizer = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.train.amp == "fp16")

    micro_batches = len(distributed.epoch_batches(len(data.train), cfg.train.batch_size, cfg.seed, 0, data.train_groups))
    # A last, shorter accumulation group still makes an optimizer step.
    steps_per_epoch = math.ceil(micro_batches / cfg.train.grad_accum_steps)
    total_steps = steps_per_epoch * cfg.train.epochs
    if cfg.train.max_steps:
        total_steps = min(total_steps, cfg.train.max_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, cfg.schedule, steps_per_epoch, total_steps))

    n_params = sum(p.numel() for p in model.parameters())
    history: list[dict] = []
    best_confusion: torch.Tensor | None = None
    step, start_epoch = 0, 1
    if point is None:
        run_dir = runs.new_run_dir(cfg.runs_root, cfg.experiment, cfg.name)
        runs.write_yaml(run_dir / "params.yaml", cfg.to_dict())
        summary = {
            "status": "running", "experiment": cfg.experiment, "name": cfg.name, "run_dir": str(run_dir),
            "config_hash": config_hash(cfg), "model": model_name, "seed": cfg.seed, "params": n_params,
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "data": data.info, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), **environment(device),
            **distributed.summary_fields(cfg.train.batch_size, cfg.train.grad_accum_steps),
        }
    else:
        run_dir, summary = point.run_dir, point.summary
        if point.checkpoint is not None:
            ckpt = runs.load_checkpoint(point.checkpoint)
            model.load_state_dict(ckpt["model_state"])
            optimizer.load_state_dict(ckpt["optimizer_state"])
            scheduler.load_state_dict(ckpt["scheduler_state"])
            scaler.load_state_dict(ckpt["scaler_state"])
            step, start_epoch = ckpt["step"], ckpt["epoch"] + 1
            best_confusion = ckpt.get("best_confusion")
            history = [r for r in read_metrics(run_dir / "metrics.csv") if r["epoch"] < start_epoch]
            set_rng_state(ckpt["rng_state"])  # last: building the model above drew from the generators
        for stale in (run_dir / runs.CHECKPOINT_DIR).glob(".epoch_*.tmp"):
            stale.unlink(missing_ok=True)  # a save cut short by the interruption
        summary.update(status="running", error=None, **environment(device),
                       **distributed.summary_fields(cfg.train.batch_size, cfg.train.grad_accum_steps))
        summary.setdefault("resumed", []).append(
            {"from_epoch": start_epoch - 1, "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        log.info("resuming run %s after epoch %d (step %d)", run_dir, start_epoch - 1, step)
    metrics_file = run_dir / "metrics.csv"
    write_metrics(metrics_file, history)  # header only, or the rows up to the checkpoint
    if best_confusion is not None:
        write_confusion(run_dir, data.class_names, best_confusion)
    else:
        (run_dir / "confusion_matrix.csv").unlink(missing_ok=True)  # from a dropped epoch
    runs.write_json(run_dir / "summary.json", summary)
    if on_start is not None:
        on_start(run_dir)
    log.info("run %s: %s on %s, %d params", run_dir, model_name, device, n_params)

    max_steps = cfg.train.max_steps
    train_model = distributed.wrap(model, device)  # DDP under torchrun; ``model`` is saved and evaluated
    threads_before = torch.get_num_threads()
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    t_run = time.perf_counter()
    try:
        done = bool(history) and (should_stop_early(history, cfg) or bool(max_steps and step >= max_steps))
        for epoch in range(start_epoch, cfg.train.epochs + 1):
            if done:
                break
            row, step = train_one_epoch(train_model, optimizer, scheduler, scaler, data, cfg, device, epoch, step)
            val_loss, val_acc, val_pred = evaluate(model, data, cfg, device)
            if not math.isfinite(val_loss):
                raise Diverged(step, optimizer.param_groups[0]["lr"], "validation loss", epoch)
            row.update(val_loss=val_loss, val_acc=val_acc, peak_memory_mb=peak_memory_mb(device))
            history.append(row)
            if summarise(history, cfg.train.early_stop_metric)["best_epoch"] == epoch:
                best_confusion = confusion_matrix(torch.as_tensor(data.val.targets), val_pred, len(data.class_names))
                write_confusion(run_dir, data.class_names, best_confusion)
            append_metrics(metrics_file, row)
            done = should_stop_early(history, cfg) or bool(max_steps and step >= max_steps)
            if epoch % cfg.train.checkpoint_every == 0 or epoch == cfg.train.epochs or done:
                runs.save_checkpoint(runs.checkpoint_path(run_dir, epoch), {
                    "model_name": model_name, "model_kwargs": model_kwargs,
                    "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(),
                    "scheduler_state": scheduler.state_dict(), "scaler_state": scaler.state_dict(),
                    "rng_state": rng_state(), "epoch": epoch, "step": step, "config": cfg.to_dict(),
                    "class_names": data.class_names, "vocab": data.vocab, "metrics": row,
                    "best_confusion": best_confusion,
                })
            log.info("epoch %d: train_loss %.4f val_loss %.4f val_acc %.4f", epoch, row["train_loss"], val_loss, val_acc)
        summary["status"] = "completed"
        if best_confusion is not None:
            summary["per_class_acc"] = per_class_accuracy(best_confusion, data.class_names)
    except Diverged as err:
        summary.update(status="diverged", diverged_step=err.step, diverged_epoch=err.epoch,
                       diverged_lr=err.lr, error=str(err))
        log.warning("run %s diverged: %s", run_dir, err)
    except BaseException as err:
        summary.update(status="failed", error=f"{type(err).__name__}: {err}")
        raise
    finally:
        torch.set_num_threads(threads_before)  # process-wide: leave it as the caller had it
        summary.update(summarise(history, cfg.train.early_stop_metric), wall_time_s=time.perf_counter() - t_run,
                       finished=time.strftime("%Y-%m-%dT%H:%M:%S"))
        runs.write_json(run_dir / "summary.json", summary)
    return RunResult(run_dir=run_dir, summary=summary)


def train_one_epoch(model, optimizer, scheduler, scaler, data: DataSplits, cfg: RunConfig,
                    device: torch.device, epoch: int, step: int) -> tuple[dict, int]:
    """One pass over the training split; returns the epoch's metrics row and the new step count.

    Raises ``Diverged`` at the first non-finite loss or (without a GradScaler) gradient norm.
    """
    model.train()
    accum = cfg.train.grad_accum_steps
    batches = distributed.epoch_batches(len(data.train), cfg.train.batch_size, cfg.seed, epoch, data.train_groups)
    loader = make_loader(data.train, batches, data, cfg, device)
    alpha = cfg.train.mixup_alpha
    mix_rng = np.random.default_rng([cfg.seed, epoch, MIXUP_STREAM]) if alpha > 0 else None
    loss_sum, samples, step_times = 0.0, 0, []
    t_epoch = time.perf_counter()
    t_step = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    batch_iter = loader
    if cfg.train.progress:  # imported only when shown: tqdm.auto warns in kernels without widgets
        from tqdm.auto import tqdm

        batch_iter = tqdm(loader, desc=f"epoch {epoch}", leave=False)
    for i, batch in enumerate(batch_iter):
        group_start = (i // accum) * accum
        group_end = min(group_start + accum, len(batches))  # micro-batches [start, end) make one step
        batch = to_device(batch, device)
        if mix_rng is not None:
            batch, lam, perm = mix_batch(batch, mix_rng, alpha)
        with autocast_context(device, cfg.train.amp):
            logits = model(**{k: batch[k] for k in data.input_keys})
        loss = compute_loss(logits, batch, cfg)
        if mix_rng is not None:
            loss = lam * loss + (1 - lam) * compute_loss(logits, {**batch, "target": batch["target"][perm]}, cfg)
        lr = optimizer.param_groups[0]["lr"]
        if not distributed.all_finite(loss):  # every rank stops at the same step
            raise Diverged(step, lr, "loss", epoch)
        scaler.scale(loss / (group_end - group_start)).backward()
        n = len(batch["target"])
        loss_sum += loss.item() * n
        samples += n
        if i + 1 < group_end:
            continue
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), cfg.train.clip_norm if cfg.train.clip_norm else float("inf"))
        if not torch.isfinite(grad_norm) and not scaler.is_enabled():
            raise Diverged(step, lr, "gradient", epoch)  # with fp16 the scaler skips the step instead
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
    loss_sum, samples = distributed.sum_over_ranks(loss_sum, samples)  # all ranks' samples
    row = {"epoch": epoch, "step": step, "train_loss": loss_sum / max(samples, 1),
           "lr": optimizer.param_groups[0]["lr"], "epoch_time_s": epoch_time,
           "step_time_s": float(np.mean(step_times)) if step_times else math.nan,
           "samples_per_s": samples / epoch_time}
    return row, step


def confusion_matrix(targets: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K, K) counts: rows true class, columns predicted class."""
    k = num_classes
    return torch.bincount(targets * k + preds, minlength=k * k).reshape(k, k)


def write_confusion(run_dir: Path, class_names: list[str], matrix: torch.Tensor) -> None:
    """``confusion_matrix.csv`` of the best epoch so far (rows: true class, columns: predicted)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["true\\predicted", *class_names])
    for name, counts in zip(class_names, matrix.tolist()):
        writer.writerow([name, *counts])
    runs.atomic_write_bytes(run_dir / "confusion_matrix.csv", lambda f: f.write(buffer.getvalue().encode()))


def per_class_accuracy(matrix: torch.Tensor, class_names: list[str]) -> dict[str, float]:
    """Recall per true class from a confusion matrix (classes never seen: NaN)."""
    return {name: (row[i] / total if (total := sum(row)) else math.nan)
            for i, (name, row) in enumerate(zip(class_names, matrix.tolist()))}


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
