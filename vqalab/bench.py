"""Measuring models: training-step throughput across batch sizes, params, FLOPs, latency, memory.

Two throughputs per batch size:
- model step: one whole training step (zero grads, forward, loss, backward, gradient norm and
  optional clipping, optimizer step) on batches already on the device. The batches are the first
  ``REPRESENTATIVE_BATCHES`` training batches of size B in the order the training loop draws them
  (``epoch_batches`` with the run's seed and grouping), cycled through, so question lengths and
  the number of distinct images per batch (VQA models encode each distinct image once) are what
  training sees, not those of one repeated batch. If B exceeds the training split, indices wrap
  around and a warning says so.
- end to end: the same step fed by the training loop's own loader (``engine.make_loader``:
  loading, augmentation, collation, ``train.num_workers``) and the host-to-device copy.
The gap between the two is the share of an end-to-end step spent outside the model step; the
table says which one limits. Gradient accumulation and mixup are not applied (one micro-batch is
one step). Steps run after warm-up and the device is synchronised before every clock read, so each
time is a finished step, not a queued one.

Noise: a shared machine makes single timings scatter by tens of percent. The sweep therefore
times every batch size in ``rounds`` interleaved rounds (all sizes in round 1, then all sizes in
round 2, in alternating order, so that a busy spell hits every size alike) and reports the median
over rounds with its spread. The recommendation compares each size with the best one round by
round (its throughput over the best's in the same round, which cancels load that slows both),
treats sizes whose median ratio lies within the measured noise of those ratios as equally fast
and takes the smallest of them. Repeating the measurement then gives the same answer unless a
size's true throughput sits near the edge of that band. The sentence states the noise and how
often bootstrap resamples of the rounds give the same choice; with ``max_rounds`` the sweep adds
rounds until that agreement reaches ``SETTLED_AGREEMENT``. A choice that is not settled is not
made: the recommendation is then ``None`` with the reason, never a confident wrong size. The same
holds when the machine was over-subscribed while it was timed: each measurement records how many
cores other processes kept busy (``/proc/stat``; ``others_busy_median``, ``_max``), and when the
median of those plus the sweep's threads exceed the cores by more than ``OVERSUBSCRIBED_SLACK``
(a busy spell in one measurement is the rounds' noise; a steady load is not) the timings are those of
threads waiting for each other, which favour large batches (the same sweep beside one busy process
once chose 512 where the quiet machine gave 128).

Memory: on a GPU the CUDA allocator's ``max_memory_allocated`` after ``reset_peak_memory_stats``
(tensors only, not the allocator's cache); on the CPU the process's peak resident set size
(everything the process holds: Python, libraries, the data set), reset before each batch size
where Linux allows it (``/proc/self/clear_refs``), else the peak since the process started.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``: matrix multiplies,
convolutions and attention, 2 FLOPs per multiply-add; element-wise work (normalisation,
activations, softmax, the optimizer update) is not counted. GMACs = GFLOPs / 2. Attention is
counted on every device with the same formula (``ATTENTION_FLOP_FORMULAS``): torch leaves the
CPU kernel uncounted, and its backward formula for the fused GPU kernels adds the recomputation of
the attention scores, which the math kernel (used on the meta device) does not do; here the
backward counts the four gradient products only, so counts do not depend on the device.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import (
    FlopCounterMode,
    register_flop_formula,
    sdpa_backward_flop_count,
    sdpa_flop_count,
)

from vqalab.data import DataSplits, build_data
from vqalab.data.samplers import epoch_batches
from vqalab.devices import torch_threads
from vqalab.engine import (
    autocast_context,
    build_model,
    build_optimizer,
    check_model_fits_data,
    compute_loss,
    make_grad_scaler,
    make_loader,
    peak_memory_mb,
    seed_everything,
    select_device,
    to_device,
    training_step,
)
from vqalab.params import RunConfig, TrainConfig
from vqalab.registry import ConfigError
from vqalab.threads import (
    affinity_cores,
    choose_threads,
    cpu_snapshot,
    others_busy_since,
)

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# Sizes within this share of the best throughput count as equally fast even when the measured noise
# is smaller: the median ratio of 5 rounds on a shared CPU is uncertain by a few percent, so a 5%
# band would leave sizes 5-8% below the best on its edge (two sweeps of model 1 chose 128 and 256).
RECOMMEND_FRACTION = 0.90
DEFAULT_ROUNDS = 5  # interleaved timing rounds per batch size: enough for a median and an IQR
BOOTSTRAP_RESAMPLES = 200  # resamples of the rounds that judge how settled a recommendation is
SETTLED_AGREEMENT = 0.9  # a choice is settled when this share of resamples agrees (max_rounds: stop there)
OVERSUBSCRIBED_SLACK = 0.5  # cores: others' load + the sweep's threads above cores + this: not settled
REPRESENTATIVE_BATCHES = 8  # distinct training batches cycled through when timing the model step
AMP_CHOICES = ("off", "bf16", "fp16")
P95 = 95  # percentile reported next to the median step time
# Messages of allocator failures that are not torch.OutOfMemoryError (older CUDA paths, CPU).
OOM_MESSAGES = ("out of memory", "can't allocate memory", "not enough memory")
CLEAR_REFS = Path("/proc/self/clear_refs")
PROC_STATUS = Path("/proc/self/status")
RESET_PEAK_RSS = "5"  # written to clear_refs: reset the peak resident set size (Linux ≥ 4.0)
FIRST_EPOCH = 1  # the training loop numbers epochs from 1; its first batch is the one measured
# batch_size: auto measures these (those up to the training split's size), briefly.
AUTO_BATCH_SIZES = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
AUTO_WARMUP_STEPS, AUTO_TIMED_STEPS = 2, 5


# The CPU attention kernels, counted like the CUDA ones (QKᵀ and AV: 4·B·heads·Tq·Tk·d_head forward).
@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _cpu_sdpa_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


# ---------------------------------------------------------------------------------------------
# Inputs and models


def training_batches_at(data: DataSplits, batch_size: int, seed: int, count: int) -> list[dict]:
    """The first ``count`` training batches of ``batch_size`` items in the training loop's order
    (collated). The order of epoch 1 is cut into consecutive batches, wrapping around at its end."""
    n = len(data.train)
    order = [i for b in epoch_batches(n, n, seed, FIRST_EPOCH, data.train_groups) for i in b]
    if batch_size > n:
        log.warning("batch size %d exceeds the %d training items: items repeat in the batch", batch_size, n)
    return [data.collate([data.train[order[(k * batch_size + i) % n]] for i in range(batch_size)])
            for k in range(count)]


def fixed_batch(data: DataSplits, batch_size: int, seed: int) -> dict:
    """The first training batch of ``batch_size`` items in the training loop's order (collated)."""
    return training_batches_at(data, batch_size, seed, 1)[0]


