"""One 8-point sweep (4 learning rates × 2 seeds) two ways on this machine: the in-process loop with
2 torch threads, and ``sweep(..., workers=2)`` with 1 thread per point (two trial processes at once,
through the Optuna journal queue). Prints the wall time of each and their ratio as JSON.

The workers' time includes what a trial process costs besides training (starting Python, importing
torch, loading the data, the journal): small for real runs, large for the tiny ones here, so pick
``--epochs`` / ``--samples`` to make a point take a while. Nothing is reused (``reuse=False``);
runs go to a temporary folder. The CPU load average at the start is printed, since the CPU may be
shared.

    .venv/bin/python benchmarks/sweep_workers.py
    .venv/bin/python benchmarks/sweep_workers.py --epochs 4 --samples 512
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time

from vqalab.sweep import sweep

LRS = [3e-4, 1e-3, 3e-3, 1e-2]
SEEDS = [0, 1]


def base(runs_root: str, *, threads: int, epochs: int, samples: int) -> dict:
    return {
        "experiment": "bench_sweep_workers", "name": "bench", "runs_root": runs_root,
        "model": {"name": "vqa_mean_mlp", "cnn_channels": [16, 32, 32], "embed_dim": 32, "hidden_dim": 64},
        "data": {"name": "easy_vqa", "max_train_samples": samples, "max_val_samples": samples // 4},
        "train": {"epochs": epochs, "batch_size": 32, "num_threads": threads, "device": "cpu", "progress": False},
    }


def timed_sweep(**kwargs) -> tuple[float, list[str]]:
    t0 = time.perf_counter()
    df = sweep(**kwargs, reuse=False)
    return time.perf_counter() - t0, list(df["status"])


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=384, help="training questions per point")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    load = os.getloadavg()[0]
    grid = {"optim.lr": LRS}
    with tempfile.TemporaryDirectory(prefix="vqalab-bench-") as tmp:
        sequential_s, seq_status = timed_sweep(
            base=base(f"{tmp}/sequential", threads=2, epochs=args.epochs, samples=args.samples), grid=grid, seeds=SEEDS)
        workers_s, work_status = timed_sweep(
            base=base(f"{tmp}/workers", threads=1, epochs=args.epochs, samples=args.samples), grid=grid, seeds=SEEDS,
            workers=2)
    result = {"points": len(LRS) * len(SEEDS), "epochs": args.epochs, "train_samples": args.samples,
              "sequential_2_threads_s": round(sequential_s, 1), "workers_2x1_thread_s": round(workers_s, 1),
              "ratio_sequential_over_workers": round(sequential_s / workers_s, 2),
              "statuses": {"sequential": seq_status, "workers": work_status},
              "cpu_count": os.cpu_count(), "load_average_at_start": round(load, 2)}
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
