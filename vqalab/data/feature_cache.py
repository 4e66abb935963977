"""Frozen-feature cache: a frozen image encoder runs once per image, not once per epoch and run.

How it plugs in: the ``frozen_features`` data set wraps any image data set (``source``, e.g.
easy_vqa or vqa_v2). It encodes every distinct image of each split once with a frozen ResNet,
stores the feature maps on disk and yields them as the ``image`` input; it sets the model's
``image_dim``, so the model builds no image encoder (``PrecomputedFeatures``)::

    data:
      name: frozen_features
      source: {name: easy_vqa}
      encoder: resnet18
      weights: weights/resnet18.pth   # a local state dict; null: random init (seeded)

The cache key is (encoder, weights, image set, image size, transform):

- encoder: ResNet name and whether the map is pooled;
- weights: SHA-256 of the weights file's bytes (``provenance.file_digest``) (or the seed of a random init);
- image set: data set and split names, the image ids, and, where the split offers one
  (``image_fingerprint()``, VQA v2), the image files' paths, sizes and modification times;
- image size: (H, W) of the images as the encoder sees them;
- transform: the split's ``transform_key`` when it has one, and a SHA-1 of the first image
  tensor, so any change to resizing or normalisation changes the key;
- the storage dtype.

Entries live in ``vqalab.paths.cache_dir()/features/<digest of the key>/`` (``features.npy``
(N, D, h, w), ``image_ids.npy`` (N,), ``key.json``). A changed key part gives another digest:
the old entry is never read again (delete the folder to reclaim the space). Entries are written to
a temporary folder and renamed, so a reader never sees half an entry. Features are memory-mapped,
so caches larger than RAM work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from vqalab.data import (
    DATASETS,
    DataSplits,
    DataStatus,
    data_status,
    declared_targets,
    register_dataset,
    register_status,
    short_hash,
)
from vqalab.devices import auto_device_name, torch_threads
from vqalab.io import json_digest
from vqalab.paths import cache_dir, resolve_data
from vqalab.provenance import file_digest
from vqalab.registry import ConfigError
from vqalab.threads import choose_threads

log = logging.getLogger(__name__)

CACHE_LAYOUT_VERSION = 1  # part of every key: bump when the stored layout or encoder code changes

ResNetName = Literal["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
StorageDtype = Literal["float32", "float16"]


@dataclass(frozen=True)
class FeatureKey:
    """Everything the stored features depend on (see the module docstring)."""

    encoder: str
    weights: str
    image_set: str
    image_size: tuple[int, int]
    transform: str
    dtype: str = "float32"
    version: int = CACHE_LAYOUT_VERSION

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "image_size": list(self.image_size)}

    def digest(self) -> str:
        return json_digest(self.as_dict(), length=20)


class FeatureCache:
    """Feature arrays on disk, one folder per key. root: where (default ``cache_dir()/features``)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root is not None else cache_dir() / "features"

    def folder(self, key: FeatureKey) -> Path:
        return self.root / key.digest()

    def load(self, key: FeatureKey) -> tuple[np.ndarray, np.ndarray] | None:
        """(image_ids (N,), features (N, D, h, w) memory-mapped) when stored under this key, else None."""
        folder = self.folder(key)
        try:
            stored_key = json.loads((folder / "key.json").read_text())
            ids = np.load(folder / "image_ids.npy")
            features = np.load(folder / "features.npy", mmap_mode="r")
        except (OSError, ValueError):
            return None
        if stored_key != key.as_dict() or len(ids) != len(features):
            log.warning("feature cache %s does not match its key; recomputing", folder)
            return None
        return ids, features

    def store(self, key: FeatureKey, image_ids: np.ndarray, feature_shape: tuple[int, ...], fill) -> Path:
        """Write an entry: ``fill(array)`` writes the (N, D, h, w) features into a memory-mapped array.

        Written to a temporary folder, then renamed; if another process stored the same key in the
        meantime, its entry is kept.
        """
        folder = self.folder(key)
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / f".{folder.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        try:
            array = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=key.dtype,
                                              shape=(len(image_ids), *feature_shape))
            fill(array)
            array.flush()
            del array
            np.save(tmp / "image_ids.npy", image_ids)
            (tmp / "key.json").write_text(json.dumps(key.as_dict(), indent=2, sort_keys=True))
            if folder.exists():
                shutil.rmtree(folder)  # an entry that failed ``load``'s checks
            os.rename(tmp, folder)
        except OSError:
            if not folder.exists():
                raise
            log.info("feature cache %s was stored by another process", folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return folder


def build_image_encoder(name: str, **kwargs) -> torch.nn.Module:
    """``vqalab.models.encoders.build_image_encoder``, imported on first use: the models import
    torchvision, slow to import, and a status check or a cache hit needs none of it."""
    from vqalab.models.encoders import build_image_encoder as build

    return build(name, **kwargs)


def first_item_of_image(dataset: Dataset) -> dict[int, int]:
    """image id → index of its first item, in order of first appearance."""
    first: dict[int, int] = {}
    for index, image_id in enumerate(dataset.image_ids):
        first.setdefault(int(image_id), index)
    return first


def feature_key(dataset: Dataset, *, split: str, source_name: str, encoder: str, weights: str | None,
                pooled: bool, init_seed: int, dtype: str, first: dict[int, int]) -> FeatureKey:
    """The cache key of ``dataset``'s images under this encoder (reads one image as the probe)."""
    probe = dataset[next(iter(first.values()))]["image"]  # (3, H, W) as the encoder would see it
    ids = np.array(sorted(first), dtype=np.int64)
    image_set = f"{source_name}/{split}: {len(ids)} images, ids sha256 {hashlib.sha256(ids.tobytes()).hexdigest()}"
    if hasattr(dataset, "image_fingerprint"):
        image_set += f", files sha256 {dataset.image_fingerprint()}"
    transform = getattr(dataset, "transform_key", "")
    transform += f"; first image sha256 {hashlib.sha256(probe.float().numpy().tobytes()).hexdigest()}"
    weights_part = f"sha256 {file_digest(resolve_data(weights))}" if weights else \
        f"random init, torch seed {init_seed}, torch {torch.__version__}"
    return FeatureKey(encoder=f"{encoder}{' pooled' if pooled else ''}", weights=weights_part, image_set=image_set,
                      image_size=(int(probe.shape[-2]), int(probe.shape[-1])), transform=transform, dtype=dtype)


@torch.no_grad()
def encode_images(dataset: Dataset, first: dict[int, int], ids: np.ndarray, encoder: torch.nn.Module,
                  out: np.ndarray, batch_size: int, device: torch.device) -> None:
    """Run ``encoder`` once on each image (row i of ``out`` ← image ``ids[i]``)."""
    for start in range(0, len(ids), batch_size):
        batch_ids = ids[start:start + batch_size]
        images = torch.stack([dataset[first[int(i)]]["image"] for i in batch_ids]).to(device)
        out[start:start + len(batch_ids)] = encoder(images).float().cpu().numpy().astype(out.dtype)


def cached_image_features(dataset: Dataset, *, split: str, source_name: str, encoder: str,
                          weights: str | None = None, pooled: bool = False, init_seed: int = 0,
                          batch_size: int = 64, device: str = "cpu", dtype: str = "float32",
                          cache: FeatureCache | None = None) -> tuple[np.ndarray, dict[int, int], bool]:
    """Features of every distinct image of ``dataset`` (items with ``image``, ``.image_ids``).

    Returns (features (N, D, h, w), row of each image id, whether the cache had them).
    """
    cache = cache or FeatureCache()
    first = first_item_of_image(dataset)
    key = feature_key(dataset, split=split, source_name=source_name, encoder=encoder, weights=weights,
                      pooled=pooled, init_seed=init_seed, dtype=dtype, first=first)
    stored = cache.load(key)
    hit = stored is not None
    if not hit:
        ids = np.array(sorted(first), dtype=np.int64)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(init_seed)  # a random-init encoder is the same for the same seed
            net = build_image_encoder(encoder, weights_path=weights, frozen=True, pooled=pooled)
        dev = torch.device(device)
        net.to(dev)
        t0 = time.perf_counter()
        shape = tuple(net(dataset[first[int(ids[0])]]["image"][None].to(dev)).shape[1:])  # (D, h, w)
        threads = choose_threads()  # on a shared machine the encoder takes only the free cores
        log.info("feature cache: %d CPU threads (%s)", threads.threads, threads.reason)
        with torch_threads(threads.threads):
            folder = cache.store(key, ids, shape,
                                 lambda out: encode_images(dataset, first, ids, net, out, batch_size, dev))
        log.info("feature cache: encoded %d %s images with %s in %.1f s -> %s", len(ids), split, encoder,
                 time.perf_counter() - t0, folder)
        stored = cache.load(key)
        if stored is None:
            raise RuntimeError(f"feature cache entry {folder} could not be read back")
    ids, features = stored
    return features, {int(i): row for row, i in enumerate(ids)}, hit


class CachedFeatureDataset(Dataset):
    """A split whose ``image`` is the cached feature map (D, h, w); every other key as in ``base``.

    The other keys come from ``base.item_without_image(i)`` when the split offers it (no image is
    read); otherwise they are taken from ``base[i]`` once, here, so epochs never prepare an image
    only to drop it. ``__getitems__`` serves a whole batch with one read of the feature array.
    """

    def __init__(self, base: Dataset, features: np.ndarray, row_of_image: dict[int, int]):
        self.base = base
        self.features = features
        self.row_of_image = row_of_image
        self.targets = base.targets
        self.image_ids = base.image_ids
        self.other_keys = None if hasattr(base, "item_without_image") else \
            [{k: v for k, v in base[i].items() if k != "image"} for i in range(len(base))]

    def __len__(self) -> int:
        return len(self.base)

    def item_without_image(self, index: int) -> dict:
        if self.other_keys is None:
            return self.base.item_without_image(index)
        return dict(self.other_keys[index])

    def __getitems__(self, indices: list[int]) -> list[dict]:
        items = [self.item_without_image(i) for i in indices]
        rows = [self.row_of_image[int(item["image_id"])] for item in items]
        # Fancy indexing copies the rows out of the read-only memory map: (B, D, h, w).
        features = torch.from_numpy(np.asarray(self.features[rows], dtype=np.float32))
        for item, feature in zip(items, features):
            item["image"] = feature
        return items

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]


