"""Multi-camera map-view segmentation data: the interface, and synthetic scenes (lab note 004).

A map-view segmentation item is several camera images of one scene, each camera's intrinsics and
extrinsics, and a top-down (map-view) occupancy mask:

    images (ncam, 3, H, W) float, intrinsics (ncam, 3, 3), extrinsics (ncam, 4, 4), mask (1, h, w)

Conventions (those of nuScenes and the cross-view transformer code): world frame x forward,
y left, z up, with the ego vehicle at the origin; camera frame x right, y down, z forward
(OpenCV); ``extrinsics`` maps world to camera points (x_cam = E · x_world, homogeneous);
``intrinsics`` maps camera points to pixels (u, v) with the origin at the top-left image corner.
The map covers [-map_extent, map_extent]² metres; mask row i, column j is the cell whose centre
is at x = map_extent - (i + ½)·cell, y = map_extent - (j + ½)·cell (forward is up, left is left).
A loader for a real multi-camera data set returns ``MapViewDataset`` items in these conventions.

``synthetic_views`` is the embedded default: a few boxes on a ground plane around the origin,
rendered by ray casting into ``num_cameras`` pinhole cameras at the origin facing outward,
evenly spread in yaw (with per-scene jitter, so a model has to read the extrinsics). Every scene
comes from its own random stream ``(seed, split, index)``: a longer split keeps its first scenes,
and train and validation never share one.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch.utils.data import Dataset

from vqalab.data import DataSplits, DataStatus, register_dataset, register_status, short_hash
from vqalab.registry import ConfigError

# Part of the data identity: bump it when the scenes drawn for the same keywords change.
GENERATOR_VERSION = 1

log = logging.getLogger(__name__)

SPLIT_STREAM = {"train": 0, "val": 1}  # second word of each scene's seed
CAMERA_HEIGHT = 1.5  # metres above the ground plane
FOV_DEG = 100.0  # horizontal field of view: neighbouring cameras overlap, as on a car rig
BOX_SIZE = (1.5, 3.5)  # box side range, metres
BOX_HEIGHT = (0.8, 2.2)
EGO_CLEARANCE = 2.0  # box centres keep this far from the origin (the cameras sit there)
SKY = np.array([0.55, 0.7, 0.9])
GROUND = np.array([0.45, 0.45, 0.42])
GROUND_LINE_SPACING = 2.0  # metres between darker ground lines: depth cues for the model
SUN = np.array([0.3, 0.5, 0.8]) / np.linalg.norm([0.3, 0.5, 0.8])
# World (x forward, y left, z up) → camera axes (x right, y down, z forward) at yaw 0.
WORLD_TO_CAMERA_AXES = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
NORMALIZE_MEAN, NORMALIZE_STD = 0.5, 0.25  # images to roughly zero mean, unit spread


def camera_matrices(*, image_size: int, yaws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsics (ncam, 3, 3) and world-to-camera extrinsics (ncam, 4, 4) of cameras at height
    ``CAMERA_HEIGHT`` above the origin, looking horizontally along the given yaws (radians, 0 =
    forward, counter-clockwise)."""
    focal = image_size / 2 / math.tan(math.radians(FOV_DEG) / 2)
    k = np.array([[focal, 0.0, image_size / 2], [0.0, focal, image_size / 2], [0.0, 0.0, 1.0]])
    extrinsics = []
    for yaw in yaws:
        c, s = math.cos(yaw), math.sin(yaw)
        yaw_rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])  # camera-to-world yaw
        rotation = WORLD_TO_CAMERA_AXES @ yaw_rotation.T  # world → camera
        centre = np.array([0.0, 0.0, CAMERA_HEIGHT])
        e = np.eye(4)
        e[:3, :3], e[:3, 3] = rotation, -rotation @ centre
        extrinsics.append(e)
    return np.repeat(k[None], len(yaws), axis=0), np.stack(extrinsics)


