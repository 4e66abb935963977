"""Region feature files in the bottom-up-attention layout, shared by the GQA and VQA v2 loaders.

One ``.npz`` file per image holding ``features`` (K, D) float, ``boxes`` (K, 4) float pixels
x1, y1, x2, y2, and the scalars ``image_w``, ``image_h``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vqalab.registry import ConfigError

BOX_DIM = 4
REGION_ARRAYS = ("features", "boxes", "image_w", "image_h")
# Model inputs of a region data set: the boxes also travel on their own, for BAN's counting module.
REGION_INPUT_KEYS = ("image", "question", "question_len", "image_id", "boxes")


def read_regions(path: Path) -> np.ndarray:
    """(K, D + 4) float32: each region's features followed by its box as fractions of the image."""
    with np.load(path) as f:
        missing = [key for key in REGION_ARRAYS if key not in f.files]
        if missing:
            raise ConfigError(f"{path}: missing array {', '.join(repr(k) for k in missing)} "
                              f"(expected {', '.join(REGION_ARRAYS)})")
        features, boxes = np.asarray(f["features"], np.float32), np.asarray(f["boxes"], np.float32)
        width, height = float(f["image_w"]), float(f["image_h"])
    if features.ndim != 2 or boxes.shape != (len(features), BOX_DIM) or width <= 0 or height <= 0:
        raise ConfigError(f"{path}: expected features (K, D), boxes (K, 4) and a positive image_w, image_h; "
                          f"got features {features.shape}, boxes {boxes.shape}, image {width}×{height}")
    for name, values in (("features", features), ("boxes", boxes)):
        check_finite(path, values, name)
    return np.concatenate([features, boxes / np.array([width, height, width, height], np.float32)], axis=1)


def check_finite(path: Path, values: np.ndarray, what: str = "features") -> None:
    """Refuse a feature file holding NaN or infinity, naming it: training on it would only say
    "diverged", without saying where the bad number came from."""
    bad = ~np.isfinite(values)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ConfigError(f"{path}: {what} hold {int(bad.sum())} non-finite value(s) (NaN or infinity; the first "
                          f"at index {first}): recompute or replace the file")


def boxes_of(region_map: torch.Tensor) -> torch.Tensor:
    """(D + 4, K, 1) region map (features, then the box, per region) → its (K, 4) boxes."""
    return region_map[-BOX_DIM:, :, 0].t().contiguous()