def loader_batches(data: DataSplits, cfg: RunConfig, device: torch.device, batch_size: int) -> Iterator[dict]:
    """Training batches from the training loop's loader (still on the host, pinned for CUDA),
    epoch after epoch, without end."""
    epoch = FIRST_EPOCH
    while True:
        batches = epoch_batches(len(data.train), batch_size, cfg.seed, epoch, data.train_groups)
        yield from make_loader(data.train, batches, data, cfg, device)
        epoch += 1


def count_parameters(model: nn.Module) -> dict[str, int]:
    return {"params_total": sum(p.numel() for p in model.parameters()),
            "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def effective_amp(amp: str, device: torch.device) -> str:
    """The AMP setting the step runs with: autocast applies on CUDA and the CPU alike
    (``engine.autocast_context``); refused when unknown."""
    if amp not in AMP_CHOICES:
        raise ConfigError(f"amp = {amp!r}: expected one of {', '.join(AMP_CHOICES)}")
    return amp


# ---------------------------------------------------------------------------------------------
# Clocks and memory


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], Any], device: torch.device, *, warmup: int, repeats: int,
               clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Seconds per call of ``fn`` for ``repeats`` calls after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        synchronize(device)  # the previous call has finished
        start = clock()
        fn()
        synchronize(device)  # this call has finished, not just been queued
        times.append(clock() - start)
    return times


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak; False where only the peak since process start can be read."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        CLEAR_REFS.write_text(RESET_PEAK_RSS)
        return True
    except OSError:
        return False


def read_peak_memory(device: torch.device, was_reset: bool) -> tuple[float, str]:
    """(peak MiB, what it measures)."""
    if device.type == "cuda":
        return peak_memory_mb(device), "cuda_max_allocated"
    if was_reset:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024, "cpu_peak_rss"  # kB → MiB
    return peak_memory_mb(device), "cpu_peak_rss_since_start"


