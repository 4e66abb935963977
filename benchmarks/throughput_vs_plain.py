"""vqalab's training throughput against an independent plain-PyTorch timing, in two modes.

Step mode (the default): ``vqalab.bench``'s training step against a plain step written here. Both
time the same step (same model and weights, same first training batch, same optimizer and loss,
and the gradient norm the training loop computes, clipped alike) at each batch size: warm-up, then
one clock read around ``steps`` steps, synchronising the device at both ends.

Loop mode (``--loop``): vqalab's real loop, ``train.train_one_epoch`` as ``fit`` runs it (the model,
optimizer, LR schedule and loss scaler of ``train.prepare_training``; ``DeviceLog`` and its reads
every ``train.log_every_steps`` steps and at the epoch's end; no monitor, no progress bar) against
the bare loop written here (DataLoader, forward, cross-entropy, backward, ``clip_grad_norm_``,
optimizer step; nothing read back). Both train one epoch of ``steps`` batches, the first
``steps × batch size`` training items in the same seeded batch order, from the same weights (checked),
after an untimed epoch of ``warmup`` steps; the clock runs around the whole epoch, loader included.

In both modes the two alternate over ``rounds`` rounds (order swapped each round) so that load from
other processes hits both alike. Reported: the median round of each, and the median over rounds of
the ratio of the two back-to-back timings (vqalab / plain samples/s), which cancels slow changes in
load; the loop's goal is at least 0.98. On a CPU shared with other work, use one thread (the
default here) and many rounds: with two threads a step stalls whenever either thread is
descheduled, and single rounds vary by a factor of several. ``--clock cpu`` (loop mode) times with
this process's CPU time instead of the wall clock, which leaves out the time other processes hold
the core.

    .venv/bin/python benchmarks/throughput_vs_plain.py --params params/train/easy_vqa_model1.yaml \
        --batch-sizes 32 128 256 --steps 40 --rounds 15
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/throughput_vs_plain.py --loop --batch-sizes 32 \
        --steps 40 --rounds 9
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/throughput_vs_plain.py --loop --clock cpu \
        --batch-sizes 32 --steps 40 --rounds 25
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from vqalab import bench, train
from vqalab.config import load_config
from vqalab.data import DataSplits, build_data
from vqalab.data.samplers import epoch_batches
from vqalab.engine import select_device
from vqalab.models import create_model

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
LOOP_GOAL = 0.98  # vqalab's loop keeps at least this share of the bare loop's samples/s
EPOCH = 1  # the epoch whose seeded batch order both loops train on


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_model_and_optimizer(cfg, data, device):
    torch.manual_seed(cfg.seed)
    spec = dict(cfg.model)
    model = create_model(spec.pop("name"), **spec, **data.model_kwargs).to(device).train()
    o = cfg.optim
    params = [p for p in model.parameters() if p.requires_grad]
    if o.name == "adam":
        optimizer = torch.optim.Adam(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    elif o.name == "adamw":
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, eps=o.eps, weight_decay=o.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return model, params, optimizer


def plain_samples_per_s(cfg, data, batch_size: int, warmup: int, steps: int) -> float:
    device = select_device(cfg.train.device)
    model, params, optimizer = plain_model_and_optimizer(cfg, data, device)
    indices = epoch_batches(len(data.train), batch_size, cfg.seed, EPOCH, data.train_groups)[0]
    batch = {k: v.to(device) for k, v in data.collate([data.train[i] for i in indices]).items()}
    inputs = {k: batch[k] for k in data.input_keys}
    clip_norm = cfg.train.clip_norm or math.inf  # the training loop always takes the norm

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(**inputs).float(), batch["target"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, clip_norm)
        optimizer.step()

    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch_size * steps / (time.perf_counter() - start)


def vqalab_samples_per_s(cfg, data, batch_size: int, warmup: int, steps: int) -> float:
    row = bench.throughput_sweep(cfg, batch_sizes=[batch_size], warmup_steps=warmup, timed_steps=steps,
                                 rounds=1, end_to_end=False, amp="off", data=data).iloc[0]
    return float(row["samples_per_s"])


# --- Loop mode ------------------------------------------------------------------------------------

def check_loop_config(cfg) -> None:
    """The bare loop trains plain cross-entropy in fp32, one micro-batch a step, no mixup."""
    expected = {"train.loss": (cfg.train.loss, "ce"), "train.label_smoothing": (cfg.train.label_smoothing, 0.0),
                "train.amp": (cfg.train.amp, "off"), "train.grad_accum_steps": (cfg.train.grad_accum_steps, 1),
                "train.mixup_alpha": (cfg.train.mixup_alpha, 0.0),
                "train.channels_last": (cfg.train.channels_last, False), "train.compile": (cfg.train.compile, False)}
    wrong = [f"{key} is {have!r}, expected {want!r}" for key, (have, want) in expected.items() if have != want]
    if wrong:
        raise SystemExit(f"--loop: the bare loop here does not do what this config asks: {'; '.join(wrong)}")


def first_items(data: DataSplits, count: int) -> DataSplits:
    """``data`` with its first ``count`` training items: one epoch of count / batch size batches."""
    if len(data.train) < count:
        raise SystemExit(f"--loop: {count} training items needed (steps × batch size), the data has {len(data.train)}")
    groups = data.train_groups[:count] if data.train_groups is not None else None
    return DataSplits(**{**vars(data), "train": Subset(data.train, range(count)), "train_groups": groups})


def vqalab_loop_epoch(cfg, data, warmup: int, clock) -> tuple[float, dict]:
    """Seconds of one epoch of ``train.train_one_epoch``, after an untimed one of ``warmup`` steps;
    and the starting weights."""
    t = train.prepare_training(cfg, data, select_device(cfg.train.device), None)
    start_weights = {k: v.clone() for k, v in t.module.state_dict().items()}
    warm_cfg = cfg.model_copy(deep=True)
    warm_cfg.train.max_steps = warmup
    train.train_one_epoch(t.model, t.optimizer, t.scheduler, t.scaler, t.data, warm_cfg, t.device, EPOCH, 0)
    sync(t.device)
    start = clock()
    train.train_one_epoch(t.model, t.optimizer, t.scheduler, t.scaler, t.data, t.cfg, t.device, EPOCH, 0)
    sync(t.device)
    return clock() - start, start_weights


def plain_loop_epoch(cfg, data, warmup: int, clock) -> tuple[float, dict]:
    """The same as a bare PyTorch loop."""
    device = select_device(cfg.train.device)
    model, params, optimizer = plain_model_and_optimizer(cfg, data, device)
    start_weights = {k: v.clone() for k, v in model.state_dict().items()}
    clip_norm = cfg.train.clip_norm or math.inf

    def epoch(max_steps: int | None) -> None:
        batches = epoch_batches(len(data.train), cfg.train.batch_size, cfg.seed, EPOCH, data.train_groups)
        loader = DataLoader(data.train, batch_sampler=batches[:max_steps], collate_fn=data.collate,
                            num_workers=cfg.train.num_workers, pin_memory=device.type == "cuda")
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(**{k: batch[k] for k in data.input_keys}).float(), batch["target"])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
            optimizer.step()

    epoch(warmup)
    sync(device)
    start = clock()
    epoch(None)
    sync(device)
    return clock() - start, start_weights


def measure_loop(cfg, data, batch_size: int, args) -> dict:
    cfg = cfg.model_copy(deep=True)
    cfg.train.batch_size, cfg.train.progress, cfg.train.num_threads = batch_size, False, args.threads
    data = first_items(data, batch_size * args.steps)
    clock = CLOCKS[args.clock]
    measured = {"vqalab": [], "plain": []}
    for round_index in range(args.rounds):
        order = ("vqalab", "plain") if round_index % 2 == 0 else ("plain", "vqalab")
        weights = {}
        for which in order:
            epoch = vqalab_loop_epoch if which == "vqalab" else plain_loop_epoch
            seconds, weights[which] = epoch(cfg, data, args.warmup, clock)
            measured[which].append(batch_size * args.steps / seconds)
        if round_index == 0 and not all(torch.equal(weights["vqalab"][k], weights["plain"][k]) for k in weights["plain"]):
            raise SystemExit("--loop: the two loops did not start from the same weights")
    return measured


def summarise(measured: dict) -> dict:
    # Each round's two timings ran back to back: their ratio cancels slow changes in load.
    paired = [a / b for a, b in zip(measured["vqalab"], measured["plain"])]
    ours, plain = statistics.median(measured["vqalab"]), statistics.median(measured["plain"])
    return {"vqalab_median_samples_per_s": ours, "plain_median_samples_per_s": plain, "median_ratio": ours / plain,
            "median_paired_ratio": statistics.median(paired),
            # how far single rounds scatter: the resolution of the median at this many rounds
            "paired_ratio_quartiles": statistics.quantiles(paired, n=4) if len(paired) > 1 else None,
            "paired_ratio_min": min(paired), "paired_ratio_max": max(paired),
            "vqalab_rounds": [round(v, 1) for v in measured["vqalab"]],
            "plain_rounds": [round(v, 1) for v in measured["plain"]]}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params/train/easy_vqa_model1.yaml")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; on a shared CPU one thread avoids stalls at thread barriers")
    parser.add_argument("--loop", action="store_true",
                        help="time vqalab's training loop (train_one_epoch) against a bare loop, not the step")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="loop mode: wall (time.perf_counter) or cpu (time.process_time: this process's CPU "
                             "time, all its threads, which leaves out the time other processes hold the core on a "
                             "shared machine; needs train.num_workers 0, as loader workers are other processes)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = load_config(args.params, args.set)
    if args.loop:
        check_loop_config(cfg)
        if args.clock == "cpu" and cfg.train.num_workers:
            raise SystemExit(f"--clock cpu: train.num_workers is {cfg.train.num_workers}; the CPU time of loader "
                             "workers is not this process's: set train.num_workers=0 or use --clock wall")
    else:
        if args.clock != "wall":
            raise SystemExit("--clock cpu: only with --loop (the step mode is timed inside vqalab.bench, by the wall clock)")
        if cfg.train.loss != "ce" or cfg.train.label_smoothing:
            raise SystemExit("the plain step here is plain cross-entropy: use a config with train.loss ce "
                             "and no label smoothing")
    data = build_data(cfg.data)
    results = {"mode": "loop" if args.loop else "step", "params": args.params, "overrides": args.set,
               "model": cfg.model["name"], "device": str(select_device(cfg.train.device)),
               "torch_threads": torch.get_num_threads(), "clock": args.clock, "steps": args.steps,
               "warmup": args.warmup, "rounds": args.rounds,
               **({"log_every_steps": cfg.train.log_every_steps} if args.loop else {}), "batch_sizes": {}}
    for batch_size in args.batch_sizes:
        if args.loop:
            measured = measure_loop(cfg, data, batch_size, args)
        else:
            measured = {"vqalab": [], "plain": []}
            for round_index in range(args.rounds):
                order = ("vqalab", "plain") if round_index % 2 == 0 else ("plain", "vqalab")
                for which in order:
                    fn = vqalab_samples_per_s if which == "vqalab" else plain_samples_per_s
                    measured[which].append(fn(cfg, data, batch_size, args.warmup, args.steps))
        results["batch_sizes"][batch_size] = summarise(measured)
    print(json.dumps(results, indent=2))
    if args.loop:
        for batch_size, row in results["batch_sizes"].items():
            ratio = row["median_paired_ratio"]
            print(f"batch {batch_size}: vqalab's loop runs at {ratio:.3f} of the bare loop's samples/s "
                  f"(median of {args.rounds} paired rounds, {args.clock} clock; goal >= {LOOP_GOAL}: "
                  f"{'met' if ratio >= LOOP_GOAL else 'not met'})")
    return results


if __name__ == "__main__":
    main()
