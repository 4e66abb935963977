"""Queueing a large sweep: an N × N grid (learning rate × weight decay, one seed) read from a spec
file and enqueued into a new journal file, timed in its two parts: reading and validating every
point (``load_spec``) and queueing them (``create_sweep``); then queued again (nothing new). The
time of a linear queue grows with N², not N⁴. Prints the figures and the CPU load average at the
start as JSON (the CPU may be shared).

    .venv/bin/python benchmarks/sweep_enqueue.py            # 100 × 100 = 10,000 points
    .venv/bin/python benchmarks/sweep_enqueue.py --size 30
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import yaml

from vqalab.sweep_queue import create_sweep, load_spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100, help="values per grid key (N)")
    args = parser.parse_args()
    n = args.size
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="vqalab-enqueue-") as tmp:
        spec_file = Path(tmp, "big.yaml")
        spec_file.write_text(yaml.safe_dump({
            "name": "big",
            "base": {"experiment": "enqueue", "runs_root": str(Path(tmp, "runs")), "train": {"epochs": 1}},
            "grid": {"optim.lr": [1e-5 * (i + 1) for i in range(n)],
                     "optim.weight_decay": [1e-4 * i for i in range(n)]},
        }))
        t0 = time.perf_counter()
        spec = load_spec(spec_file)
        t1 = time.perf_counter()
        _, added = create_sweep(spec, Path(tmp, "big.journal"))
        t2 = time.perf_counter()
        _, again = create_sweep(spec, Path(tmp, "big.journal"))
        t3 = time.perf_counter()
    print(json.dumps({"points": n * n, "queued": added, "queued_again": again, "load_spec_s": round(t1 - t0, 2),
                      "enqueue_s": round(t2 - t1, 2), "enqueue_again_s": round(t3 - t2, 2),
                      "loadavg_at_start": load}))


if __name__ == "__main__":
    main()