def release_memory(device: torch.device) -> None:
    """Return what a failed step held: collect cycles, empty the CUDA cache."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, torch.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and any(m in str(err).lower() for m in OOM_MESSAGES)


# ---------------------------------------------------------------------------------------------
# The training step and the sweep


def fresh_training_state(cfg: RunConfig, data: DataSplits, device: torch.device, amp: str, channels_last: bool,
                         compile_model: bool) -> tuple[nn.Module, torch.optim.Optimizer, torch.amp.GradScaler]:
    """Model (train mode), optimizer and scaler built from the seed, as at the start of training."""
    seed_everything(cfg.seed)
    model = build_model(cfg, data, device, channels_last=channels_last, compile_model=compile_model)
    model.train()
    optimizer = build_optimizer(model, cfg)
    scaler = make_grad_scaler(device, amp)
    return model, optimizer, scaler


def measure_training(cfg: RunConfig, batch_size: int, *, data: DataSplits, device: torch.device,
                     amp: str = "off", channels_last: bool = False, compile_model: bool = False,
                     warmup_steps: int = 3, timed_steps: int = 10,
                     num_batches: int = REPRESENTATIVE_BATCHES) -> dict:
    """Time ``timed_steps`` model steps at ``batch_size`` on a freshly built model and optimizer.

    The steps cycle through ``num_batches`` distinct training batches put on the device first.
    A fresh model per call makes each measurement independent: its peak memory holds the
    weights, the optimizer state, these batches and that batch size's activations. Out-of-memory
    errors propagate.
    Returns the step times (s), the peak memory (MiB) and what that memory measures.
    """
    model, optimizer, scaler = fresh_training_state(cfg, data, device, amp, channels_last, compile_model)
    batches = itertools.cycle([to_device(b, device, channels_last)
                               for b in training_batches_at(data, batch_size, cfg.seed, num_batches)])

    def step():
        training_step(model, optimizer, scaler, next(batches), input_keys=data.input_keys, task=data.task,
                      cfg=cfg, device=device, amp=amp)

    was_reset = reset_peak_memory(device)
    times = time_calls(step, device, warmup=warmup_steps, repeats=timed_steps)
    peak, memory_kind = read_peak_memory(device, was_reset)
    return {"times": times, "peak_memory_mb": peak, "memory_kind": memory_kind}


def measure_end_to_end(cfg: RunConfig, batch_size: int, *, data: DataSplits, device: torch.device,
                       amp: str = "off", channels_last: bool = False, compile_model: bool = False,
                       warmup_steps: int = 3, timed_steps: int = 10) -> list[float]:
    """Seconds per training step fed by the training loop's loader, including the host-to-device copy.

    Each timed step takes the next batch from the loader (loading, augmentation, collation, in
    ``train.num_workers`` workers), copies it to the device and runs the step. The warm-up steps
    also start the loader's workers.
    """
    model, optimizer, scaler = fresh_training_state(cfg, data, device, amp, channels_last, compile_model)
    batches = loader_batches(data, cfg, device, batch_size)

    def step():
        batch = to_device(next(batches), device, channels_last)
        training_step(model, optimizer, scaler, batch, input_keys=data.input_keys, task=data.task, cfg=cfg,
                      device=device, amp=amp)

    try:
        return time_calls(step, device, warmup=warmup_steps, repeats=timed_steps)
    finally:
        batches.close()  # stops the loader's workers


def throughput_stats(batch_size: int, round_times: Sequence[Sequence[float]], prefix: str) -> dict:
    """Median and spread over rounds of the samples/s of each round (B × steps / summed step time).

    ``{prefix}samples_per_s`` is the median round; ``_rounds`` the value of each round in round
    order; ``_q1``/``_q3`` its quartiles and ``_min``/``_max`` its range; ``{prefix}spread`` the
    interquartile range relative to the median (0 for one round).
    """
    per_round = np.array([batch_size * len(t) / sum(t) for t in round_times])
    median = float(np.median(per_round))
    q1, q3 = (float(v) for v in np.percentile(per_round, [25, 75]))
    return {f"{prefix}samples_per_s": median, f"{prefix}samples_per_s_rounds": per_round.tolist(),
            f"{prefix}samples_per_s_q1": q1, f"{prefix}samples_per_s_q3": q3,
            f"{prefix}samples_per_s_min": float(per_round.min()), f"{prefix}samples_per_s_max": float(per_round.max()),
            f"{prefix}spread": (q3 - q1) / median}


def summarise_batch_size(batch_size: int, model_rounds: list[dict], e2e_rounds: list[list[float]]) -> dict:
    """One table row from the rounds of one batch size (model step, and end to end when timed)."""
    times = [t for r in model_rounds for t in r["times"]]
    row = {"batch_size": batch_size, "status": "ok", "rounds": len(model_rounds),
           **throughput_stats(batch_size, [r["times"] for r in model_rounds], prefix=""),
           "step_time_median_s": float(np.median(times)),
           "step_time_p95_s": float(np.percentile(times, P95)),
           "step_time_mean_s": float(np.mean(times)),
           "peak_memory_mb": max(r["peak_memory_mb"] for r in model_rounds),
           "memory_kind": model_rounds[0]["memory_kind"], "error": ""}
    others = [r["others_busy"] for r in model_rounds if r.get("others_busy") is not None]
    # cores other processes kept busy during this size's measurements
    row["others_busy_median"] = float(np.median(others)) if others else math.nan
    row["others_busy_max"] = max(others) if others else math.nan
    if e2e_rounds:
        row.update(throughput_stats(batch_size, e2e_rounds, prefix="e2e_"))
        # share of an end-to-end step spent outside the model step: loading, augmentation, copies
        row["input_share"] = 1 - row["e2e_samples_per_s"] / row["samples_per_s"]
    return row


def throughput_sweep(cfg: RunConfig, *, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                     warmup_steps: int = 3, timed_steps: int = 10, rounds: int = DEFAULT_ROUNDS,
                     max_rounds: int | None = None, fraction: float = RECOMMEND_FRACTION,
                     end_to_end: bool = True, amp: str | None = None, channels_last: bool | None = None,
                     compile_model: bool | None = None, data: DataSplits | None = None) -> pd.DataFrame:
    """Training throughput for each batch size, smallest first: one row per batch size.

    cfg: the run config giving model, data, optimizer, loss, seed and device.
    batch_sizes: batch sizes to time; sorted ascending. The sweep stops going up at the first
        out-of-memory, which is recorded as a row with status ``oom``.
    warmup_steps: untimed steps first in each measurement (cuDNN autotuning, optimizer state,
        compilation, loader workers).
    timed_steps: timed steps per batch size in each round.
    rounds: interleaved rounds; every batch size is measured once per round, in ascending order in
        odd rounds and descending order in even ones. Columns ``samples_per_s`` (median round) with
        ``_q1``, ``_q3``, ``_min``, ``_max`` and ``spread`` (IQR / median) describe the model step.
    max_rounds: if larger than ``rounds``, keep adding rounds after ``rounds`` until the
        recommendation (``recommend_batch_size`` with ``fraction``) is the same in at least
        ``SETTLED_AGREEMENT`` of bootstrap resamples of the rounds, or ``max_rounds`` is reached.
    end_to_end: also time the step fed by the real loader with host-to-device copies (columns
        ``e2e_*``, and ``input_share``: the share of an end-to-end step spent outside the model step).
    amp: off, bf16 or fp16 (None: ``cfg.train.amp``).
    channels_last, compile_model: see ``build_model`` (None: ``train.channels_last``, ``train.compile``).
    data: loaded splits to reuse (None: built from ``cfg.data``).
    Every row records the device, the effective AMP dtype, channels_last, compile and the number
    of torch CPU threads.
    """
    if isinstance(batch_sizes, (str, bytes)) or not batch_sizes or not all(
            isinstance(b, (int, np.integer)) and not isinstance(b, bool) and b >= 1 for b in batch_sizes):
        raise ConfigError(f"batch_sizes = {batch_sizes!r}: expected a list of positive integers")
    sizes = sorted({int(b) for b in batch_sizes})
    if warmup_steps < 0 or timed_steps < 1:
        raise ConfigError(f"warmup_steps = {warmup_steps}, timed_steps = {timed_steps}: expected ≥ 0 and ≥ 1")
    if isinstance(rounds, bool) or not isinstance(rounds, (int, np.integer)) or rounds < 1:
        raise ConfigError(f"rounds = {rounds!r}: expected an integer ≥ 1")
    if max_rounds is not None and (isinstance(max_rounds, bool) or not isinstance(max_rounds, (int, np.integer))
                                   or max_rounds < rounds):
        raise ConfigError(f"max_rounds = {max_rounds!r}: expected None or an integer ≥ rounds ({rounds})")
    device = select_device(cfg.train.device)
    amp = effective_amp(cfg.train.amp if amp is None else amp, device)
    channels_last = cfg.train.channels_last if channels_last is None else channels_last
    compile_model = cfg.train.compile if compile_model is None else compile_model
    data = data or build_data(cfg.data)
    check_model_fits_data(cfg, data)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as in training: fixed shapes, fastest kernels
    threads = choose_threads(cfg.train.num_threads)  # as a run of this config would choose them
    with torch_threads(threads.threads):
        options = {"model": cfg.model["name"], "device": str(device), "amp": amp,
                   "channels_last": channels_last, "compile": compile_model,
                   "warmup_steps": warmup_steps, "timed_steps": timed_steps,
                   "cpu_threads": torch.get_num_threads(), "threads_reason": threads.reason,
                   "cpu_cores": len(affinity_cores())}
        settings = {"data": data, "device": device, "amp": amp, "channels_last": channels_last,
                    "compile_model": compile_model, "warmup_steps": warmup_steps, "timed_steps": timed_steps}
        model_rounds: dict[int, list[dict]] = {b: [] for b in sizes}
        e2e_rounds: dict[int, list[list[float]]] = {b: [] for b in sizes}
        oom: tuple[int, str] | None = None  # (batch size, message) of the first out-of-memory

        def table() -> pd.DataFrame:
            rows = [{**options, **summarise_batch_size(b, model_rounds[b], e2e_rounds[b])}
                    for b in sizes if model_rounds[b] and (oom is None or b < oom[0])]
            if oom is not None:
                rows.append({**options, "batch_size": oom[0], "status": "oom", "rounds": 0, "samples_per_s": math.nan,
                             "spread": math.nan, "step_time_median_s": math.nan, "step_time_p95_s": math.nan,
                             "step_time_mean_s": math.nan, "peak_memory_mb": math.nan, "memory_kind": "",
                             "error": oom[1]})
            return pd.DataFrame(rows)

        for round_index in range(max(rounds, max_rounds or 0)):
            if round_index >= rounds:  # only with max_rounds: add a round unless the choice is settled
                agreement = recommendation_agreement(table(), fraction)
                log.info("after %d rounds the recommendation agrees in %.0f%% of resamples", round_index,
                         100 * agreement)
                if agreement >= SETTLED_AGREEMENT:
                    break
            for batch_size in (sizes if round_index % 2 == 0 else sizes[::-1]):
                if oom is not None and batch_size >= oom[0]:
                    continue
                failure = ""
                try:
                    snapshot = cpu_snapshot()  # the load of other processes during this measurement
                    measured = measure_training(cfg, batch_size, **settings)
                    e2e = measure_end_to_end(cfg, batch_size, **settings) if end_to_end else None
                    measured["others_busy"] = others_busy_since(snapshot, affinity_cores())
                except Exception as err:
                    if not is_out_of_memory(err):
                        raise
                    failure = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    traceback.clear_frames(err.__traceback__)  # the failed step's locals: model, activations
                    err.__traceback__ = None  # in case something still holds the exception
                if failure:
                    # Outside the except block: the traceback, which pins the step's tensors, is gone.
                    release_memory(device)
                    log.warning("batch %d: out of memory; it and larger batch sizes skipped (%s)", batch_size, failure)
                    oom = (batch_size, failure)
                    continue
                model_rounds[batch_size].append(measured)
                if e2e is not None:
                    e2e_rounds[batch_size].append(e2e)
                log.info("round %d, batch %d: %.1f samples/s (model step)", round_index + 1, batch_size,
                         batch_size * len(measured["times"]) / sum(measured["times"]))
        return table()


def paired_shares(per_round: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shares of the best and their noise from per-round throughputs of shape (..., sizes, rounds).

    The best size has the highest median. A size's share is the median over rounds of its
    throughput divided by the best size's in the same round; the noise is the median over the
    other sizes of the IQR / median of those per-round ratios (0 with one size). Returns shares
    (..., sizes) and noise (...).
    """
    per_round = np.asarray(per_round, dtype=float)
    best = np.argmax(np.median(per_round, axis=-1), axis=-1)  # (...)
    reference = np.take_along_axis(per_round, best[..., None, None], axis=-2)  # (..., 1, rounds)
    ratios = per_round / reference
    share = np.median(ratios, axis=-1)  # (..., sizes)
    if per_round.shape[-2] == 1:
        return share, np.zeros(share.shape[:-1])
    q75, q25 = np.percentile(ratios, [75, 25], axis=-1)
    spread = (q75 - q25) / share
    others = np.ones(spread.shape, dtype=bool)
    np.put_along_axis(others, best[..., None], False, axis=-1)
    return share, np.nanmedian(np.where(others, spread, np.nan), axis=-1)