def render_view(boxes: np.ndarray, colors: np.ndarray, intrinsics: np.ndarray, extrinsics: np.ndarray,
                image_size: int) -> np.ndarray:
    """Ray-cast one camera: (3, H, W) RGB in [0, 1].

    boxes: (K, 6) centre x, y, size x, size y, height, yaw (radians); colors: (K, 3).
    """
    v, u = np.meshgrid(np.arange(image_size) + 0.5, np.arange(image_size) + 0.5, indexing="ij")
    pixels = np.stack([u.ravel(), v.ravel(), np.ones(u.size)])  # (3, P)
    rotation, translation = extrinsics[:3, :3], extrinsics[:3, 3]
    directions = (rotation.T @ np.linalg.inv(intrinsics) @ pixels).T  # (P, 3) world frame
    origin = -rotation.T @ translation  # camera centre in the world
    image = np.broadcast_to(SKY, directions.shape).copy()
    depth = np.full(len(directions), np.inf)
    down = directions[:, 2] < 0  # rays that reach the ground plane z = 0
    t_ground = -origin[2] / directions[down, 2]
    hit = origin + t_ground[:, None] * directions[down]  # (P_down, 3)
    offset = np.remainder(hit[:, :2] + GROUND_LINE_SPACING / 2, GROUND_LINE_SPACING) - GROUND_LINE_SPACING / 2
    on_line = (np.abs(offset) < 0.08).any(axis=1)
    image[down] = GROUND * np.where(on_line, 0.7, 1.0)[:, None]
    depth[down] = t_ground
    for (cx, cy, sx, sy, height, yaw), color in zip(boxes, colors):
        c, s = math.cos(yaw), math.sin(yaw)
        to_box = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])  # world → box frame
        o = to_box @ (origin - np.array([cx, cy, 0.0]))
        d = directions @ to_box.T
        low, high = np.array([-sx / 2, -sy / 2, 0.0]), np.array([sx / 2, sy / 2, height])
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (low - o) / d, (high - o) / d  # slab method, (P, 3) each
        t_near = np.nanmax(np.minimum(t1, t2), axis=1)
        t_far = np.nanmin(np.maximum(t1, t2), axis=1)
        box_hit = (t_near <= t_far) & (t_near > 0) & (t_near < depth)
        axis = np.nanargmax(np.minimum(t1, t2), axis=1)  # the face entered: its normal shades it
        normal = np.zeros_like(d)
        normal[np.arange(len(d)), axis] = -np.sign(d[np.arange(len(d)), axis])
        shade = 0.55 + 0.45 * np.clip((normal @ to_box) @ SUN, 0.0, 1.0)
        image[box_hit] = (color[None] * shade[:, None])[box_hit]
        depth[box_hit] = t_near[box_hit]
    return image.T.reshape(3, image_size, image_size)


def occupancy_mask(boxes: np.ndarray, map_size: int, map_extent: float) -> np.ndarray:
    """(1, h, w) float: 1 where a box footprint covers the cell centre (see the module docstring)."""
    cell = 2 * map_extent / map_size
    centres = map_extent - (np.arange(map_size) + 0.5) * cell
    x, y = np.meshgrid(centres, centres, indexing="ij")  # x by row (forward up), y by column (left left)
    mask = np.zeros((map_size, map_size), dtype=bool)
    for cx, cy, sx, sy, _, yaw in boxes:
        c, s = math.cos(yaw), math.sin(yaw)
        lx, ly = c * (x - cx) + s * (y - cy), -s * (x - cx) + c * (y - cy)
        mask |= (np.abs(lx) <= sx / 2) & (np.abs(ly) <= sy / 2)
    return mask[None].astype(np.float32)


def draw_scene(rng: np.random.Generator, *, num_cameras: int, image_size: int, map_size: int,
               map_extent: float, max_boxes: int, yaw_jitter_deg: float, noise_std: float) -> dict:
    """One scene as numpy arrays: images (ncam, 3, H, W) in [0, 1], intrinsics, extrinsics, mask."""
    count = int(rng.integers(1, max_boxes + 1))
    radius = rng.uniform(EGO_CLEARANCE, map_extent - BOX_SIZE[1] / 2, count)
    angle = rng.uniform(0, 2 * math.pi, count)
    boxes = np.stack([radius * np.cos(angle), radius * np.sin(angle), rng.uniform(*BOX_SIZE, count),
                      rng.uniform(*BOX_SIZE, count), rng.uniform(*BOX_HEIGHT, count),
                      rng.uniform(0, math.pi, count)], axis=1)  # (K, 6)
    colors = rng.uniform(0.2, 1.0, (count, 3))
    yaws = (2 * math.pi * np.arange(num_cameras) / num_cameras
            + math.radians(yaw_jitter_deg) * rng.uniform(-1, 1, num_cameras))
    intrinsics, extrinsics = camera_matrices(image_size=image_size, yaws=yaws)
    images = np.stack([render_view(boxes, colors, k, e, image_size) for k, e in zip(intrinsics, extrinsics)])
    images = np.clip(images + noise_std * rng.standard_normal(images.shape), 0.0, 1.0)
    return {"images": images.astype(np.float32), "intrinsics": intrinsics.astype(np.float32),
            "extrinsics": extrinsics.astype(np.float32), "mask": occupancy_mask(boxes, map_size, map_extent)}


