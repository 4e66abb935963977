"""Cost of TensorBoard logging in the training loop: the same run with event files on and off.

Both train the same config (same seed, data loaded once) for ``--epochs`` epochs; the two
alternate over ``rounds`` rounds, order swapped each round, so load from other processes hits both
alike. Reported: the median wall time of each and the median over rounds of the ratio on/off of
back-to-back runs (goal: at most 1.02).

    .venv/bin/python benchmarks/tensorboard_overhead.py --params params/train/easy_vqa_model1.yaml \
        --set data.max_train_samples=4096 --epochs 2 --rounds 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile

from vqalab.config import load_config
from vqalab.data import build_data
from vqalab.train import fit


def wall_time(cfg, data, tensorboard: bool, runs_root: str) -> float:
    cfg = cfg.model_copy(deep=True)
    cfg.train.tensorboard = tensorboard
    cfg.runs_root = runs_root
    return fit(cfg, data=data).summary["wall_time_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params/train/easy_vqa_model1.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    cfg = load_config(args.params, [*args.set, f"train.epochs={args.epochs}", "train.progress=false",
                                    f"train.num_threads={args.threads}", "experiment=tb_overhead"])
    data = build_data(cfg.data)
    on, off, ratios = [], [], []
    with tempfile.TemporaryDirectory() as runs_root:
        wall_time(cfg, data, True, runs_root)  # warm-up: imports, allocator, caches
        for r in range(args.rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            times = {flag: wall_time(cfg, data, flag, runs_root) for flag in order}
            on.append(times[True])
            off.append(times[False])
            ratios.append(times[True] / times[False])
    print(json.dumps({
        "log_every_steps": cfg.train.log_every_steps, "batch_size": cfg.train.batch_size,
        "train_samples": len(data.train), "epochs": args.epochs, "rounds": args.rounds,
        "median_s_on": statistics.median(on), "median_s_off": statistics.median(off),
        "median_ratio_on_off": statistics.median(ratios), "ratios": ratios,
    }, indent=2))


if __name__ == "__main__":
    main()
