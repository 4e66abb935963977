"""How much slower is the vqa_models study beside a process that keeps one core busy?

Runs the study's library functions (``vqalab.studies.vqa_models``: ``model_configs`` then
``train_models``, as notebooks/vqa_models.ipynb does) with a preset of params/vqa_models.yaml,
each measurement in a fresh process, interleaved: quiet, busy, quiet, busy... where "busy" has a
pure-Python spin loop running in another process for the whole measurement. Prints each
measurement (seconds, the 1-minute load average before and after, the cores other processes kept
busy during it, the CPU threads each run chose and why) and the ratio of the median busy time to
the median quiet time. Goal: ≤ 2.5× (2 cores, cpu preset).

    .venv/bin/python benchmarks/busy_machine.py                 # the cpu preset, 2 pairs
    .venv/bin/python benchmarks/busy_machine.py --quick         # a smaller configuration, 3 pairs
    .venv/bin/python benchmarks/busy_machine.py --quick --num-threads 2   # every core, as before

``--num-threads N`` sets ``train.num_threads`` (N = the cores reproduces the former default: every
run asked for all of them). "Quiet" means no spinner of ours: other users' load is reported, not
removed. Runs go to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUICK = {"dataset_kwargs": {"max_train_samples": 4000, "max_val_samples": 1000}, "epochs": 1}
GOAL_RATIO = 2.5


def load_average() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


def measure(preset: dict, num_threads: int | None, runs_root: str) -> dict:
    """One measurement, in this (fresh) process: train every model of the preset."""
    from vqalab.studies import vqa_models as study
    from vqalab.threads import affinity_cores, cpu_snapshot, others_busy_since

    configs = study.model_configs(
        models=preset["models"], model_kwargs=preset.get("model_kwargs", {}),
        dataset=preset.get("dataset", "easy_vqa"), dataset_kwargs=preset.get("dataset_kwargs", {}),
        epochs=preset["epochs"], batch_size=preset.get("batch_size", 128), lr=preset.get("lr", 2e-3), seed=0,
        experiment="busy_machine", runs_root=runs_root, model_data_kwargs=preset.get("model_data_kwargs"))
    if num_threads:
        for cfg in configs:
            cfg.train.num_threads = num_threads
    for cfg in configs:
        cfg.train.tensorboard = False  # not part of what is compared
    snapshot, start = cpu_snapshot(), time.perf_counter()
    points = study.train_models(configs, reuse=False)
    seconds = time.perf_counter() - start
    others = others_busy_since(snapshot, affinity_cores())
    failed = points[points["status"] == "failed"]
    if len(failed):  # a failed model would time less work: no figure
        raise RuntimeError(f"models failed: {dict(zip(failed['name'], failed['error']))}")
    summaries = [json.loads((Path(d) / "summary.json").read_text()) for d in points["run_dir"]]
    return {"seconds": seconds, "others_busy": others,
            "runs": [{"model": s["model"], "threads": s["threads"], "threads_reason": s["threads_reason"],
                      "wall_time_s": round(s["wall_time_s"], 1), "best_val_acc": s["best_val_acc"]}
                     for s in summaries]}


def run_one(preset: dict, num_threads: int | None, busy: bool) -> dict:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        if spinner is not None:
            time.sleep(1.0)  # the spinner is running before the runs choose their threads
        load_before = load_average()
        with tempfile.TemporaryDirectory(prefix="busy-machine-") as tmp:
            request = json.dumps({"preset": preset, "num_threads": num_threads, "runs_root": tmp})
            child = subprocess.run([sys.executable, __file__, "--measure", request],
                                   capture_output=True, text=True, check=False)
        if child.returncode != 0:
            raise SystemExit(f"measurement failed:\n{child.stderr[-4000:]}")
        result = json.loads(child.stdout.strip().splitlines()[-1])
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    return {"busy": busy, **result, "load_before": load_before, "load_after": load_average()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cpu", help="a preset of params/vqa_models.yaml")
    parser.add_argument("--quick", action="store_true",
                        help=f"the preset on a subset, one epoch: {json.dumps(QUICK)}")
    parser.add_argument("--pairs", type=int, default=None, help="quiet + busy pairs (default 2, --quick 3)")
    parser.add_argument("--num-threads", type=int, default=None, help="train.num_threads of every run")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one measurement (JSON request)
    args = parser.parse_args()
    if args.measure:
        request = json.loads(args.measure)
        print(json.dumps(measure(request["preset"], request["num_threads"], request["runs_root"])))
        return

    import yaml

    from vqalab.paths import project_root

    preset = yaml.safe_load((project_root() / "params" / "vqa_models.yaml").read_text())["presets"][args.preset]
    if args.quick:
        preset = {**preset, **QUICK}
    pairs = args.pairs or (3 if args.quick else 2)
    results = []
    for i in range(2 * pairs):
        result = run_one(preset, args.num_threads, busy=i % 2 == 1)
        results.append(result)
        threads = ", ".join(f"{r['model']} {r['threads']} ({r['threads_reason']})" for r in result["runs"])
        others = "n/a" if result["others_busy"] is None else f"{result['others_busy']:.2f}"
        print(f"{'busy ' if result['busy'] else 'quiet'} {result['seconds']:7.1f} s  load {result['load_before']:.2f}"
              f" -> {result['load_after']:.2f}  other processes' cores {others}  threads: {threads}", flush=True)
    quiet = statistics.median(r["seconds"] for r in results if not r["busy"])
    busy = statistics.median(r["seconds"] for r in results if r["busy"])
    summary = {"preset": args.preset, "quick": args.quick, "pairs": pairs, "num_threads": args.num_threads,
               "quiet_median_s": round(quiet, 1), "busy_median_s": round(busy, 1),
               "ratio": round(busy / quiet, 2), "goal_ratio": GOAL_RATIO, "goal_met": busy / quiet <= GOAL_RATIO,
               "measurements": results}
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