class MapViewDataset(Dataset):
    """Items: ``images`` (ncam, 3, H, W) normalised, ``intrinsics`` (ncam, 3, 3), ``extrinsics``
    (ncam, 4, 4) world-to-camera, ``mask`` (1, h, w) occupancy in {0, 1}, ``index``.

    Arrays hold every item: images float in [0, 1] (N, ncam, 3, H, W), the rest as above with a
    leading N. Normalised on access (mean ``NORMALIZE_MEAN``, std ``NORMALIZE_STD``).
    """

    def __init__(self, *, images, intrinsics, extrinsics, masks):
        sizes = {len(images), len(intrinsics), len(extrinsics), len(masks)}
        if len(sizes) != 1:
            raise ValueError(f"images, intrinsics, extrinsics and masks differ in length: {sizes}")
        self.images = torch.as_tensor(images)
        self.intrinsics = torch.as_tensor(intrinsics)
        self.extrinsics = torch.as_tensor(extrinsics)
        self.masks = torch.as_tensor(masks)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict:
        return {"images": (self.images[index] - NORMALIZE_MEAN) / NORMALIZE_STD,
                "intrinsics": self.intrinsics[index], "extrinsics": self.extrinsics[index],
                "mask": self.masks[index], "index": index}


def collate_views(items: list[dict]) -> dict:
    batch = {key: torch.stack([it[key] for it in items]) for key in ("images", "intrinsics", "extrinsics", "mask")}
    batch["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
    return batch  # images (B, ncam, 3, H, W), intrinsics (B, ncam, 3, 3), extrinsics (B, ncam, 4, 4), mask (B, 1, h, w)


def generate_split(*, num: int, seed: int, split: str, **scene) -> MapViewDataset:
    scenes = [draw_scene(np.random.default_rng([seed, SPLIT_STREAM[split], i]), **scene) for i in range(num)]
    return MapViewDataset(**{key: np.stack([s[key] for s in scenes]) for key in ("images", "intrinsics", "extrinsics")},
                          masks=np.stack([s["mask"] for s in scenes]))


@register_dataset
def synthetic_views(
    *,
    num_train: int = 512,
    num_val: int = 128,
    num_cameras: int = 4,
    image_size: int = 32,
    map_size: int = 16,
    map_extent: float = 6.0,
    max_boxes: int = 6,
    yaw_jitter_deg: float = 10.0,
    noise_std: float = 0.02,
    seed: int = 0,
) -> DataSplits:
    """Synthetic multi-camera scenes for map-view segmentation (lab note 004); no download.

    num_train / num_val: scenes per split. num_cameras: 2 … 6 pinhole cameras at the origin,
    facing outward. image_size: camera image side in pixels. map_size: mask side in cells.
    map_extent: the mask covers [-map_extent, map_extent]² metres. max_boxes: 1 … this many boxes
    per scene. yaw_jitter_deg: each camera's yaw moves by up to ± this. noise_std: Gaussian pixel
    noise (0-1 scale). seed: the data seed (fixed across run seeds so runs see the same scenes).
    """
    checks = [("num_train", num_train, num_train >= 1, "≥ 1"), ("num_val", num_val, num_val >= 1, "≥ 1"),
              ("num_cameras", num_cameras, 2 <= num_cameras <= 6, "2 … 6"),
              ("image_size", image_size, 8 <= image_size <= 256, "8 … 256"),
              ("map_size", map_size, 4 <= map_size <= 256, "4 … 256"),
              ("map_extent", map_extent, map_extent > EGO_CLEARANCE + BOX_SIZE[1], f"> {EGO_CLEARANCE + BOX_SIZE[1]}"),
              ("max_boxes", max_boxes, max_boxes >= 1, "≥ 1"),
              ("yaw_jitter_deg", yaw_jitter_deg, 0 <= yaw_jitter_deg <= 180, "0 … 180"),
              ("noise_std", noise_std, noise_std >= 0, "≥ 0"), ("seed", seed, seed >= 0, "≥ 0")]
    for key, value, ok, expected in checks:
        if not ok:
            raise ConfigError(f"data 'synthetic_views': {key} = {value!r}: expected {expected}")
    scene = {"num_cameras": num_cameras, "image_size": image_size, "map_size": map_size, "map_extent": map_extent,
             "max_boxes": max_boxes, "yaw_jitter_deg": yaw_jitter_deg, "noise_std": noise_std}
    train = generate_split(num=num_train, seed=seed, split="train", **scene)
    val = generate_split(num=num_val, seed=seed, split="val", **scene)
    return DataSplits(
        train=train, val=val, collate=collate_views, input_keys=("images", "intrinsics", "extrinsics"),
        model_kwargs={"map_size": map_size, "map_extent": map_extent}, class_names=["occupied"],
        task="segmentation",
        info={"dataset": "synthetic_views", "seed": seed, **scene, "train_scenes": num_train, "val_scenes": num_val,
              "train_occupancy": float(train.masks.mean()), "val_occupancy": float(val.masks.mean())},
    )


@register_status("synthetic_views", family="views", targets="mask")
def synthetic_views_status(spec: dict) -> DataStatus:
    """Always there: drawn on use; the fingerprint covers every keyword the scenes depend on."""
    return DataStatus(name="synthetic_views", found=True, where="generated on use (no files)",
                      counts={"train_scenes": spec["num_train"], "val_scenes": spec["num_val"],
                              "cameras": spec["num_cameras"]},
                      fingerprint=short_hash([spec, GENERATOR_VERSION]))
