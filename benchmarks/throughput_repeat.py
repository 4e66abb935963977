"""Is the batch-size recommendation repeatable? The throughput sweep run twice, back to back.

Each sweep times every batch size in interleaved rounds (model step on representative batches,
and end to end with the real loader), adding rounds up to ``--max-rounds`` until resampling the
rounds gives the same choice 90% of the time, and recommends the smallest batch size within the
measured noise of the best (``vqalab.bench.recommend_batch_size``). Printed: both tables, both
recommendations with the noise they state, what limits end-to-end throughput, and whether the two
recommendations agree (the same size, a ×2 neighbour, or "not settled": no size). Threads: as a run
of the config chooses them (``vqalab.threads``), unless ``--threads`` sets them. ``--busy`` runs
every second sweep beside a process that keeps one core busy (a pure-Python spin loop); each
sweep prints the 1-minute load average before and after and the most cores other processes kept
busy during one of its measurements.

    .venv/bin/python benchmarks/throughput_repeat.py --params params/train/easy_vqa_model1.yaml
    .venv/bin/python benchmarks/throughput_repeat.py --params params/train/easy_vqa_model1.yaml --busy
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from pathlib import Path

from vqalab import bench
from vqalab.config import load_config
from vqalab.data import build_data


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params/train/easy_vqa_model1.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256, 512])
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per measurement")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per batch size and round")
    parser.add_argument("--rounds", type=int, default=bench.DEFAULT_ROUNDS)
    parser.add_argument("--max-rounds", type=int, default=15,
                        help="add rounds until the choice is settled (see vqalab.bench.throughput_sweep)")
    parser.add_argument("--repeats", type=int, default=2, help="sweeps run one after the other")
    parser.add_argument("--threads", type=int, default=None, help="train.num_threads (default: the run's choice)")
    parser.add_argument("--busy", action="store_true", help="every second sweep beside a process keeping one core busy")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    overrides = [*args.set, *([f"train.num_threads={args.threads}"] if args.threads else [])]
    cfg = load_config(args.params, overrides)
    data = build_data(cfg.data)  # loaded once: both sweeps time the same data
    choices = []
    for repeat in range(1, args.repeats + 1):
        busy = args.busy and repeat % 2 == 0
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
        try:
            if spinner is not None:
                time.sleep(1.0)  # running before the sweep chooses its threads
            load_before, start = load_average(), time.perf_counter()
            table = bench.throughput_sweep(cfg, batch_sizes=args.batch_sizes, warmup_steps=args.warmup,
                                           timed_steps=args.steps, rounds=args.rounds, max_rounds=args.max_rounds,
                                           data=data)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
        choice = bench.recommend_batch_size(table)
        choices.append(choice)
        print(f"## sweep {repeat} of {args.repeats}{' beside a busy core' if busy else ''} "
              f"({time.perf_counter() - start:.0f} s; model {cfg.model['name']}, device {table['device'].iloc[0]}, "
              f"{table['cpu_threads'].iloc[0]} thread(s): {table['threads_reason'].iloc[0]}; "
              f"{int(table['rounds'].max())} rounds of {args.warmup} + {args.steps} steps; load {load_before:.2f} -> "
              f"{load_average():.2f}, other processes kept up to {table['others_busy_max'].max():.2f} cores busy)")
        print(bench.format_throughput_table(table))
        print(choice["sentence"])
        if choice["batch_size"] is not None:
            print(bench.limiting_part(table, choice["batch_size"])["sentence"])
        print()
    recommended = [c["batch_size"] for c in choices]
    sizes = {b for b in recommended if b is not None}
    verdict = ("the same" if len(sizes) == 1 else "x2 neighbours" if len(sizes) == 2 and max(sizes) == 2 * min(sizes)
               else "none settled" if not sizes else "DIFFERENT")
    if None in recommended and sizes:
        verdict += ", or not settled"
    print(f"recommended batch sizes: {recommended} -> {verdict}")
    return {"recommended": recommended, "noise": [c["noise"] for c in choices]}


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


if __name__ == "__main__":
    main()
