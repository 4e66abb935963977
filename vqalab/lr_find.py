"""Learning-rate range test (L. Smith, "Cyclical Learning Rates for Training Neural Networks", 2017).

Train for up to ``num_steps`` optimizer steps while the learning rate rises exponentially from
``min_lr`` to ``max_lr``; record the loss at each step and its bias-corrected exponential moving
average; stop early once that average exceeds ``diverge_factor`` × its best value or the loss is
not finite. The model, optimizer and random-number state are restored exactly afterwards, so the
test can run on a model that is then trained.

The moving average only decides when to stop: with β = 0.98 it trails the loss by about
β / (1 - β) ≈ 50 steps, which on a 100-step test is 3.5 decades of learning rate, so a minimum read
from it lies far to the right of the real one. The suggestions are read from a centred smoothing
of the recorded losses instead (``centred_smooth``): a running median, which drops isolated
spikes, then a running mean, both over a window centred on each step, so the curve has no lag.
Three rules, after dropping the first 10% and the last few points (start-up noise and the blow-up):
- ``steepest``: where the loss falls fastest per decade of learning rate;
- ``valley``: the middle (in log LR) of the fall from the highest loss to the lowest, between
  10% and 90% of that drop;
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
from vqalab.bench import choose_batch_size, loader_batches
from vqalab.data import DataSplits, build_data
from vqalab.devices import torch_threads
from vqalab.engine import (
    build_model,
    build_optimizer,
    make_grad_scaler,
    seed_everything,
    select_device,
    to_device,
    training_step,
)
from vqalab.params import RunConfig
from vqalab.registry import ConfigError
from vqalab.threads import choose_threads
from vqalab.train import execution_fields

log = logging.getLogger(__name__)

DEFAULT_MIN_LR = 1e-7
DEFAULT_MAX_LR = 1.0
DEFAULT_STEPS = 100
SMOOTHING = 0.98  # weight of the past in the loss EMA of the stop rule (fastai's lr_find uses the same)
CENTRED_WINDOW_DECADES = 0.4  # width of the centred smoothing window, in decades of learning rate
DIVERGE_FACTOR = 4.0  # stop once the smoothed loss exceeds this multiple of its best value
MINIMUM_DIVISOR = 10.0  # minimum/10 rule
VALLEY_BAND = 0.1  # valley rule: the fall runs from 10% to 90% of the drop to the minimum
SKIP_START_FRACTION = 0.1  # points dropped at the start before suggesting (start-up noise)
SKIP_END = 5  # points dropped at the end (at most 10% of them): the blow-up
MIN_POINTS = 3  # fewer points than this after trimming: no suggestion


@dataclass
class LRFindResult:
    history: pd.DataFrame  # one row per step: step, lr, loss, smoothed_loss (EMA, stop rule), centred_loss
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


def centred_smooth(lrs, losses, window_decades: float = CENTRED_WINDOW_DECADES) -> np.ndarray:
    """Zero-lag smoothing of the losses of a geometric LR schedule: a running median, then a running
    mean, each over the points within ``window_decades`` / 2 decades of learning rate on either side
    (at least one point each side; the window shrinks at the ends). Non-finite losses give NaN and
    are left out of their neighbours' windows."""
    lrs, losses = np.asarray(lrs, dtype=float), np.asarray(losses, dtype=float)
    n = len(losses)
    out = np.full(n, np.nan)
    finite = np.isfinite(losses)
    if finite.sum() == 0:
        return out
    x, y = np.log10(lrs[finite]), losses[finite]
    step = (x[-1] - x[0]) / (len(x) - 1) if len(x) > 1 else 1.0
    half = max(1, round(window_decades / 2 / step)) if step > 0 else 1

    def running(values, reduce):
        return np.array([reduce(values[max(0, i - half):i + half + 1]) for i in range(len(values))])

    out[finite] = running(running(y, np.median), np.mean)
    return out


