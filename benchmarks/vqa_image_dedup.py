"""Speed-up of per-batch image de-duplication when the image encoder is trained.

easy_vqa groups the questions of an image into the same batch (``group_by_image``); the VQA
base model encodes each distinct ``image_id`` of a batch once and gathers the features back to the
questions. This times one training step (forward, cross-entropy, backward, Adam step) on the same
fixed batches three ways:

- dedup: grouped batches, ``image_id`` passed (what training does);
- no_dedup: the same grouped batches, ``image_id=None`` (every question encodes its image);
- shuffled: batches without grouping, ``image_id`` passed (few images repeat, little to save).

Each way: ``--warmup`` steps, then ``--steps`` steps timed with one clock read, repeated
``--rounds`` times with the ways in rotating order (load from other processes hits all alike);
the median round is reported.

    .venv/bin/python benchmarks/vqa_image_dedup.py --encoder small_cnn --threads 2
    .venv/bin/python benchmarks/vqa_image_dedup.py --encoder resnet18 --steps 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import torch
import torch.nn.functional as F

from vqalab.data import build_data
from vqalab.data.samplers import epoch_batches
from vqalab.models import create_model


def make_step(model, optimizer, batch: dict, pass_image_id: bool):
    inputs = {k: batch[k] for k in ("image", "question", "question_len")}
    inputs["image_id"] = batch["image_id"] if pass_image_id else None

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(**inputs), batch["target"]).backward()
        optimizer.step()
    return step


def seconds_per_step(steps_fns: list, warmup: int) -> float:
    for fn in steps_fns[:warmup]:
        fn()
    start = time.perf_counter()
    for fn in steps_fns:
        fn()
    return (time.perf_counter() - start) / len(steps_fns)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="vqa_mean_mlp", help="registry name of the VQA model")
    parser.add_argument("--encoder", default="small_cnn", help="image encoder, trained (small_cnn, resnet18, …)")
    parser.add_argument("--cnn-channels", type=int, nargs="+", default=[32, 64, 128], help="small_cnn channels")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round (distinct batches)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    data = build_data({"name": "easy_vqa"})
    orders = {"grouped": epoch_batches(len(data.train), args.batch_size, 0, 1, data.train_groups),
              "shuffled": epoch_batches(len(data.train), args.batch_size, 0, 1, None)}
    batches = {k: [data.collate([data.train[i] for i in b]) for b in v[:args.steps]] for k, v in orders.items()}
    torch.manual_seed(0)
    kwargs = {"image_encoder": args.encoder, **data.model_kwargs}
    if args.encoder == "small_cnn":
        kwargs["cnn_channels"] = tuple(args.cnn_channels)
    model = create_model(args.model, **kwargs).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    ways = {
        "dedup": [make_step(model, optimizer, b, True) for b in batches["grouped"]],
        "no_dedup": [make_step(model, optimizer, b, False) for b in batches["grouped"]],
        "shuffled": [make_step(model, optimizer, b, True) for b in batches["shuffled"]],
    }
    times: dict[str, list[float]] = {k: [] for k in ways}
    names = list(ways)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(seconds_per_step(ways[name], args.warmup))
    step_s = {k: statistics.median(v) for k, v in times.items()}

    def distinct(kind: str) -> float:
        return statistics.mean(len(set(b["image_id"].tolist())) for b in batches[kind])

    result = {
        "model": args.model, "encoder": args.encoder, "batch_size": args.batch_size,
        "threads": torch.get_num_threads(), "steps": args.steps, "rounds": args.rounds,
        "distinct_images_per_batch": {"grouped": distinct("grouped"), "shuffled": distinct("shuffled")},
        "step_s": step_s, "speedup_dedup_vs_no_dedup": step_s["no_dedup"] / step_s["dedup"],
        "questions_per_s": {k: args.batch_size / v for k, v in step_s.items()},
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
