"""Measuring models: training-step throughput across batch sizes, params, FLOPs, latency, memory.

What is timed: one whole training step (zero grads, forward, loss, backward, gradient norm and
optional clipping, optimizer step) on a fixed batch already on the device; the input pipeline is
not timed, and gradient accumulation and mixup are not applied (one micro-batch is one step). Steps run after warm-up and
the device is synchronised before every clock read, so each time is a finished step, not a
queued one.

Inputs are real batches of the configured data set (``build_data``): the first training batch of
size B in the order the training loop draws it (``epoch_batches`` with the run's seed and
grouping). Question lengths and the number of distinct images per batch (VQA models encode each
distinct image once) are therefore what training sees. If B exceeds the training split, indices
wrap around and a warning says so.

Memory: on a GPU the CUDA allocator's ``max_memory_allocated`` after ``reset_peak_memory_stats``
(tensors only, not the allocator's cache); on the CPU the process's peak resident set size
(everything the process holds: Python, libraries, the data set), reset before each batch size
where Linux allows it (``/proc/self/clear_refs``), else the peak since the process started.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode``: matrix multiplies,
convolutions and attention kernels, 2 FLOPs per multiply-add; element-wise work (normalisation,
activations, the optimizer update) is not counted. GMACs = GFLOPs / 2. torch has no formula for
the CPU kernel of ``scaled_dot_product_attention`` (it would count 0); this module registers
torch's own attention formulas for it, so attention counts the same on the CPU as on a GPU.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
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

from vqalab.config import RunConfig
from vqalab.data import DataSplits, build_data
from vqalab.data.samplers import epoch_batches
from vqalab.registry import ConfigError
from vqalab.train import (
    autocast_context,
    build_model,
    build_optimizer,
    check_model_fits_data,
    compute_loss,
    make_grad_scaler,
    peak_memory_mb,
    seed_everything,
    select_device,
    to_device,
    torch_threads,
    training_step,
)

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
RECOMMEND_FRACTION = 0.95  # smallest batch size reaching this share of the best throughput
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


def fixed_batch(data: DataSplits, batch_size: int, seed: int) -> dict:
    """The first training batch of ``batch_size`` items in the training loop's order (collated)."""
    n = len(data.train)
    order = [i for b in epoch_batches(n, n, seed, FIRST_EPOCH, data.train_groups) for i in b]
    if batch_size > n:
        log.warning("batch size %d exceeds the %d training items: items repeat in the batch", batch_size, n)
    return data.collate([data.train[order[i % n]] for i in range(batch_size)])


def batch_on_device(batch: dict, device: torch.device, channels_last: bool = False) -> dict:
    return to_device(batch, device, channels_last)