def trim(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop non-finite points, then the first 10% and the last few (at most 10%)."""
    keep = np.isfinite(smoothed)
    lrs, smoothed = np.asarray(lrs, dtype=float)[keep], smoothed[keep]
    n = len(smoothed)
    start, end = int(n * SKIP_START_FRACTION), min(SKIP_END, int(n * SKIP_START_FRACTION))
    return lrs[start:n - end], smoothed[start:n - end]


def suggest_steepest(lrs: np.ndarray, smoothed: np.ndarray,
                     window_decades: float = CENTRED_WINDOW_DECADES) -> float:
    """LR where the loss falls fastest per decade of learning rate: the most negative secant slope
    over ``window_decades`` centred on each point (a two-point slope would amplify the noise)."""
    n = len(smoothed)
    if n < MIN_POINTS:
        return math.nan
    x = np.log10(lrs)
    half = max(1, round(window_decades / 2 / ((x[-1] - x[0]) / (n - 1))))
    lo, hi = np.maximum(np.arange(n) - half, 0), np.minimum(np.arange(n) + half, n - 1)
    slope = (smoothed[hi] - smoothed[lo]) / (x[hi] - x[lo])
    return float(lrs[int(np.argmin(slope))])


def suggest_valley(lrs: np.ndarray, smoothed: np.ndarray, band: float = VALLEY_BAND) -> float:
    """LR in the middle of the fall: the geometric mean of the LRs at which the loss, going from its
    highest point before the minimum down to the minimum, has made ``band`` and ``1 - band`` of
    that drop. Unlike the longest decreasing run, it does not depend on where the test started."""
    n = len(smoothed)
    if n < MIN_POINTS:
        return math.nan
    bottom = int(np.argmin(smoothed))
    top = int(np.argmax(smoothed[:bottom + 1]))
    drop = smoothed[top] - smoothed[bottom]
    if drop <= 0:
        return float(lrs[bottom])
    falling = smoothed[top:bottom + 1]
    start = top + int(np.argmax(falling <= smoothed[top] - band * drop))
    end = top + int(np.argmax(falling <= smoothed[top] - (1 - band) * drop))
    return float(math.sqrt(lrs[start] * lrs[end]))


def suggest_minimum(lrs: np.ndarray, smoothed: np.ndarray, divisor: float = MINIMUM_DIVISOR) -> float:
    if len(smoothed) < MIN_POINTS:
        return math.nan
    return float(lrs[int(np.argmin(smoothed))] / divisor)


def suggest(lrs, losses) -> dict[str, float]:
    """Every rule's suggestion from the recorded raw losses (centred smoothing, then trimmed)."""
    lrs, smoothed = trim(np.asarray(lrs, dtype=float), centred_smooth(lrs, losses))
    return {"steepest": suggest_steepest(lrs, smoothed), "valley": suggest_valley(lrs, smoothed),
            "minimum/10": suggest_minimum(lrs, smoothed)}


def training_batches(data: DataSplits, cfg: RunConfig, device: torch.device) -> Iterator[dict]:
    """Training batches in the training loop's order, on ``device``, epoch after epoch, without end."""
    for batch in loader_batches(data, cfg, device, cfg.train.batch_size):
        yield to_device(batch, device, cfg.train.channels_last)


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
    threads = choose_threads(cfg.train.num_threads)  # as a run of this config would choose them
    with torch_threads(threads.threads):
        data = data or build_data(cfg.data)
        if cfg.train.batch_size == "auto":  # the batch size the run would train with
            cfg = cfg.model_copy(deep=True)
            cfg.train.batch_size = choose_batch_size(cfg, data, device)["batch_size"]
        if model is None:
            seed_everything(cfg.seed)
            model = build_model(cfg, data, device)  # channels_last and torch.compile as configured
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
                                                task=data.task, cfg=cfg, device=device, amp=cfg.train.amp)
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
    history["centred_loss"] = centred_smooth(history["lr"].to_numpy(), history["loss"].to_numpy())
    suggestions = suggest(history["lr"].to_numpy(), history["loss"].to_numpy())
    log.info("lr range test: %d steps, %s; suggestions %s", len(history), stop_reason, suggestions)
    settings = {"model": cfg.model["name"], "optimizer": cfg.optim.name, "batch_size": cfg.train.batch_size,
                "min_lr": min_lr, "max_lr": max_lr, "num_steps": num_steps, "beta": beta,
                "diverge_factor": diverge_factor, "centred_window_decades": CENTRED_WINDOW_DECADES,
                "device": str(device), "seed": cfg.seed, **execution_fields(cfg), **threads.record()}
    return LRFindResult(history=history, suggestions=suggestions, stop_reason=stop_reason, settings=settings)


def plot_lr_find(result: LRFindResult, ax=None):
    """Loss and its centred smoothing (what the rules read) against the learning rate (log axis),
    one line per suggestion."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    h = result.history[np.isfinite(result.history["loss"])]
    centred = centred_smooth(h["lr"].to_numpy(), h["loss"].to_numpy())
    ax.plot(h["lr"], h["loss"], color="0.7", linewidth=1, label="loss")
    ax.plot(h["lr"], centred, color="C0", linewidth=2, label="smoothed loss (centred)")
    for colour, (rule, lr) in zip(("C1", "C2", "C3"), result.suggestions.items()):
        if math.isfinite(lr):
            ax.axvline(lr, color=colour, linestyle="--", label=f"{rule}: {lr:.2g}")
    smoothed = centred
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
    runs.atomic_write_bytes(folder / "lr_find.png",
                            lambda f: figure.savefig(f, format="png", dpi=120, bbox_inches="tight"))
    return folder


def result_json(result: LRFindResult, folder: Path | None = None) -> str:
    payload = result.to_dict()
    if folder is not None:
        payload["folder"] = str(folder)
    return json.dumps(payload, indent=2, ensure_ascii=False)