def relative_to_best(ok: pd.DataFrame) -> tuple[pd.Series, float]:
    """Each batch size's throughput as a share of the best one's, and the noise of those shares.

    With several rounds the comparison is paired (``paired_shares``): in each round, a size's
    throughput divided by the best size's throughput in the same round (measured minutes apart,
    under the same load from other processes), then the median over rounds; the noise is the
    median over the other sizes of the interquartile range of those per-round shares relative to
    their median. With one round (or no per-round values) the shares are the ratio of the
    medians and the noise is 0.
    """
    per_round = ok.get("samples_per_s_rounds")
    rounds = {len(r) for r in per_round} if per_round is not None else {1}
    if per_round is None or len(rounds) != 1 or rounds.pop() < 2:
        return ok["samples_per_s"] / ok["samples_per_s"].max(), 0.0
    share, noise = paired_shares(np.array(per_round.tolist(), dtype=float))
    return pd.Series(share, index=ok.index), float(noise)


def recommended_row(ok: pd.DataFrame, fraction: float) -> tuple[Any, pd.Series, float, float]:
    """(index of the chosen row, shares of the best, noise, tolerance) for rows that all ran."""
    share, noise = relative_to_best(ok)
    tolerance = max(1 - fraction, noise)
    tied = share[share >= 1 - tolerance - 1e-12].index
    return ok.loc[tied, "batch_size"].idxmin(), share, noise, tolerance


