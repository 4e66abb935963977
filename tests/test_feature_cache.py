"""Frozen-feature cache: miss, hit, invalidation by every key part, and training from the cache."""

import json
import os

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from test_vqa_v2 import FIXTURE_IMAGE_SIZE, write_vqa_v2_fixture

from vqalab.config import build_config
from vqalab.data import build_data
from vqalab.data import feature_cache as fc
from vqalab.models.encoders import build_image_encoder
from vqalab.registry import ConfigError
from vqalab.train import fit


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    """Every cache in these tests lives in tmp_path (``vqalab.paths.cache_dir`` reads VQALAB_CACHE)."""
    monkeypatch.setenv("VQALAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "features"


@pytest.fixture
def vqa_root(tmp_path):
    return write_vqa_v2_fixture(tmp_path / "vqa_v2")


def vqa_split(root, image_size=FIXTURE_IMAGE_SIZE, split="val"):
    data = build_data({"name": "vqa_v2", "root": str(root), "image_size": image_size})
    return getattr(data, split)


def features_of(dataset, **kwargs):
    options = {"split": "val", "source_name": "vqa_v2", "encoder": "resnet18", "batch_size": 2, **kwargs}
    return fc.cached_image_features(dataset, **options)


def count_encoder_builds(monkeypatch) -> list:
    builds = []
    real = build_image_encoder

    def counting(*args, **kwargs):
        builds.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr("vqalab.data.feature_cache.build_image_encoder", counting)
    return builds


def test_miss_then_hit_stores_exactly_the_encoder_output(cache_root, vqa_root, monkeypatch):
    dataset = vqa_split(vqa_root)
    builds = count_encoder_builds(monkeypatch)
    features, rows, hit = features_of(dataset)
    assert not hit and builds == ["resnet18"]
    assert sorted(rows) == [133, 164]
    entry, = cache_root.iterdir()
    assert {p.name for p in entry.iterdir()} == {"features.npy", "image_ids.npy", "key.json"}
    assert json.loads((entry / "key.json").read_text())["encoder"] == "resnet18"

    # Independent computation: the same seeded random ResNet-18 on the same pixels.
    torch.manual_seed(0)
    net = build_image_encoder("resnet18", frozen=True)
    image = dataset[dataset.image_ids.index(164)]["image"]
    with torch.no_grad():
        expected = net(image[None])[0].numpy()
    assert features.shape == (2, 512, 1, 1)
    np.testing.assert_allclose(features[rows[164]], expected, rtol=1e-4, atol=1e-5)

    again, rows_again, hit = features_of(dataset)
    assert hit and builds == ["resnet18"]  # the encoder was not built again
    assert rows_again == rows
    np.testing.assert_array_equal(again, features)


@pytest.mark.parametrize("change", ["encoder", "pooled", "weights", "image_size", "image_file", "dtype", "seed"])
def test_each_key_part_invalidates(change, cache_root, vqa_root, tmp_path, monkeypatch):
    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(5)
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    base = {"weights": str(weights)}
    dataset = vqa_split(vqa_root)
    first, _, hit = features_of(dataset, **base)
    assert not hit
    assert features_of(dataset, **base)[2]  # unchanged: a hit

    options, other = dict(base), dataset
    if change == "encoder":
        options.update(encoder="resnet34", weights=None)
    elif change == "pooled":
        options["pooled"] = True
    elif change == "weights":
        state = torch.load(weights, weights_only=True)
        state["conv1.weight"] = state["conv1.weight"] * 2
        torch.save(state, weights)  # same path, new bytes
    elif change == "image_size":
        other = vqa_split(vqa_root, image_size=FIXTURE_IMAGE_SIZE * 2)
    elif change == "image_file":
        path = vqa_root / "val2014" / "COCO_val2014_000000000164.jpg"
        Image.fromarray(np.zeros((FIXTURE_IMAGE_SIZE, FIXTURE_IMAGE_SIZE, 3), np.uint8)).save(path)
        stat = path.stat()
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
        other = vqa_split(vqa_root)
    elif change == "dtype":
        options["dtype"] = "float16"
    elif change == "seed":
        options.update(weights=None, init_seed=1)
        assert not features_of(dataset, weights=None, init_seed=0)[2]
    features, _, hit = features_of(other, **options)
    assert not hit
    assert len(list(cache_root.iterdir())) >= 2  # a new entry beside the old one
    if change in ("weights", "image_file"):
        assert not np.allclose(features, first)


def test_frozen_features_data_trains_a_model_without_an_image_encoder(cache_root, vqa_root, tmp_path):
    spec = {"name": "frozen_features", "source": {"name": "vqa_v2", "root": str(vqa_root), "image_size": 64},
            "encoder": "resnet18", "batch_size": 4}
    data = build_data(spec)
    assert data.model_kwargs["image_dim"] == 512
    assert data.info["image_features"]["train"]["cache_hit"] is False
    item = data.train[0]
    assert item["image"].shape == (512, 2, 2) and item["image"].dtype == torch.float32
    assert set(item) == {"image", "question", "image_id", "target", "soft_target"}
    assert data.train.targets == data.train.base.targets

    cfg = build_config({"experiment": "cached", "name": "san", "runs_root": str(tmp_path / "runs"),
                        "model": {"name": "vqa_san"}, "data": spec,
                        "train": {"epochs": 1, "batch_size": 4, "loss": "bce", "progress": False}})
    result = fit(cfg)  # builds the data again: now from the cache
    assert result.summary["status"] == "completed", result.summary.get("error")
    assert result.summary["data"]["image_features"]["train"]["cache_hit"] is True
    assert result.summary["trainable_params"] == result.summary["params"]  # no frozen encoder inside


def test_frozen_features_errors_come_before_any_compute(cache_root, vqa_root):
    with pytest.raises(ConfigError, match="data.source: 'name' missing"):
        build_data({"name": "frozen_features", "source": {"root": str(vqa_root)}})
    with pytest.raises(ConfigError, match="data.source: unknown key 'image_sise' for data set 'vqa_v2'"):
        build_data({"name": "frozen_features", "source": {"name": "vqa_v2", "image_sise": 32}})
    with pytest.raises(ConfigError, match="data.weights: weights file not found: .*nothing.pth"):
        build_data({"name": "frozen_features", "source": {"name": "vqa_v2", "root": str(vqa_root)},
                    "weights": "nothing.pth"})
    with pytest.raises(ConfigError, match="data.encoder = 'small_cnn': expected Literal"):
        build_config({"data": {"name": "frozen_features", "source": {"name": "easy_vqa"}, "encoder": "small_cnn"}})
    assert not cache_root.exists()
