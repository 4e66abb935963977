"""Learning-rate range test (L. Smith, "Cyclical Learning Rates for Training Neural Networks", 2017).

Train for up to ``num_steps`` optimizer steps while the learning rate rises exponentially from
``min_lr`` to ``max_lr``; record the loss at each step and its bias-corrected exponential moving
average; stop early once the smoothed loss exceeds ``diverge_factor`` × its best value or the
loss is not finite. The model, optimizer and random-number state are restored exactly afterwards,
so the test can run on a model that is then trained.

Three rules suggest a learning rate from the smoothed curve, after dropping the first 10% and the
last few points (start-up noise and the blow-up):
- ``steepest``: where the loss falls fastest per decade of learning rate;
- ``valley``: halfway along the longest stretch over which the loss keeps falling;
- ``minimum/10``: a tenth of the learning rate at the lowest loss.
"""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from vqalab import runs
from vqalab.bench import choose_batch_size
from vqalab.config import RunConfig
from vqalab.data import DataSplits, build_data
from vqalab.data.samplers import epoch_batches
from vqalab.registry import ConfigError
from vqalab.train import (
    build_model,
    build_optimizer,
    make_grad_scaler,
    make_loader,
    seed_everything,
    select_device,
    to_device,
    torch_threads,
    training_step,
)

log = logging.getLogger(__name__)

DEFAULT_MIN_LR = 1e-7
DEFAULT_MAX_LR = 1.0
DEFAULT_STEPS = 100
SMOOTHING = 0.98  # weight of the past in the loss EMA (fastai's lr_find uses the same)
DIVERGE_FACTOR = 4.0  # stop once the smoothed loss exceeds this multiple of its best value
MINIMUM_DIVISOR = 10.0  # minimum/10 rule
SKIP_START_FRACTION = 0.1  # points dropped at the start before suggesting (start-up noise)
SKIP_END = 5  # points dropped at the end (at most 10% of them): the blow-up
MIN_POINTS = 3  # fewer points than this after trimming: no suggestion


@dataclass
class LRFindResult:
    history: pd.DataFrame  # one row per step: step, lr, loss, smoothed_loss
    suggestions: dict[str, float]  # rule → suggested learning rate (NaN when too few points)
    stop_reason: str  # completed | loss above N× best | non-finite loss
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"suggestions": {k: (None if math.isnan(v) else v) for k, v in self.suggestions.items()},
                "stop_reason": self.stop_reason, "steps": len(self.history), "settings": self.settings}


def lr_schedule(min_lr: float, max_lr: float, num_steps: int) -> np.ndarray:
    """Learning rate of each step: geometric from ``min_lr`` (first) to ``max_lr`` (last)."""
    if not 0 < min_lr < max_lr:
        raise ConfigError(f"min_lr = {min_lr}, max_lr = {max_lr}: expected 0 < min_lr < max_lr")
    if num_steps < 2:
        raise ConfigError(f"num_steps = {num_steps}: expected ≥ 2")
    return min_lr * (max_lr / min_lr) ** (np.arange(num_steps) / (num_steps - 1))


def smooth_losses(losses, beta: float = SMOOTHING) -> np.ndarray:
    """Bias-corrected exponential moving average: s_t = a_t / (1 - β^(t+1)), a_t = β a_(t-1) + (1-β) loss_t."""
    out, average = [], 0.0
    for t, loss in enumerate(losses):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta ** (t + 1)))
    return np.asarray(out, dtype=float)