@register_dataset
def frozen_features(
    *,
    source: dict,
    encoder: ResNetName = "resnet18",
    weights: str | None = None,
    pooled: bool = False,
    init_seed: int = 0,
    batch_size: int = 64,
    device: str = "auto",
    dtype: StorageDtype = "float32",
) -> DataSplits:
    """Any image data set with its images replaced by cached features of a frozen ResNet.

    source: the wrapped data section, e.g. {name: easy_vqa, max_train_samples: 2000}.
    encoder: the frozen ResNet. weights: its local state-dict file (None: random init).
    pooled: store the average-pooled vector (D, 1, 1) instead of the map (D, h, w).
    init_seed: seed of the random init when weights is None.
    batch_size: images per encoder call while filling the cache.
    device: where the encoder runs while filling the cache (auto: CUDA when available).
    dtype: storage type of the features (float16 halves the disk space).
    """
    spec = dict(source)
    name = spec.pop("name", None)
    if name is None:
        raise ConfigError(f"data.source: 'name' missing: one of {', '.join(DATASETS.names())}")
    if name == "frozen_features":
        raise ConfigError("data.source.name = 'frozen_features': the source must be a data set of images")
    checked = DATASETS.check_kwargs(name, spec, where="data.source")
    if weights and not resolve_data(weights).is_file():
        raise ConfigError(f"data.weights: weights file not found: {resolve_data(weights)}")
    if device == "auto":
        device = auto_device_name()

    data = DATASETS.get(name)(**checked)
    if "image_dim" in data.model_kwargs:
        raise ConfigError(f"data.source: '{name}' already yields image features; it needs no frozen_features")
    if "image_id" not in data.input_keys:
        raise ConfigError(f"data.source: '{name}' has no image ids (inputs {data.input_keys}): the cache keys "
                          f"features by image id (easy_vqa, vqa_v2)")
    cache = FeatureCache()
    wrapped, report = {}, {}
    for split in ("train", "val"):
        t0 = time.perf_counter()
        features, rows, hit = cached_image_features(
            getattr(data, split), split=split, source_name=name, encoder=encoder, weights=weights, pooled=pooled,
            init_seed=init_seed, batch_size=batch_size, device=device, dtype=dtype, cache=cache)
        wrapped[split] = CachedFeatureDataset(getattr(data, split), features, rows)
        report[split] = {"cache_hit": hit, "images": len(rows), "seconds": round(time.perf_counter() - t0, 3)}
    feature_dim = int(wrapped["val"].features.shape[1])
    return dataclasses.replace(
        data, train=wrapped["train"], val=wrapped["val"],
        model_kwargs={**data.model_kwargs, "image_dim": feature_dim},
        info={**data.info, "image_features": {"encoder": encoder, "weights": weights, "pooled": pooled,
                                              "dim": feature_dim, "cache_root": str(cache.root), **report}},
    )


