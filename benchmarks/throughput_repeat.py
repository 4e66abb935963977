"""Is the batch-size recommendation repeatable? The throughput sweep run twice, back to back.

Each sweep times every batch size in interleaved rounds (model step on representative batches,
and end to end with the real loader), adding rounds up to ``--max-rounds`` until resampling the
rounds gives the same choice 90% of the time, and recommends the smallest batch size within the
measured noise of the best (``vqalab.bench.recommend_batch_size``). Printed: both tables, both
recommendations with the noise they state, what limits end-to-end throughput, and whether the two
recommendations agree. On a CPU shared with other work use one thread (the default here).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/throughput_repeat.py \\
        --params params/train/easy_vqa_model1.yaml
"""

from __future__ import annotations

import argparse
import logging
import time

import torch

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
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    cfg = load_config(args.params, args.set)
    data = build_data(cfg.data)  # loaded once: both sweeps time the same data
    choices = []
    for repeat in range(1, args.repeats + 1):
        start = time.perf_counter()
        table = bench.throughput_sweep(cfg, batch_sizes=args.batch_sizes, warmup_steps=args.warmup,
                                       timed_steps=args.steps, rounds=args.rounds, max_rounds=args.max_rounds,
                                       data=data)
        choice = bench.recommend_batch_size(table)
        choices.append(choice)
        print(f"## sweep {repeat} of {args.repeats} ({time.perf_counter() - start:.0f} s; model {cfg.model['name']}, "
              f"device {table['device'].iloc[0]}, {torch.get_num_threads()} thread(s), {int(table['rounds'].max())} rounds of "
              f"{args.warmup} + {args.steps} steps)")
        print(bench.format_throughput_table(table))
        print(choice["sentence"])
        if choice["batch_size"] is not None:
            print(bench.limiting_part(table, choice["batch_size"])["sentence"])
        print()
    recommended = [c["batch_size"] for c in choices]
    print(f"recommended batch sizes: {recommended} -> {'the same' if len(set(recommended)) == 1 else 'DIFFERENT'}")
    return {"recommended": recommended, "noise": [c["noise"] for c in choices]}


if __name__ == "__main__":
    main()