def trim(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop non-finite points, then the first 10% and the last few (at most 10%)."""
    keep = np.isfinite(smoothed)
    lrs, smoothed = np.asarray(lrs, dtype=float)[keep], smoothed[keep]
    n = len(smoothed)
    start, end = int(n * SKIP_START_FRACTION), min(SKIP_END, int(n * SKIP_START_FRACTION))
    return lrs[start:n - end], smoothed[start:n - end]


def suggest_steepest(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """LR where d(loss)/d(log10 lr) is most negative."""
    if len(smoothed) < MIN_POINTS:
        return math.nan
    slope = np.gradient(smoothed, np.log10(lrs))
    return float(lrs[int(np.argmin(slope))])


def suggest_valley(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """LR halfway along the longest decreasing run of the loss (a longest decreasing subsequence)."""
    n = len(smoothed)
    if n < MIN_POINTS:
        return math.nan
    length = np.ones(n, dtype=int)  # length[i]: longest strictly decreasing subsequence ending at i
    for i in range(1, n):
        earlier = smoothed[:i] > smoothed[i]
        if earlier.any():
            length[i] = length[:i][earlier].max() + 1
    end = int(np.argmax(length))
    start = end - int(length[end]) + 1  # earliest index such a subsequence can start from
    return float(lrs[start + (end - start) // 2])


def suggest_minimum(lrs: np.ndarray, smoothed: np.ndarray, divisor: float = MINIMUM_DIVISOR) -> float:
    if len(smoothed) < MIN_POINTS:
        return math.nan
    return float(lrs[int(np.argmin(smoothed))] / divisor)


def suggest(lrs, smoothed) -> dict[str, float]:
    """Every rule's suggestion from the recorded curve (trimmed first)."""
    lrs, smoothed = trim(np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float))
    return {"steepest": suggest_steepest(lrs, smoothed), "valley": suggest_valley(lrs, smoothed),
            "minimum/10": suggest_minimum(lrs, smoothed)}


def training_batches(data: DataSplits, cfg: RunConfig, device: torch.device) -> Iterator[dict]:
    """Training batches in the training loop's order, epoch after epoch, without end."""
    epoch = 1
    while True:
        batches = epoch_batches(len(data.train), cfg.train.batch_size, cfg.seed, epoch, data.train_groups)
        for batch in make_loader(data.train, batches, data, cfg, device):
            yield to_device(batch, device)
        epoch += 1


def lr_range_test(cfg: RunConfig, *, min_lr: float = DEFAULT_MIN_LR, max_lr: float = DEFAULT_MAX_LR,
                  num_steps: int = DEFAULT_STEPS, beta: float = SMOOTHING,
                  diverge_factor: float = DIVERGE_FACTOR, model: nn.Module | None = None,
                  optimizer: torch.optim.Optimizer | None = None,
                  data: DataSplits | None = None) -> LRFindResult:
    """Run the range test for the configured model, data, optimizer and loss.

    cfg: run config (model, data, optim, train.batch_size / loss / amp / clip_norm / device, seed).
    min_lr, max_lr: learning rate of the first and of the last step; every parameter group gets it.
    num_steps: optimizer steps at most (one micro-batch each; grad_accum_steps and mixup are not
        applied).
    beta: EMA weight of the past for the smoothed loss. diverge_factor: stop once the smoothed loss
        exceeds this multiple of its best.
    model, optimizer: test these (state restored afterwards) instead of building them from cfg;
        batches go to the device of the model's parameters.
    data: loaded splits to reuse (None: built from ``cfg.data``).
    """
    lrs = lr_schedule(min_lr, max_lr, num_steps)
    if not 0 <= beta < 1 or diverge_factor <= 1:
        raise ConfigError(f"beta = {beta}, diverge_factor = {diverge_factor}: expected 0 ≤ beta < 1 and factor > 1")
    if (model is None) != (optimizer is None):
        raise ValueError("pass both model and optimizer, or neither")
    # A given model stays where it is; a built one goes to the configured device.
    device = select_device(cfg.train.device) if model is None else next(model.parameters()).device
    with torch_threads(cfg.train.num_threads):  # as many CPU threads as a run of this config
        data = data or build_data(cfg.data)
        if cfg.train.batch_size == "auto":  # the batch size the run would train with
            cfg = cfg.model_copy(deep=True)
            cfg.train.batch_size = choose_batch_size(cfg, data, device)["batch_size"]
        if model is None:
            seed_everything(cfg.seed)
            model = build_model(cfg, data, device)
            optimizer = build_optimizer(model, cfg)

        # Exact restore: deep copies, since state_dict() returns the live tensors.
        saved_model = copy.deepcopy(model.state_dict())
        saved_optimizer = copy.deepcopy(optimizer.state_dict())
        saved_grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
        saved_rng = torch.get_rng_state()
        saved_cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        was_training = model.training

        scaler = make_grad_scaler(device, cfg.train.amp)
        rows, average, best = [], 0.0, math.inf
        stop_reason = "completed"
        batches = training_batches(data, cfg, device)
        try:
            model.train()
            for step, lr in enumerate(lrs):
                for group in optimizer.param_groups:
                    group["lr"] = float(lr)
                batch = next(batches)
                # The training loop's step, clipping included (it shapes which learning rates
                # survive). The step after a stopping loss does no harm: the model is restored.
                loss, grad_norm = training_step(model, optimizer, scaler, batch, input_keys=data.input_keys,
                                                cfg=cfg, device=device, amp=cfg.train.amp)
                value = loss.item()
                if not math.isfinite(value):
                    rows.append({"step": step, "lr": float(lr), "loss": value, "smoothed_loss": math.nan})
                    stop_reason = "non-finite loss"
                    break
                average = beta * average + (1 - beta) * value
                smoothed = average / (1 - beta ** (step + 1))
                rows.append({"step": step, "lr": float(lr), "loss": value, "smoothed_loss": smoothed})
                best = min(best, smoothed)
                if smoothed > diverge_factor * best:
                    stop_reason = f"loss above {diverge_factor:g}× best"
                    break
                if not torch.isfinite(grad_norm) and not scaler.is_enabled():
                    stop_reason = "non-finite gradient"  # the step was skipped
                    break
        finally:
            batches.close()
            model.load_state_dict(saved_model)
            optimizer.load_state_dict(saved_optimizer)
            for p, g in zip(model.parameters(), saved_grads):
                p.grad = g
            torch.set_rng_state(saved_rng)
            if saved_cuda_rng is not None:
                torch.cuda.set_rng_state_all(saved_cuda_rng)
            model.train(was_training)

    history = pd.DataFrame(rows, columns=["step", "lr", "loss", "smoothed_loss"])
    suggestions = suggest(history["lr"].to_numpy(), history["smoothed_loss"].to_numpy())
    log.info("lr range test: %d steps, %s; suggestions %s", len(history), stop_reason, suggestions)
    settings = {"model": cfg.model["name"], "optimizer": cfg.optim.name, "batch_size": cfg.train.batch_size,
                "min_lr": min_lr, "max_lr": max_lr, "num_steps": num_steps, "beta": beta,
                "diverge_factor": diverge_factor, "device": str(device), "seed": cfg.seed}
    return LRFindResult(history=history, suggestions=suggestions, stop_reason=stop_reason, settings=settings)


