"""Training throughput against batch size, with a recommended batch size (lab note 002's table of
batch size, throughput and time per step, with peak memory added)."""

from __future__ import annotations

import json

import pandas as pd

from vqalab.config import load_config
from vqalab.params import RunConfig
from vqalab.paths import resolve

MEMORY_KINDS = {"cuda_max_allocated": "CUDA allocator peak", "cpu_peak_rss": "process peak RSS",
                "cpu_peak_rss_since_start": "process peak RSS since start"}
VIEW_COLUMNS = {"batch_size": "batch size", "status": "status", "samples_per_s": "throughput (samples/s)",
                "step_time_median_s": "time per step (s, median)", "step_time_p95_s": "p95 (s)",
                "peak_memory_mb": "peak memory (MiB)"}


def throughput_config(*, params_file: str, model_name: str, device: str, cpu_threads: int,
                      overrides: dict) -> RunConfig:
    """The params file (empty: the library defaults), then model, device, CPU threads (0: torch's
    default) and ``overrides`` (dotted key → value), validated before any compute."""
    settings = {"model.name": model_name, "train.device": device,
                **({"train.num_threads": cpu_threads} if cpu_threads else {}), **overrides}
    return load_config(resolve(params_file) if params_file else None,
                       [f"{key}={json.dumps(value)}" for key, value in settings.items()])  # JSON values read as YAML


def table_view(table: pd.DataFrame):
    """The sweep's table with readable column names, for display."""
    view = table[list(VIEW_COLUMNS)].rename(columns=VIEW_COLUMNS)
    return view.style.format(precision=4, na_rep="–").hide(axis="index")


def setting_line(table: pd.DataFrame, *, channels_last: bool, compile_model: bool) -> str:
    """Device, threads, AMP, memory format, compile and what the memory column measures."""
    first = table.iloc[0]
    return (f"device {first['device']} (torch CPU threads: {first['cpu_threads']}), amp {first['amp']}, "
            f"channels_last {channels_last}, compile {compile_model}; "
            f"memory: {MEMORY_KINDS.get(first['memory_kind'], 'n/a')}")


def findings_of(table: pd.DataFrame, choice: dict, *, model_name: str, channels_last: bool, compile_model: bool,
                warmup_steps: int, timed_steps: int) -> tuple[dict, list[str]]:
    """The recommendation, the settings, the step time and memory at the recommended batch size;
    headline: recommended, best and out-of-memory batch sizes and throughputs.

    ``table``: ``bench.throughput_sweep``; ``choice``: its ``recommend_batch_size``. The number of
    rounds and whether steps were also timed end to end are read from the table.
    """
    first = table.iloc[0]
    rounds = int(table["rounds"].max()) if "rounds" in table else 1
    timed = "for the model step and end to end" if "e2e_samples_per_s" in table else "for the model step only"
    oom = table[table["status"] == "oom"]
    text = [choice["sentence"],
            (f"Model {model_name} on {first['device']} (AMP {first['amp']}, channels_last {channels_last}, "
             f"compile {compile_model}); per batch size {warmup_steps} warm-up then {timed_steps} timed steps "
             f"{f'in each of {rounds} interleaved rounds' if rounds > 1 else 'in one round'} {timed}, "
             f"batch sizes {int(table['batch_size'].min())} to {int(table['batch_size'].max())}.")]
    if choice["batch_size"] is not None:
        at = table[table["batch_size"] == choice["batch_size"]].iloc[0]
        text.append(f"At batch size {choice['batch_size']} a step takes {at['step_time_median_s']:.3g} s (median) "
                    f"and peak memory is {at['peak_memory_mb']:.0f} MiB ({MEMORY_KINDS[at['memory_kind']]}).")
    if first["device"] == "cpu":
        text.append(f"CPU timings (torch CPU threads: {first['cpu_threads']}) share the processor with "
                    "whatever else runs on the machine.")
    headline = {"recommended batch size": choice["batch_size"],
                "throughput at recommended (samples/s)": choice["samples_per_s"],
                "best throughput (samples/s)": choice["best_samples_per_s"],
                "best batch size": choice["best_batch_size"],
                "out-of-memory batch size": int(oom["batch_size"].iloc[0]) if len(oom) else "none"}
    return headline, text
