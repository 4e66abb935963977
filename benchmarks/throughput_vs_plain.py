"""vqalab.bench's training-step throughput against an independent plain-PyTorch timing.

Both time the same step (same model and weights, same first training batch, same optimizer and
loss, and the gradient norm the training loop computes) at each batch size. The plain version is
written here from torch alone: warm-up, then one clock read around ``steps`` steps, synchronising
the device at both ends. The two alternate over ``rounds`` rounds (order swapped each round) so
that load from other processes hits both alike. Reported: the median round of each, and the median
over rounds of the ratio of the two back-to-back timings, which cancels slow changes in load. On a CPU shared with other work, use one
thread (the default here) and many rounds: with two threads a step stalls whenever either thread
is descheduled, and single rounds vary by a factor of several.

    .venv/bin/python benchmarks/throughput_vs_plain.py --params params/train/easy_vqa_model1.yaml \
        --batch-sizes 32 128 256 --steps 40 --rounds 15
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from vqalab import bench
from vqalab.config import load_config
from vqalab.data import build_data
from vqalab.data.samplers import epoch_batches
from vqalab.engine import select_device
from vqalab.models import create_model


def plain_samples_per_s(cfg, data, batch_size: int, warmup: int, steps: int) -> float:
    device = select_device(cfg.train.device)
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
    indices = epoch_batches(len(data.train), batch_size, cfg.seed, 1, data.train_groups)[0]
    batch = {k: v.to(device) for k, v in data.collate([data.train[i] for i in indices]).items()}
    inputs = {k: batch[k] for k in data.input_keys}

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(**inputs).float(), batch["target"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, float("inf"))  # the training loop always takes the norm
        optimizer.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return batch_size * steps / (time.perf_counter() - start)


def vqalab_samples_per_s(cfg, data, batch_size: int, warmup: int, steps: int) -> float:
    row = bench.throughput_sweep(cfg, batch_sizes=[batch_size], warmup_steps=warmup, timed_steps=steps,
                                 rounds=1, end_to_end=False, amp="off", data=data).iloc[0]
    return float(row["samples_per_s"])


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
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    cfg = load_config(args.params, args.set)
    if cfg.train.loss != "ce" or cfg.train.label_smoothing or cfg.train.clip_norm:
        raise SystemExit("the plain step here is plain cross-entropy without clipping: use such a config")
    data = build_data(cfg.data)
    results = {"params": args.params, "overrides": args.set, "model": cfg.model["name"],
               "device": str(select_device(cfg.train.device)), "torch_threads": torch.get_num_threads(),
               "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "batch_sizes": {}}
    for batch_size in args.batch_sizes:
        measured = {"vqalab": [], "plain": []}
        for round_index in range(args.rounds):
            order = ("vqalab", "plain") if round_index % 2 == 0 else ("plain", "vqalab")
            for which in order:
                fn = vqalab_samples_per_s if which == "vqalab" else plain_samples_per_s
                measured[which].append(fn(cfg, data, batch_size, args.warmup, args.steps))
        # Each round's two timings ran back to back: their ratio cancels slow changes in load.
        paired = [a / b for a, b in zip(measured["vqalab"], measured["plain"])]
        ours, plain = statistics.median(measured["vqalab"]), statistics.median(measured["plain"])
        results["batch_sizes"][batch_size] = {
            "vqalab_median_samples_per_s": ours, "plain_median_samples_per_s": plain, "median_ratio": ours / plain,
            "median_paired_ratio": statistics.median(paired),
            "vqalab_rounds": [round(v, 1) for v in measured["vqalab"]],
            "plain_rounds": [round(v, 1) for v in measured["plain"]]}
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