def plot_lr_find(result: LRFindResult, ax=None):
    """Loss and smoothed loss against the learning rate (log axis), one line per suggestion."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    h = result.history[np.isfinite(result.history["loss"])]
    ax.plot(h["lr"], h["loss"], color="0.7", linewidth=1, label="loss")
    ax.plot(h["lr"], h["smoothed_loss"], color="C0", linewidth=2, label="smoothed loss")
    for colour, (rule, lr) in zip(("C1", "C2", "C3"), result.suggestions.items()):
        if math.isfinite(lr):
            ax.axvline(lr, color=colour, linestyle="--", label=f"{rule}: {lr:.2g}")
    smoothed = h["smoothed_loss"].to_numpy()
    if len(smoothed):
        low, first = float(np.min(smoothed)), float(smoothed[0])
        span = max(first - low, 1e-12)
        ax.set_ylim(low - 0.1 * span, min(float(np.max(smoothed)), first + span) + 0.1 * span)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test ({result.stop_reason}, {len(result.history)} steps)")
    ax.legend(fontsize="small")
    return ax


def save_lr_find(result: LRFindResult, cfg: RunConfig) -> Path:
    """Write the test into a new folder ``<runs_root>/<experiment>/<time>-<name>-lr_find/``."""
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's figures and backend alone

    folder = runs.new_run_dir(cfg.runs_root, cfg.experiment, f"{cfg.name}-lr_find")
    runs.write_yaml(folder / "params.yaml", cfg.to_dict())
    runs.atomic_write_bytes(folder / "lr_find.csv", lambda f: f.write(result.history.to_csv(index=False).encode()))
    runs.write_json(folder / "lr_find.json", result.to_dict())
    figure = Figure(figsize=(7, 4))
    plot_lr_find(result, ax=figure.subplots())
    figure.savefig(folder / "lr_find.png", dpi=120, bbox_inches="tight")
    return folder


def result_json(result: LRFindResult, folder: Path | None = None) -> str:
    payload = result.to_dict()
    if folder is not None:
        payload["folder"] = str(folder)
    return json.dumps(payload, indent=2, ensure_ascii=False)
