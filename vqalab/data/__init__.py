"""Data sets as registered builders returning ``DataSplits``.

A builder is a function with keyword-only arguments (the ``data:`` section of a params file),
registered with ``@register_dataset``. It returns train and validation datasets whose items are
dicts of tensors, the collate function that batches them, the inputs the model takes, and the
keyword arguments the data fixes for the model (vocabulary size, number of answers or classes,
map size), and the task: classification (a class per item) or segmentation (a map-view mask per
item, ``views.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Optional

import torch
from torch.utils.data import Dataset

from vqalab.registry import Registry

DATASETS = Registry("data set")
register_dataset = DATASETS.register

# Model keyword arguments that come from the data, never from the params file.
PROVIDED_BY_DATA = ("vocab_size", "num_answers", "num_classes", "image_dim",  # image_dim: precomputed features
                    "map_size", "map_extent")  # map-view segmentation: output grid and the metres it covers


@dataclass
class DataSplits:
    """A classification dataset has ``.targets``: the class index of each item, in item order.
    Segmentation items carry a ``mask`` instead: the loop then trains with binary cross-entropy on it
    and validates with IoU@0.50 (``task``)."""

    train: Dataset
    val: Dataset
    collate: Callable
    input_keys: tuple[str, ...]  # batch keys passed to model(**inputs)
    model_kwargs: dict  # e.g. {"vocab_size": 27, "num_answers": 13}
    class_names: list[str]  # answers (VQA) or expressions (FER), in model output order
    train_groups: Optional[list[int]] = None  # group id per train sample for grouped batches
    vocab: Optional[list[str]] = None  # question tokens, index order
    info: dict = field(default_factory=dict)  # sizes and provenance, recorded in summary.json
    task: Literal["classification", "segmentation"] = "classification"


SUBSET_SEED = 1234  # max_*_samples subsets are the same for every run seed


def fixed_subset(n: int, limit: int | None) -> list[int]:
    """Sorted indices of a fixed random subset of ``limit`` of ``n`` items (all of them: None or ≥ n)."""
    if limit is None or limit >= n:
        return list(range(n))
    gen = torch.Generator().manual_seed(SUBSET_SEED)
    return sorted(torch.randperm(n, generator=gen)[:limit].tolist())


def build_data(spec: dict) -> DataSplits:
    """The splits of a ``data`` section (``{"name": ..., **builder keywords}``). The run's seed
    plays no part: subsets are fixed and a builder that draws data takes its own ``seed``."""
    spec = dict(spec)
    name = spec.pop("name")
    return DATASETS.get(name)(**spec)


# Builders register themselves on import.
from vqalab.data import easy_vqa, faces, feature_cache, rafdb, views, vqa_v2  # noqa: E402,F401
