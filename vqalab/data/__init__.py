"""Data sets as registered builders returning ``DataSplits``.

A builder is a function with keyword-only arguments (the ``data:`` section of a params file),
registered with ``@register_dataset``. It returns train and validation datasets whose items are
dicts of tensors, the collate function that batches them, the inputs the model takes, and the
keyword arguments the data fixes for the model (vocabulary size, number of answers or classes,
map size), and the task: classification (a class per item) or segmentation (a map-view mask per
item, ``views.py``).

Each data set also registers a status check with ``@register_status("<name>")``: a function of the
builder's keywords (defaults filled in) returning a ``DataStatus``: where the data set is looked
for, whether it is there, its counts and a short fingerprint, or, when missing, the exact path and
the official files that go there. ``vqalab data`` prints one line per data set from them; sweeps
and run records use ``DataStatus.identity()``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.utils.data import Dataset

from vqalab.io import json_digest
from vqalab.registry import Registry

DATASETS = Registry("data set")
# Hex digits of a data set's fingerprint (recorded with every run as its data identity).
DATA_FINGERPRINT_DIGITS = 12
register_dataset = DATASETS.register

# Model keyword arguments that come from the data, never from the params file.
PROVIDED_BY_DATA = ("vocab_size", "num_answers", "num_classes", "image_dim", "img_size",
                    "map_size", "map_extent")
# image_dim: size of precomputed features; img_size: side of the images, so the model always matches
# them; map_size, map_extent: map-view segmentation's output grid and the metres it covers


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
    train_groups: list[int] | None = None  # group id per train sample for grouped batches
    vocab: list[str] | None = None  # question tokens, index order
    info: dict = field(default_factory=dict)  # sizes and provenance, recorded in summary.json
    task: Literal["classification", "segmentation"] = "classification"


@dataclass
class DataStatus:
    """Whether a data set is available, and what it is (its identity in run records)."""

    name: str
    found: bool
    where: str  # the folder looked at, or where the data come from (generated, an installed package)
    counts: dict[str, int] = field(default_factory=dict)  # e.g. {"train_images": 12271, "classes": 7}
    fingerprint: str = ""  # short hash of the data's files (names, sizes, dates) or of the generator spec
    expected: str = ""  # when missing or unreadable: what goes where
    detail: str = ""  # e.g. the layout found

    def identity(self) -> dict:
        """Name, root, counts and fingerprint: two runs saw the same data when these are equal."""
        return {"name": self.name, "root": self.where, "counts": dict(self.counts), "fingerprint": self.fingerprint}

    def line(self) -> str:
        """One line of ``vqalab data``."""
        if not self.found:
            return f"{self.name:<16} missing  {self.where}: {self.expected}"
        parts = [", ".join(f"{v} {k.replace('_', ' ')}" for k, v in self.counts.items()),
                 f"fingerprint {self.fingerprint}" if self.fingerprint else "", self.detail]
        return f"{self.name:<16} found    {self.where}: {'; '.join(p for p in parts if p)}"


STATUS_CHECKS: dict[str, Callable[[dict], DataStatus]] = {}
FAMILIES: dict[str, str] = {}  # data set → the studies it serves: "faces" (FER) or "vqa"
# What a data set's items carry to train on, declared before any loading: "class" (the class index,
# ``target``), "soft" (also soft answer scores, ``soft_target``: what train.loss bce needs) or "mask"
# (a segmentation mask, ``task`` segmentation); a function of the spec for a wrapper (frozen_features).
TARGETS: dict[str, str | Callable[[dict], str]] = {}
TARGET_KINDS = ("class", "soft", "mask")


def register_status(name: str, *, family: str, targets: str | Callable[[dict], str] = "class"):
    """Register the status check of data set ``name``: ``fn(spec) -> DataStatus``, where ``spec``
    holds every keyword of the builder (its defaults filled in). ``family``: the kind of study the
    data set serves ("faces", "vqa"); ``vqalab report --data NAME`` runs the studies of its family.
    ``targets``: what its items carry to train on (``TARGETS``)."""
    if isinstance(targets, str) and targets not in TARGET_KINDS:
        raise ValueError(f"register_status({name!r}): targets = {targets!r}: expected one of {TARGET_KINDS}")

    def register(fn: Callable[[dict], DataStatus]) -> Callable[[dict], DataStatus]:
        STATUS_CHECKS[name] = fn
        FAMILIES[name] = family
        TARGETS[name] = targets
        return fn
    return register


def declared_targets(spec: dict | str) -> str:
    """What the items of the data set a ``data`` section names carry to train on (``TARGETS``)."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    targets = TARGETS.get(spec.get("name"), "class")
    return targets(spec) if callable(targets) else targets


def short_hash(parts) -> str:
    """A data set's fingerprint: ``json_digest`` of ``parts`` (file stats, generator arguments)."""
    return json_digest(parts, length=DATA_FINGERPRINT_DIGITS)


def data_status(spec: dict | str) -> DataStatus:
    """The status of the data set a ``data`` section (or a bare name) describes."""
    spec = {"name": spec} if isinstance(spec, str) else dict(spec)
    name = spec.pop("name")
    params = inspect.signature(DATASETS.get(name)).parameters
    full = {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}
    full.update(spec)
    return STATUS_CHECKS[name](full)


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
from vqalab.data import easy_vqa, faces, feature_cache, gqa, rafdb, scenes, views, vqa_v2  # noqa: F401
