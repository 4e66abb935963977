"""FLOPs counted by vqalab.bench against the operation counts torchvision publishes.

torchvision's weight metadata carries ``_ops`` (shown as "GFLOPS" in its model tables). It counts
multiply-adds, i.e. GMACs: the count from ``torch.utils.flop_counter`` (2 FLOPs per multiply-add)
divided by 2 matches it. The models are built on the meta device: shapes only, no weights
downloaded, no compute.

    .venv/bin/python benchmarks/flops_torchvision.py
"""

from __future__ import annotations

import json

import torch
import torchvision

from vqalab.bench import count_flops

IMAGE_SIZE = 224  # the resolution torchvision's counts are given at
MODELS = {"resnet18": "ResNet18_Weights", "resnet50": "ResNet50_Weights"}


def compare(arch: str, weights: str) -> dict:
    published_gmacs = getattr(torchvision.models, weights).IMAGENET1K_V1.meta["_ops"]
    with torch.device("meta"):
        model = getattr(torchvision.models, arch)()
        image = torch.empty(1, 3, IMAGE_SIZE, IMAGE_SIZE)
    flops = count_flops(lambda: model(image))
    gmacs = flops / 2e9
    return {"model": arch, "image_size": IMAGE_SIZE, "vqalab_gflops": flops / 1e9, "vqalab_gmacs": gmacs,
            "torchvision_ops": published_gmacs, "relative_difference": gmacs / published_gmacs - 1}


def main() -> list[dict]:
    rows = [compare(arch, weights) for arch, weights in MODELS.items()]
    print(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