def resampled_choices(table: pd.DataFrame, fraction: float = RECOMMEND_FRACTION, *,
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> np.ndarray | None:
    """The batch size each bootstrap resample of the rounds would recommend (rounds drawn with
    replacement, the same rounds for every batch size, so pairs stay paired), shape (resamples,).
    None without per-round values or with fewer than two rounds."""
    ok = table[(table["status"] == "ok") & table["samples_per_s"].notna()].sort_values("batch_size")
    if ok.empty or "samples_per_s_rounds" not in ok or len({len(r) for r in ok["samples_per_s_rounds"]}) != 1:
        return None
    per_round = np.array(ok["samples_per_s_rounds"].tolist(), dtype=float)  # (sizes, rounds)
    if per_round.shape[1] < 2:
        return None
    draws = np.random.default_rng(seed).integers(0, per_round.shape[1], (resamples, per_round.shape[1]))
    share, noise = paired_shares(per_round[:, draws].transpose(1, 0, 2))  # (resamples, sizes), (resamples,)
    tolerance = np.maximum(1 - fraction, noise)
    tied = share >= 1 - tolerance[:, None] - 1e-12
    sizes = ok["batch_size"].to_numpy()
    return sizes[np.argmax(tied, axis=1)]  # sizes ascending: the first tied is the smallest


def recommendation_agreement(table: pd.DataFrame, fraction: float = RECOMMEND_FRACTION, *,
                             resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> float:
    """How settled the recommendation is: the share of bootstrap resamples of the rounds
    (``resampled_choices``) that choose the same batch size as all rounds do. NaN without
    per-round values or with fewer than two rounds."""
    choices = resampled_choices(table, fraction, resamples=resamples, seed=seed)
    if choices is None:
        return math.nan
    ok = table[(table["status"] == "ok") & table["samples_per_s"].notna()].sort_values("batch_size")
    chosen = ok.loc[recommended_row(ok, fraction)[0], "batch_size"]
    return float(np.mean(choices == chosen))


def oversubscribed_reason(table: pd.DataFrame) -> str | None:
    """Why the timings are not those of the cores the sweep had, if other processes kept more of
    them busy (the median over the batch sizes of each one's median reading) than the sweep's
    threads left free (``OVERSUBSCRIBED_SLACK``); None otherwise or without load readings
    (hand-made tables, no ``/proc/stat``)."""
    needed = {"others_busy_median", "cpu_threads", "cpu_cores"}
    if not needed <= set(table.columns) or table["others_busy_median"].isna().all():
        return None
    busy = float(table["others_busy_median"].median())
    threads, cores = int(table["cpu_threads"].max()), int(table["cpu_cores"].max())
    if busy + threads <= cores + OVERSUBSCRIBED_SLACK:
        return None
    return (f"other processes kept {busy:.1f} of the {cores} cores busy (median of the measurements) while "
            f"{threads} thread(s) were timed: the sweep's threads waited for CPU time, which slows the many short "
            "steps of small batches most, so the timings favour large batches; measure again on a quieter machine "
            "(or with a lower train.num_threads)")


def neighbour_agreement(table: pd.DataFrame, fraction: float = RECOMMEND_FRACTION) -> float:
    """The share of bootstrap resamples of the rounds (``resampled_choices``) that choose the same
    batch size as all rounds do or a neighbour of it on the measured ladder (the next smaller or
    larger size timed). NaN without per-round values or with fewer than two rounds."""
    choices = resampled_choices(table, fraction)
    if choices is None:
        return math.nan
    ok = table[(table["status"] == "ok") & table["samples_per_s"].notna()].sort_values("batch_size")
    ladder = ok["batch_size"].tolist()
    at = ladder.index(ok.loc[recommended_row(ok, fraction)[0], "batch_size"])
    return float(np.isin(choices, ladder[max(0, at - 1):at + 2]).mean())


def unsettled_reason(table: pd.DataFrame, fraction: float = RECOMMEND_FRACTION) -> str | None:
    """Why no batch size can be recommended from these timings, or None when the choice is settled:
    the machine was over-subscribed while timed, or fewer than ``SETTLED_AGREEMENT`` of the
    bootstrap resamples of the rounds choose the same size or a neighbour of it
    (``neighbour_agreement``: the plateau's edge is lost in the noise, so a second sweep could land
    two steps away)."""
    loaded = oversubscribed_reason(table)
    if loaded is not None:
        return loaded
    near = neighbour_agreement(table, fraction)
    if not math.isfinite(near) or near >= SETTLED_AGREEMENT:
        return None
    sizes, counts = np.unique(resampled_choices(table, fraction), return_counts=True)
    spread = ", ".join(f"{int(b)} ({c / counts.sum():.0%})" for b, c in zip(sizes, counts))
    rounds = int(table["rounds"].max()) if "rounds" in table else 1
    return (f"resampling the {rounds} rounds gives the same size or a neighbour only {near:.0%} of the "
            f"time (resamples choose {spread}): the measurement noise blurs the plateau's edge; more rounds "
            "(--max-rounds) or a quieter machine would settle it")


def recommend_batch_size(table: pd.DataFrame, fraction: float = RECOMMEND_FRACTION) -> dict:
    """The smallest batch size whose throughput cannot be told apart from the best one's.

    Sizes whose share of the best throughput (``relative_to_best``: paired per round, median over
    rounds) is at least ``1 - tolerance`` count as equally fast, and the smallest of them is chosen
    (larger batches buy no measurable speed and cost memory and, at a fixed number of epochs,
    optimizer steps). ``tolerance`` is the larger of the measured noise of the shares and
    ``1 - fraction`` (the share of the best throughput worth giving up even without noise).
    Returns the choice, the best point, the noise, how settled the choice is
    (``recommendation_agreement``) and a sentence saying so. When it is not settled
    (``unsettled_reason``: the resamples of the rounds stray beyond the chosen size's neighbours,
    or the machine was over-subscribed while timed),
    ``batch_size`` and ``best_batch_size`` are None, ``settled`` is False and ``reason`` says why.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction = {fraction}: expected 0 < fraction ≤ 1")
    ok = table[(table["status"] == "ok") & table["samples_per_s"].notna()].sort_values("batch_size")
    if ok.empty:
        reason = "no batch size completed a training step"
        return {"batch_size": None, "samples_per_s": math.nan, "best_batch_size": None,
                "best_samples_per_s": math.nan, "fraction_of_best": math.nan, "threshold": fraction,
                "noise": math.nan, "tolerance": math.nan, "agreement": math.nan, "settled": False,
                "reason": reason, "sentence": "No batch size completed a training step, so none is recommended."}
    index, share, noise, tolerance = recommended_row(ok, fraction)
    oom = table[table["status"] == "oom"]
    oom_text = f" Batch size {int(oom['batch_size'].iloc[0])} ran out of memory." if not oom.empty else ""
    reason = unsettled_reason(table, fraction)
    if reason is not None:  # no size at all: a confident wrong one is worse than none
        return {"batch_size": None, "samples_per_s": math.nan, "best_batch_size": None,
                "best_samples_per_s": math.nan, "fraction_of_best": math.nan, "threshold": fraction,
                "noise": noise, "tolerance": tolerance, "agreement": recommendation_agreement(ok, fraction),
                "settled": False, "reason": reason,
                "sentence": f"Not settled, so no batch size is recommended: {reason}.{oom_text}"}
    chosen, best = ok.loc[index], ok.loc[ok["samples_per_s"].idxmax()]
    chosen_share = float(share[index])
    agreement = recommendation_agreement(ok, fraction)
    rounds = int(ok["rounds"].min()) if "rounds" in ok else 1
    measured = (f"median of {rounds} paired rounds; measurement noise {noise:.1%}, the IQR of the "
                f"per-round ratios" if rounds > 1 else "one round, so no measured noise")
    band = (f"within the measurement noise ({tolerance:.1%}) of the best" if noise >= 1 - fraction
            else f"within {tolerance:.0%} of the best")
    if int(chosen["batch_size"]) == int(best["batch_size"]):
        sentence = (f"Use batch size {int(chosen['batch_size'])}: it gives the best throughput "
                    f"({best['samples_per_s']:.0f} samples/s; {measured}) and no smaller batch size is {band}.")
    else:
        sentence = (f"Use batch size {int(chosen['batch_size'])}: {chosen['samples_per_s']:.0f} samples/s, "
                    f"{chosen_share:.0%} of the best round by round ({best['samples_per_s']:.0f} samples/s at batch size "
                    f"{int(best['batch_size'])}; {measured}), the smallest batch size {band}.")
    if math.isfinite(agreement):
        sentence += (f" Resampling the rounds gives the same choice {agreement:.0%} of the time"
                     + ("." if agreement >= SETTLED_AGREEMENT else
                        f", it or a neighbour {neighbour_agreement(ok, fraction):.0%}."))
    sentence += oom_text
    return {"batch_size": int(chosen["batch_size"]), "samples_per_s": float(chosen["samples_per_s"]),
            "best_batch_size": int(best["batch_size"]), "best_samples_per_s": float(best["samples_per_s"]),
            "fraction_of_best": chosen_share, "threshold": fraction, "noise": noise, "tolerance": tolerance,
            "agreement": agreement, "settled": True, "reason": None, "sentence": sentence}


def format_throughput_table(table: pd.DataFrame) -> str:
    """The sweep as text: median throughput with its spread, end to end when measured, memory."""
    columns = {"batch_size": "batch", "status": "status", "samples_per_s": "model samples/s",
               "samples_per_s_min": "min", "samples_per_s_max": "max", "spread": "IQR/median",
               "e2e_samples_per_s": "end-to-end samples/s", "e2e_spread": "e2e IQR/median",
               "input_share": "input share", "step_time_median_s": "step s (median)",
               "peak_memory_mb": "peak MiB"}
    view = table[[c for c in columns if c in table]].rename(columns=columns)
    percent = {"IQR/median", "e2e IQR/median", "input share"}
    formatters = {c: (lambda v: "–" if pd.isna(v) else f"{v:.0%}") if c in percent
                  else (lambda v: "–" if pd.isna(v) else f"{v:.4g}") for c in view.columns
                  if view[c].dtype.kind == "f"}
    return view.to_string(index=False, formatters=formatters)


def limiting_part(table: pd.DataFrame, batch_size: int) -> dict:
    """Whether the model step or the input pipeline limits end-to-end throughput at ``batch_size``.

    The input pipeline limits when the end-to-end median falls below the model-step median by
    more than the noise. With per-round values the noise is paired: the IQR over rounds of
    1 - end-to-end / model step (both measured back to back in each round); without them, the
    larger of the two spreads (IQR / median). Returns both throughputs, the input share and a
    sentence.
    """
    rows = table[(table["batch_size"] == batch_size) & (table["status"] == "ok")]
    if rows.empty or "e2e_samples_per_s" not in rows or pd.isna(rows["e2e_samples_per_s"].iloc[0]):
        raise ValueError(f"batch size {batch_size}: no end-to-end measurement in the table "
                         f"(throughput_sweep(..., end_to_end=True))")
    row = rows.iloc[0]
    if "samples_per_s_rounds" in row and "e2e_samples_per_s_rounds" in row:
        per_round = 1 - np.asarray(row["e2e_samples_per_s_rounds"]) / np.asarray(row["samples_per_s_rounds"])
        noise = float(np.subtract(*np.percentile(per_round, [75, 25])))
    else:
        noise = max(float(row["spread"]), float(row["e2e_spread"]))
    share = float(row["input_share"])
    limit = "input pipeline" if share > noise else "model step"
    figures = (f"{row['e2e_samples_per_s']:.0f} samples/s end to end (loader, augmentation, host-to-device "
               f"copy) against {row['samples_per_s']:.0f} for the model step alone")
    if limit == "input pipeline":
        sentence = (f"At batch size {batch_size} the input pipeline limits: {figures}; it takes {share:.0%} "
                    f"of an end-to-end step, beyond the {noise:.0%} noise.")
    else:
        sentence = (f"At batch size {batch_size} the model step limits: {figures}; the difference "
                    f"({share:+.0%}) is within the {noise:.0%} noise.")
    return {"batch_size": batch_size, "limit": limit, "samples_per_s": float(row["samples_per_s"]),
            "e2e_samples_per_s": float(row["e2e_samples_per_s"]), "input_share": share, "noise": noise,
            "sentence": sentence}


def device_memory_mb(device: torch.device) -> float:
    """All the memory of the device: the GPU's, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / 2**20
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20


def auto_batch_size(table: pd.DataFrame, *, memory_cap_mb: float, fraction: float = RECOMMEND_FRACTION) -> dict:
    """The largest batch size on the throughput plateau whose peak memory is within the cap.

    The plateau: batch sizes reaching ``fraction`` of the best throughput among those that fit
    under ``memory_cap_mb``. Past the plateau's start a larger batch costs little speed, and the
    largest one that fits keeps the lab's large-batch settings where the memory allows them.
    When the machine was over-subscribed while timed (``oversubscribed_reason``) the plateau cannot
    be placed: the default ``train.batch_size`` is taken instead (or the largest measured size
    below it that fits; the smallest that fits if none is below), with ``settled`` False and the
    reason in the choice (the run's ``summary.json``) and the log.
    """
    ok = table[(table["status"] == "ok") & table["samples_per_s"].notna()]
    fits = ok[ok["peak_memory_mb"] <= memory_cap_mb].sort_values("batch_size")
    if fits.empty:
        smallest = f"{ok['peak_memory_mb'].min():.0f} MiB" if len(ok) else "out of memory"
        raise ConfigError(f"train.batch_size = auto: no batch size of {table['batch_size'].tolist()} fits under "
                          f"{memory_cap_mb:.0f} MiB (train.max_memory_fraction of the device; the smallest "
                          f"needs {smallest}): raise train.max_memory_fraction or set train.batch_size")
    best = float(fits["samples_per_s"].max())
    reason = oversubscribed_reason(table)
    if reason is not None:  # the timings cannot place the plateau; the memory readings still hold
        default = TrainConfig.model_fields["batch_size"].default
        below = fits[fits["batch_size"] <= default]
        chosen = (below if len(below) else fits).iloc[-1 if len(below) else 0]
        return auto_choice(chosen, best, memory_cap_mb, fraction, reason,
                           f"batch size {int(chosen['batch_size'])}: the timings are not settled ({reason}), so "
                           f"the default train.batch_size ({default}) or the largest measured size below it that "
                           f"fits under {memory_cap_mb:.0f} MiB ({float(chosen['peak_memory_mb']):.0f} MiB at its peak)")
    plateau = fits[fits["samples_per_s"] >= fraction * best]
    chosen = plateau.iloc[-1]
    return auto_choice(chosen, best, memory_cap_mb, fraction, None,
                       f"batch size {int(chosen['batch_size'])}: the largest within {fraction:.0%} of the best "
                       f"throughput ({best:.0f} samples/s) using at most {memory_cap_mb:.0f} MiB at its peak "
                       f"({float(chosen['peak_memory_mb']):.0f} MiB)")


def auto_choice(chosen, best: float, memory_cap_mb: float, fraction: float, reason: str | None,
                sentence: str) -> dict:
    """The record of a ``batch_size: auto`` choice (``chosen``: its sweep row); settled unless ``reason``."""
    return {"batch_size": int(chosen["batch_size"]), "samples_per_s": float(chosen["samples_per_s"]),
            "peak_memory_mb": float(chosen["peak_memory_mb"]), "best_samples_per_s": best,
            "memory_cap_mb": float(memory_cap_mb), "fraction": fraction, "settled": reason is None,
            "reason": reason, "sentence": sentence}


# Measured choices of this process: a sweep's points differ in LR or seed, not in step cost.
_AUTO_CHOICES: dict[str, dict] = {}


def choose_batch_size(cfg: RunConfig, data: DataSplits, device: torch.device) -> dict:
    """``batch_size: auto``: time a short throughput sweep and pick with ``auto_batch_size``.

    Returns the choice with the measured rows (recorded in the run's summary). Runs of one process
    that differ only in what does not change a step's cost (LR, seed, names) share one measurement.
    """
    cap = cfg.train.max_memory_fraction * device_memory_mb(device)
    key = json.dumps([cfg.model, cfg.data, cfg.optim.name, cfg.train.loss, cfg.train.amp, cfg.train.clip_norm,
                      cfg.train.channels_last, cfg.train.compile, cfg.train.compile_mode, str(device), cap],
                     sort_keys=True, default=str)
    if key not in _AUTO_CHOICES:
        sizes = [b for b in AUTO_BATCH_SIZES if b <= len(data.train)] or [len(data.train)]
        # one short round of model steps: the choice is among sizes far apart in memory
        table = throughput_sweep(cfg, batch_sizes=sizes, warmup_steps=AUTO_WARMUP_STEPS,
                                 timed_steps=AUTO_TIMED_STEPS, rounds=1, end_to_end=False,
                                 data=data)  # amp, channels_last and compile as the run's
        release_memory(device)
        choice = auto_batch_size(table, memory_cap_mb=cap)
        # with the load readings: the recorded rows give the recorded choice, settled or not
        columns = ["batch_size", "status", "samples_per_s", "peak_memory_mb", "memory_kind",
                   "others_busy_median", "others_busy_max", "cpu_threads", "cpu_cores"]
        choice["rows"] = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
                          for row in table[columns].to_dict(orient="records")]  # JSON-ready, exact floats
        _AUTO_CHOICES[key] = choice
        (log.info if choice["settled"] else log.warning)("train.batch_size auto: %s", choice["sentence"])
    return dict(_AUTO_CHOICES[key])


# ---------------------------------------------------------------------------------------------
# FLOPs, latency and the efficiency table


def attention_forward_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """Scaled dot-product attention as two batched products per batch item and head: the scores
    Q Kᵀ (s_q × d_qk × s_k) and the output P V (s_q × s_k × d_v); 2 FLOPs per multiply-add."""
    b, heads, s_q, d_qk = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * heads * (s_q * d_qk * s_k + s_q * s_k * d_v)


def attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """Backward of scaled dot-product attention as four batched products per batch item and head:
    dP = dO Vᵀ and dV = Pᵀ dO (s_q × s_k × d_v each), dQ = dS K and dK = dSᵀ Q (s_q × s_k × d_qk each)."""
    b, heads, s_q, d_qk = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * heads * 2 * (s_q * s_k * d_v + s_q * s_k * d_qk)


aten = torch.ops.aten
# Attention kernels counted alike on every device (see the module docstring): the CPU's fused
# kernel, which torch's table lacks, and every fused backward without the score recomputation.
# The math kernel (meta device) decomposes into bmm, which torch counts the same way.
ATTENTION_FLOP_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: attention_forward_flops,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: attention_backward_flops,
    aten._scaled_dot_product_flash_attention_backward: attention_backward_flops,
    aten._scaled_dot_product_efficient_attention_backward: attention_backward_flops,
    aten._scaled_dot_product_cudnn_attention_backward: attention_backward_flops,
}


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the operations ``fn`` runs, as ``FlopCounterMode`` counts them (2 per multiply-add),
    with attention counted on every device (``ATTENTION_FLOP_FORMULAS``)."""
    with FlopCounterMode(display=False, custom_mapping=ATTENTION_FLOP_FORMULAS) as counter:
        fn()
    return int(counter.get_total_flops())


def model_flops(model: nn.Module, batch: dict, input_keys: Sequence[str], cfg: RunConfig,
                task: str) -> dict[str, int]:
    """FLOPs of one forward pass (no grad) and of forward + loss + backward (``task``: the data set's,
    which picks the loss).

    Both are counted in eval mode: BatchNorm then uses its running statistics, so a batch of one
    works even where a feature map is 1×1, and the counted matrix work is the same as in training
    (dropout and normalisation are element-wise). The optimizer update is element-wise and not
    counted. The model's gradients are cleared after.
    """
    inputs = {k: batch[k] for k in input_keys}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        forward = count_flops(lambda: model(**inputs))

    def forward_backward():
        compute_loss(model(**inputs), batch, cfg, task).backward()

    train = count_flops(forward_backward)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {"forward_flops": forward, "train_flops": train}


def flops_summary(flops: dict[str, int], batch_size: int) -> dict[str, float]:
    """Per-sample GFLOPs and GMACs (1 GMAC = 2 GFLOPs) from counts over a batch."""
    out = {}
    for part in ("forward", "train"):
        per_sample = flops[f"{part}_flops"] / batch_size
        out[f"{part}_gflops_per_sample"] = per_sample / 1e9
        out[f"{part}_gmacs_per_sample"] = per_sample / 2e9
    return out


def measure_latency(model: nn.Module, inputs: dict, device: torch.device, *, warmup: int = 3,
                    repeats: int = 10, amp: str = "off") -> dict[str, float]:
    """Inference latency of one forward pass (eval mode, no grad): median and p95 in milliseconds."""
    was_training = model.training
    model.eval()
    with torch.inference_mode():
        def forward():
            with autocast_context(device, amp):
                model(**inputs)
        times = time_calls(forward, device, warmup=warmup, repeats=repeats)
    model.train(was_training)
    return {"latency_ms": 1e3 * float(np.median(times)), "latency_p95_ms": 1e3 * float(np.percentile(times, P95))}


def flops_report(cfg: RunConfig, *, batch_size: int = 1, data: DataSplits | None = None) -> dict:
    """Params and per-sample FLOPs of the configured model on a real batch (for ``vqalab bench flops``).

    batch_size: items in the counted batch. For VQA models questions sharing an image in a batch
        pay for the image encoder once, so per-sample FLOPs fall with larger grouped batches;
        batch size 1 gives the cost of one question alone.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size = {batch_size}: expected ≥ 1")
    data = data or build_data(cfg.data)
    seed_everything(cfg.seed)
    device = select_device(cfg.train.device)  # counts do not depend on it; only the time taken does
    model = build_model(cfg, data, device, compile_model=False)  # the counter sees the eager ops
    batch = to_device(fixed_batch(data, batch_size, cfg.seed), device)
    flops = model_flops(model, batch, data.input_keys, cfg, data.task)
    return {
        "model": cfg.model["name"], "model_kwargs": {k: v for k, v in cfg.model.items() if k != "name"},
        "data": cfg.data.get("name"), "batch_size": batch_size,
        "inputs": {k: list(batch[k].shape) for k in data.input_keys if torch.is_tensor(batch[k])},
        **count_parameters(model), **flops, **flops_summary(flops, batch_size),
        "units": "FLOPs as counted by torch.utils.flop_counter (matmul, conv, and attention on every device "
                 "with the same formula; 2 FLOPs per multiply-add; element-wise ops and the optimizer update "
                 "not counted); "
                 "GMACs = GFLOPs / 2; train = forward + backward",
    }


