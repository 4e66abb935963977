"""Data sets as registered builders returning ``DataSplits``.

A builder is a function with keyword-only arguments (the ``data:`` section of a params file),
registered with ``@register_dataset``. It returns train and validation datasets whose items are
dicts of tensors, the collate function that batches them, the inputs the model takes, and the
keyword arguments the data fixes for the model (vocabulary size, number of answers or classes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from torch.utils.data import Dataset

from vqalab.registry import Registry

DATASETS = Registry("data set")
register_dataset = DATASETS.register

# Model keyword arguments that come from the data, never from the params file.
PROVIDED_BY_DATA = ("vocab_size", "num_answers", "num_classes", "image_dim")  # image_dim: precomputed features


@dataclass
class DataSplits:
    """Every dataset has ``.targets``: the class index of each item, in item order."""

    train: Dataset
    val: Dataset
    collate: Callable
    input_keys: tuple[str, ...]  # batch keys passed to model(**inputs)
    model_kwargs: dict  # e.g. {"vocab_size": 27, "num_answers": 13}
    class_names: list[str]  # answers (VQA) or expressions (FER), in model output order
    train_groups: Optional[list[int]] = None  # group id per train sample for grouped batches
    vocab: Optional[list[str]] = None  # question tokens, index order
    info: dict = field(default_factory=dict)  # sizes and provenance, recorded in summary.json


def build_data(spec: dict, seed: int = 0) -> DataSplits:
    spec = dict(spec)
    name = spec.pop("name")
    return DATASETS.get(name)(**spec)


# Builders register themselves on import.
from vqalab.data import easy_vqa, faces, feature_cache, gqa, rafdb, scenes, vqa_v2  # noqa: E402,F401