def count_parameters(model: nn.Module) -> dict[str, int]:
    return {"params_total": sum(p.numel() for p in model.parameters()),
            "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)}


def effective_amp(amp: str, device: torch.device) -> str:
    """The AMP dtype actually used: autocast runs on CUDA only (``train.autocast_context``)."""
    if amp not in AMP_CHOICES:
        raise ConfigError(f"amp = {amp!r}: expected one of {', '.join(AMP_CHOICES)}")
    if amp != "off" and device.type != "cuda":
        log.warning("amp=%s ignored on %s: timing in full precision", amp, device)
        return "off"
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


def measure_training(cfg: RunConfig, batch_size: int, *, data: DataSplits, device: torch.device,
                     amp: str = "off", channels_last: bool = False, compile_model: bool = False,
                     warmup_steps: int = 3, timed_steps: int = 10) -> dict:
    """Time ``timed_steps`` training steps at ``batch_size`` on a freshly built model and optimizer.

    A fresh model per batch size makes each row independent: its peak memory holds the weights,
    the optimizer state and that batch size's activations. Out-of-memory errors propagate.
    """
    seed_everything(cfg.seed)
    model = build_model(cfg, data, device, channels_last=channels_last, compile_model=compile_model)
    model.train()
    optimizer = build_optimizer(model, cfg)
    scaler = make_grad_scaler(device, amp)
    batch = batch_on_device(fixed_batch(data, batch_size, cfg.seed), device, channels_last)
    was_reset = reset_peak_memory(device)

    def step():  # the training loop's step; one micro-batch, no mixup
        return training_step(model, optimizer, scaler, batch, input_keys=data.input_keys, cfg=cfg, device=device,
                             amp=amp)

    times = time_calls(step, device, warmup=warmup_steps, repeats=timed_steps)
    peak, memory_kind = read_peak_memory(device, was_reset)
    return {
        "batch_size": batch_size, "status": "ok",
        "samples_per_s": batch_size * len(times) / sum(times),  # samples over the summed step time
        "step_time_median_s": float(np.median(times)),
        "step_time_p95_s": float(np.percentile(times, P95)),
        "step_time_mean_s": float(np.mean(times)),
        "peak_memory_mb": peak, "memory_kind": memory_kind, "error": "",
    }


def throughput_sweep(cfg: RunConfig, *, batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
                     warmup_steps: int = 3, timed_steps: int = 10, amp: str | None = None,
                     channels_last: bool = False, compile_model: bool = False,
                     data: DataSplits | None = None) -> pd.DataFrame:
    """Training-step throughput for each batch size, smallest first: one row per batch size.

    cfg: the run config giving model, data, optimizer, loss, seed and device.
    batch_sizes: batch sizes to time; sorted ascending. The sweep stops after the first
        out-of-memory, which is recorded as a row with status ``oom``.
    warmup_steps: untimed steps first (cuDNN autotuning, optimizer state, compilation).
    timed_steps: timed steps per batch size.
    amp: off, bf16 or fp16 (CUDA only; None: ``cfg.train.amp``).
    channels_last, compile_model: see ``build_model``.
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
    device = select_device(cfg.train.device)
    amp = effective_amp(cfg.train.amp if amp is None else amp, device)
    data = data or build_data(cfg.data)
    check_model_fits_data(cfg, data)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as in training: fixed shapes, fastest kernels
    with torch_threads(cfg.train.num_threads):  # as many CPU threads as a run of this config
        options = {"model": cfg.model["name"], "device": str(device), "amp": amp,
                   "channels_last": channels_last, "compile": compile_model,
                   "warmup_steps": warmup_steps, "timed_steps": timed_steps,
                   "cpu_threads": torch.get_num_threads()}  # on a shared CPU, fewer threads can be faster
        rows = []
        for batch_size in sizes:
            failure = ""
            try:
                row = measure_training(cfg, batch_size, data=data, device=device, amp=amp,
                                       channels_last=channels_last, compile_model=compile_model,
                                       warmup_steps=warmup_steps, timed_steps=timed_steps)
            except Exception as err:
                if not is_out_of_memory(err):
                    raise
                failure = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                traceback.clear_frames(err.__traceback__)  # the failed step's locals: model, activations
                err.__traceback__ = None  # in case something still holds the exception
            if not failure:
                rows.append({**options, **row})
                log.info("batch %d: %.1f samples/s", batch_size, row["samples_per_s"])
                continue
            # Outside the except block: the traceback, which pins the step's tensors, is gone.
            release_memory(device)
            log.warning("batch %d: out of memory; larger batch sizes skipped (%s)", batch_size, failure)
            rows.append({**options, "batch_size": batch_size, "status": "oom", "samples_per_s": math.nan,
                         "step_time_median_s": math.nan, "step_time_p95_s": math.nan,
                         "step_time_mean_s": math.nan, "peak_memory_mb": math.nan,
                         "memory_kind": "", "error": failure})
            break
    return pd.DataFrame(rows)


def recommend_batch_size(table: pd.DataFrame, fraction: float = RECOMMEND_FRACTION) -> dict:
    """The smallest batch size whose throughput is at least ``fraction`` of the best one.

    Larger batches past that point buy little speed and cost memory and, at a fixed number of
    epochs, optimizer steps. Returns the choice, the best point and a sentence saying so.
    """
    if not 0 < fraction <= 1:
        raise ConfigError(f"fraction = {fraction}: expected 0 < fraction ≤ 1")
    ok = table[(table["status"] == "ok") & table["samples_per_s"].notna()].sort_values("batch_size")
    if ok.empty:
        return {"batch_size": None, "samples_per_s": math.nan, "best_batch_size": None,
                "best_samples_per_s": math.nan, "fraction_of_best": math.nan, "threshold": fraction,
                "sentence": "No batch size completed a training step, so none is recommended."}
    best = ok.loc[ok["samples_per_s"].idxmax()]
    chosen = ok[ok["samples_per_s"] >= fraction * best["samples_per_s"]].iloc[0]
    share = chosen["samples_per_s"] / best["samples_per_s"]
    if int(chosen["batch_size"]) == int(best["batch_size"]):
        sentence = (f"Use batch size {int(chosen['batch_size'])}: it gives the best throughput "
                    f"({best['samples_per_s']:.0f} samples/s) and no smaller batch size reaches "
                    f"{fraction:.0%} of it.")
    else:
        sentence = (f"Use batch size {int(chosen['batch_size'])}: {chosen['samples_per_s']:.0f} samples/s is "
                    f"{share:.0%} of the best ({best['samples_per_s']:.0f} samples/s at batch size "
                    f"{int(best['batch_size'])}), and it is the smallest batch size within {fraction:.0%} of it.")
    oom = table[table["status"] == "oom"]
    if not oom.empty:
        sentence += f" Batch size {int(oom['batch_size'].iloc[0])} ran out of memory."
    return {"batch_size": int(chosen["batch_size"]), "samples_per_s": float(chosen["samples_per_s"]),
            "best_batch_size": int(best["batch_size"]), "best_samples_per_s": float(best["samples_per_s"]),
            "fraction_of_best": float(share), "threshold": fraction, "sentence": sentence}


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
    """
    ok = table[(table["status"] == "ok") & table["samples_per_s"].notna()]
    fits = ok[ok["peak_memory_mb"] <= memory_cap_mb].sort_values("batch_size")
    if fits.empty:
        smallest = f"{ok['peak_memory_mb'].min():.0f} MiB" if len(ok) else "out of memory"
        raise ConfigError(f"train.batch_size = auto: no batch size of {table['batch_size'].tolist()} fits under "
                          f"{memory_cap_mb:.0f} MiB (train.max_memory_fraction of the device; the smallest "
                          f"needs {smallest}): raise train.max_memory_fraction or set train.batch_size")
    best = float(fits["samples_per_s"].max())
    plateau = fits[fits["samples_per_s"] >= fraction * best]
    chosen = plateau.iloc[-1]
    return {"batch_size": int(chosen["batch_size"]), "samples_per_s": float(chosen["samples_per_s"]),
            "peak_memory_mb": float(chosen["peak_memory_mb"]), "best_samples_per_s": best,
            "memory_cap_mb": float(memory_cap_mb), "fraction": fraction,
            "sentence": f"batch size {int(chosen['batch_size'])}: the largest within {fraction:.0%} of the best "
                        f"throughput ({best:.0f} samples/s) using at most {memory_cap_mb:.0f} MiB at its peak "
                        f"({float(chosen['peak_memory_mb']):.0f} MiB)"}


# Measured choices of this process: a sweep's points differ in LR or seed, not in step cost.
_AUTO_CHOICES: dict[str, dict] = {}


def choose_batch_size(cfg: RunConfig, data: DataSplits, device: torch.device) -> dict:
    """``batch_size: auto``: time a short throughput sweep and pick with ``auto_batch_size``.

    Returns the choice with the measured rows (recorded in the run's summary). Runs of one process
    that differ only in what does not change a step's cost (LR, seed, names) share one measurement.
    """
    cap = cfg.train.max_memory_fraction * device_memory_mb(device)
    key = json.dumps([cfg.model, cfg.data, cfg.optim.name, cfg.train.loss, cfg.train.amp, cfg.train.clip_norm,
                      cfg.train.channels_last, str(device), cap], sort_keys=True, default=str)
    if key not in _AUTO_CHOICES:
        sizes = [b for b in AUTO_BATCH_SIZES if b <= len(data.train)] or [len(data.train)]
        table = throughput_sweep(cfg, batch_sizes=sizes, warmup_steps=AUTO_WARMUP_STEPS,
                                 timed_steps=AUTO_TIMED_STEPS, channels_last=cfg.train.channels_last, data=data)
        release_memory(device)
        choice = auto_batch_size(table, memory_cap_mb=cap)
        columns = ["batch_size", "status", "samples_per_s", "peak_memory_mb", "memory_kind"]
        choice["rows"] = [{k: None if isinstance(v, float) and math.isnan(v) else v for k, v in row.items()}
                          for row in table[columns].to_dict(orient="records")]  # JSON-ready, exact floats
        _AUTO_CHOICES[key] = choice
        log.info("train.batch_size auto: %s", choice["sentence"])
    return dict(_AUTO_CHOICES[key])


# ---------------------------------------------------------------------------------------------
# FLOPs, latency and the efficiency table


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the operations ``fn`` runs, as ``FlopCounterMode`` counts them (2 per multiply-add)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def model_flops(model: nn.Module, batch: dict, input_keys: Sequence[str], cfg: RunConfig) -> dict[str, int]:
    """FLOPs of one forward pass (no grad) and of forward + loss + backward.

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
        compute_loss(model(**inputs), batch, cfg).backward()

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
    model = build_model(cfg, data, device)
    batch = to_device(fixed_batch(data, batch_size, cfg.seed), device)
    flops = model_flops(model, batch, data.input_keys, cfg)
    return {
        "model": cfg.model["name"], "model_kwargs": {k: v for k, v in cfg.model.items() if k != "name"},
        "data": cfg.data.get("name"), "batch_size": batch_size,
        "inputs": {k: list(batch[k].shape) for k in data.input_keys if torch.is_tensor(batch[k])},
        **count_parameters(model), **flops, **flops_summary(flops, batch_size),
        "units": "FLOPs as counted by torch.utils.flop_counter (matmul, conv, attention; 2 FLOPs per "
                 "multiply-add; element-wise ops and the optimizer update not counted); "
                 "GMACs = GFLOPs / 2; train = forward + backward",
    }


def efficiency_table(configs: Mapping[str, RunConfig] | Sequence[RunConfig], *, batch_size: int = 32,
                     flops_batch_size: int = 1, latency_batch_size: int = 1, warmup_steps: int = 3,
                     timed_steps: int = 10, amp: str | None = None, channels_last: bool = False,
                     compile_model: bool = False) -> pd.DataFrame:
    """One row per model: params, FLOPs per sample, latency, training throughput and peak memory.

    configs: label → run config (or a list; labelled by ``name`` if unique, else by model name).
    batch_size: batch size of the throughput and memory measurement (a training step).
    flops_batch_size: batch counted for FLOPs per sample (see ``flops_report``).
    latency_batch_size: batch of the inference latency (forward only, eval mode).
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
        with torch_threads(cfg.train.num_threads):  # as many CPU threads as a run of this config
            flops = flops_report(cfg, batch_size=flops_batch_size, data=data)
            device = select_device(cfg.train.device)
            used_amp = effective_amp(cfg.train.amp if amp is None else amp, device)
            seed_everything(cfg.seed)
            model = build_model(cfg, data, device, channels_last=channels_last, compile_model=compile_model)
            latency_inputs = batch_on_device(fixed_batch(data, latency_batch_size, cfg.seed), device, channels_last)
            latency = measure_latency(model, {k: latency_inputs[k] for k in data.input_keys}, device,
                                      warmup=warmup_steps, repeats=timed_steps, amp=used_amp)
            del model, latency_inputs
            sweep = throughput_sweep(cfg, batch_sizes=[batch_size], warmup_steps=warmup_steps,
                                     timed_steps=timed_steps, amp=used_amp, channels_last=channels_last,
                                     compile_model=compile_model, data=data).iloc[0]
        rows.append({
            "name": label, "model": cfg.model["name"],
            "params_total": flops["params_total"], "params_trainable": flops["params_trainable"],
            "params_m": flops["params_total"] / 1e6,
            **{k: flops[k] for k in ("forward_gflops_per_sample", "forward_gmacs_per_sample",
                                     "train_gflops_per_sample", "train_gmacs_per_sample")},
            "flops_batch_size": flops_batch_size, "latency_batch_size": latency_batch_size, **latency,
            "batch_size": batch_size, "status": sweep["status"], "samples_per_s": sweep["samples_per_s"],
            "step_time_median_s": sweep["step_time_median_s"], "peak_memory_mb": sweep["peak_memory_mb"],
            "memory_kind": sweep["memory_kind"], "device": str(device), "amp": used_amp,
            "channels_last": channels_last, "compile": compile_model,
        })
    return pd.DataFrame(rows)