@register_status("frozen_features", family="vqa",
                 targets=lambda spec: declared_targets(spec.get("source") or {}))
def frozen_features_status(spec: dict) -> DataStatus:
    """The source data set's status; the fingerprint also covers the encoder and its weights file."""
    if not spec.get("source"):
        return DataStatus(name="frozen_features", found=True, where="wraps an image data set (data.source)",
                          detail="features cached under the cache folder")
    source = data_status(spec["source"])
    weights = resolve_data(spec["weights"]) if spec.get("weights") else None
    if source.found and weights is not None and not weights.is_file():
        return DataStatus(name=f"frozen_features({source.name})", found=False, where=str(weights),
                          expected=f"the {spec.get('encoder')} weights file (a local state dict, e.g. torchvision's "
                                   f"ImageNet weights saved with torch.save(model.state_dict(), path))")
    weights_stat = (str(weights), weights.stat().st_size, weights.stat().st_mtime_ns) if weights and weights.is_file() else None
    encoder = {k: spec.get(k) for k in ("encoder", "pooled", "dtype", "init_seed")}
    return DataStatus(name=f"frozen_features({source.name})", found=source.found, where=source.where,
                      counts=source.counts, fingerprint=short_hash([source.fingerprint, encoder, weights_stat]),
                      expected=source.expected, detail=f"{spec.get('encoder')} features")