def efficiency_table(configs: Mapping[str, RunConfig] | Sequence[RunConfig], *, batch_size: int = 32,
                     flops_batch_size: int = 1, latency_batch_size: int = 1, warmup_steps: int = 3,
                     timed_steps: int = 10, rounds: int = 1, amp: str | None = None,
                     channels_last: bool | None = None, compile_model: bool | None = None) -> pd.DataFrame:
    """One row per model: params, FLOPs per sample, latency, training throughput and peak memory.

    configs: label → run config (or a list; labelled by ``name`` if unique, else by model name).
    batch_size: batch size of the throughput and memory measurement (a training step).
    flops_batch_size: batch counted for FLOPs per sample (see ``flops_report``).
    latency_batch_size: batch of the inference latency (forward only, eval mode).
    rounds: timing rounds of the throughput (its median; the model step only).
    Other arguments as in ``throughput_sweep``. An out-of-memory gives status ``oom`` and NaN
    throughput for that model; the other models are still measured.
    """
    if not isinstance(configs, Mapping):
        names = [c.name for c in configs]
        use_name = len(set(names)) == len(names)
        configs = {(c.name if use_name else f"{c.model['name']}#{i}"): c for i, c in enumerate(configs)}
    data_cache: dict[str, DataSplits] = {}
    rows = []
    for label, cfg in configs.items():
        key = repr(sorted(cfg.data.items()))
        if key not in data_cache:
            data_cache[key] = build_data(cfg.data)
        data = data_cache[key]
        threads = choose_threads(cfg.train.num_threads)  # as a run of this config would choose them
        with torch_threads(threads.threads):
            flops = flops_report(cfg, batch_size=flops_batch_size, data=data)
            device = select_device(cfg.train.device)
            used_amp = effective_amp(cfg.train.amp if amp is None else amp, device)
            used_channels_last = cfg.train.channels_last if channels_last is None else channels_last
            used_compile = cfg.train.compile if compile_model is None else compile_model
            seed_everything(cfg.seed)
            model = build_model(cfg, data, device, channels_last=used_channels_last, compile_model=used_compile)
            latency_inputs = to_device(fixed_batch(data, latency_batch_size, cfg.seed), device,
                                             used_channels_last)
            latency = measure_latency(model, {k: latency_inputs[k] for k in data.input_keys}, device,
                                      warmup=warmup_steps, repeats=timed_steps, amp=used_amp)
            del model, latency_inputs
            sweep = throughput_sweep(cfg, batch_sizes=[batch_size], warmup_steps=warmup_steps,
                                     timed_steps=timed_steps, rounds=rounds, end_to_end=False, amp=used_amp,
                                     channels_last=used_channels_last, compile_model=used_compile,
                                     data=data).iloc[0]
        rows.append({
            "name": label, "model": cfg.model["name"],
            "params_total": flops["params_total"], "params_trainable": flops["params_trainable"],
            "params_m": flops["params_total"] / 1e6,
            **{k: flops[k] for k in ("forward_gflops_per_sample", "forward_gmacs_per_sample",
                                     "train_gflops_per_sample", "train_gmacs_per_sample")},
            "flops_batch_size": flops_batch_size, "latency_batch_size": latency_batch_size, **latency,
            "batch_size": batch_size, "status": sweep["status"], "samples_per_s": sweep["samples_per_s"],
            "spread": sweep["spread"],
            "step_time_median_s": sweep["step_time_median_s"], "peak_memory_mb": sweep["peak_memory_mb"],
            "memory_kind": sweep["memory_kind"], "device": str(device), "amp": used_amp,
            "channels_last": used_channels_last, "compile": used_compile,
            "cpu_threads": sweep["cpu_threads"], "threads_reason": sweep["threads_reason"],
        })
    return pd.DataFrame(rows)
