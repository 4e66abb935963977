"""synthetic_views: shapes, determinism, the mask against the boxes, the cameras against the images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vqalab.data import build_data
from vqalab.data.views import GROUND, SKY, camera_matrices, occupancy_mask, render_view
from vqalab.registry import ConfigError

SMALL = {"name": "synthetic_views", "num_train": 6, "num_val": 3, "num_cameras": 3, "image_size": 16, "map_size": 8}


@pytest.fixture(scope="module")
def data():
    return build_data(SMALL)


def test_batch_shapes_and_model_interface(data):
    batch = data.collate([data.train[i] for i in range(4)])
    assert batch["images"].shape == (4, 3, 3, 16, 16)
    assert batch["intrinsics"].shape == (4, 3, 3, 3)
    assert batch["extrinsics"].shape == (4, 3, 4, 4)
    assert batch["mask"].shape == (4, 1, 8, 8)
    assert set(batch["mask"].unique().tolist()) <= {0.0, 1.0}
    assert data.input_keys == ("images", "intrinsics", "extrinsics")
    assert data.model_kwargs == {"map_size": 8, "map_extent": 6.0}
    assert data.task == "segmentation"
    assert (len(data.train), len(data.val)) == (6, 3)


def test_same_seed_same_scenes_other_seed_or_split_other_scenes(data):
    again = build_data(SMALL)
    assert torch.equal(again.train.images, data.train.images) and torch.equal(again.val.masks, data.val.masks)
    other = build_data({**SMALL, "seed": 1})
    assert not torch.equal(other.train.images, data.train.images)
    assert not torch.equal(data.train.images[:3], data.val.images)
    longer = build_data({**SMALL, "num_train": 8})  # a longer split keeps its first scenes
    assert torch.equal(longer.train.images[:6], data.train.images)


def test_mask_cells_follow_the_box_footprint_and_the_map_layout():
    # A 2 m × 2 m box centred 5 m ahead (x) and 3 m to the left (y), map ±8 m in 8 cells of 2 m.
    mask = occupancy_mask(np.array([[5.0, 3.0, 2.0, 2.0, 1.0, 0.0]]), map_size=8, map_extent=8.0)[0]
    # Cell centres: x = 8 - (i + ½)·2 → row 1 is x = 5; y = 8 - (j + ½)·2 → column 2 is y = 3.
    expected = np.zeros((8, 8), dtype=np.float32)
    expected[1, 2] = 1.0
    assert np.array_equal(mask, expected)


def test_a_box_shows_where_the_camera_matrices_project_it():
    k, e = camera_matrices(image_size=32, yaws=np.array([math.pi / 2]))  # camera looking left (+y)
    box = np.array([[0.0, 5.0, 2.0, 2.0, 2.0, 0.0]])  # 5 m to the left, 2 m tall
    colour = np.array([[1.0, 0.0, 0.0]])
    image = render_view(box, colour, k[0], e[0], 32)
    point = e[0] @ np.array([0.0, 4.0, 1.0, 1.0])  # the middle of the box's near face, camera frame
    u, v, _ = (k[0] @ point[:3]) / point[2]
    pixel = image[:, int(v), int(u)]
    assert pixel[0] > 0.4 and pixel[1] == 0.0 and pixel[2] == 0.0  # shaded red: the box
    assert np.allclose(image[:, 0, 0], SKY) and np.allclose(image[:, 31, 0], GROUND)  # sky above, ground below


def test_out_of_range_keys_name_the_key():
    with pytest.raises(ConfigError, match="num_cameras = 7: expected 2 … 6"):
        build_data({**SMALL, "num_cameras": 7})
