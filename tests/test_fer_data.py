"""FER data: synthetic faces, RAF-DB (official and ImageFolder layouts), augmentations, training."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqalab import cli
from vqalab.config import build_config, load_config
from vqalab.data import build_data
from vqalab.data import faces as faces_module
from vqalab.data.expressions import EXPRESSIONS
from vqalab.data.faces import NEUTRAL, expression_at
from vqalab.data.transforms import CROP_SCALE, ImageTransform, random_resized_crop_box
from vqalab.paths import project_root
from vqalab.registry import ConfigError
from vqalab.runs import model_from_checkpoint
from vqalab.train import fit

CLASS_ORDER = ["Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral"]
TINY_MODEL = {"backbone_depth": 18, "width": 0.125, "depth": 1}


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VQALAB_CACHE", str(tmp_path / "cache"))


def synthetic(**kwargs):
    spec = {"name": "synthetic_faces", "num_train": 28, "num_val": 14, "image_size": 32, **kwargs}
    return build_data(spec)


# --- Synthetic faces ---------------------------------------------------------------------------------
def test_synthetic_faces_splits_follow_the_fer_contract():
    data = synthetic()
    assert data.class_names == CLASS_ORDER == list(EXPRESSIONS)
    assert data.input_keys == ("image",)
    assert data.model_kwargs == {"num_classes": 7, "img_size": 32}
    assert len(data.train) == 28 and len(data.val) == 14
    assert data.train.targets == [i % 7 for i in range(28)]  # balanced: 4 of each class
    assert data.info["train_class_counts"] == [4] * 7 and data.info["val_class_counts"] == [2] * 7
    item = data.val[3]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["target"] == 3
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0  # "face" normalisation
    batch = data.collate([data.val[i] for i in range(5)])
    assert batch["image"].shape == (5, 3, 32, 32)
    assert batch["target"].tolist() == [0, 1, 2, 3, 4]


def test_synthetic_faces_are_deterministic_from_the_seed():
    a, b, c = synthetic(seed=3), synthetic(seed=3, use_cache=False), synthetic(seed=4)
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, c.train.images)
    assert not torch.equal(a.train.images[:14], a.val.images)  # train and val use different streams
    bigger = synthetic(seed=3, num_train=35)
    assert torch.equal(bigger.train.images[:28], a.train.images)  # growing a split keeps its first faces


def test_synthetic_faces_are_cached_and_reused(tmp_path, monkeypatch):
    first = synthetic()
    files = sorted((tmp_path / "cache" / "synthetic_faces").glob("*.npz"))
    assert [f.name.split("-")[0] for f in files] == ["train", "val"]

    def fail(**kwargs):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(faces_module, "generate_faces", fail)
    again = synthetic()
    assert torch.equal(first.train.images, again.train.images)
    with pytest.raises(AssertionError, match="regenerated"):
        synthetic(noise_std=0.0)  # another knob, another cache key


def test_difficulty_knobs_change_the_images():
    easy = synthetic(pose_jitter=0.0, scale_jitter=0.0, noise_std=0.0, occlusion_prob=0.0, clutter=0)
    default = synthetic()
    assert not torch.equal(easy.train.images, default.train.images)
    # Without noise, pose or clutter the background corners are one flat colour per image.
    corners = easy.train.images[:, :, :3, :3].float()
    assert (corners.amax(dim=(2, 3)) - corners.amin(dim=(2, 3))).max() <= 1
    noisy = synthetic(noise_std=0.2).train.images[:, :, :3, :3].float()
    assert (noisy.amax(dim=(2, 3)) - noisy.amin(dim=(2, 3))).mean() > 20


def test_expression_intensity_zero_is_the_neutral_face():
    for name in EXPRESSIONS:
        at_zero = expression_at(name, 0.0, np.random.default_rng(0))
        neutral = expression_at("Neutral", 0.0, np.random.default_rng(0))
        assert at_zero == neutral
    full = expression_at("Surprise", 1.0, np.random.default_rng(0))
    assert full.eye_open > NEUTRAL.eye_open and full.mouth_open > 0.05


def test_expressions_differ_from_each_other_in_the_drawn_face():
    # Same identity, pose and noise (same stream), different expression → different pixels at the features.
    difficulty = faces_module.Difficulty(pose_jitter=0, scale_jitter=0, noise_std=0, occlusion_prob=0,
                                         min_intensity=1.0, clutter=0)
    drawn = [faces_module.draw_face(np.random.default_rng(7), k, 64, difficulty) for k in range(7)]
    for i in range(7):
        for j in range(i + 1, 7):
            diff = np.abs(drawn[i].astype(int) - drawn[j].astype(int)).sum(0)
            assert (diff > 40).sum() >= 5, (EXPRESSIONS[i], EXPRESSIONS[j])


@pytest.mark.parametrize("key,value,message", [("num_train", 0, "num_train = 0: expected ≥ 1"),
                                               ("occlusion_prob", 1.5, "occlusion_prob = 1.5: expected 0 … 1")])
def test_synthetic_faces_reject_bad_knobs(key, value, message):
    with pytest.raises(ConfigError, match=message):
        synthetic(**{key: value})


# --- Augmentations -----------------------------------------------------------------------------------
def test_eval_transform_normalises_with_named_constants():
    image = torch.zeros(3, 4, 4, dtype=torch.uint8)
    image[:, 0] = 255
    out = ImageTransform()(image)
    assert torch.equal(out[:, 0], torch.ones(3, 4)) and torch.equal(out[:, 1:], -torch.ones(3, 3, 4))
    imagenet = ImageTransform(normalization="imagenet")(image)
    torch.testing.assert_close(imagenet[0, 0, 0], torch.tensor((1 - 0.485) / 0.229))


def test_flip_mirrors_about_half_of_the_images():
    torch.manual_seed(0)
    image = torch.arange(3 * 4 * 4, dtype=torch.uint8).view(3, 4, 4)
    plain = ImageTransform()(image)
    outs = [ImageTransform(flip=True)(image) for _ in range(200)]
    flipped = sum(torch.equal(o, plain.flip(-1)) for o in outs)
    assert all(torch.equal(o, plain) or torch.equal(o, plain.flip(-1)) for o in outs)
    assert 70 < flipped < 130


def test_random_resized_crop_stays_inside_with_the_requested_area():
    torch.manual_seed(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_box(64, 64, CROP_SCALE)
        assert 0 <= top and top + h <= 64 and 0 <= left and left + w <= 64
        assert CROP_SCALE[0] - 0.05 <= h * w / 64**2 <= CROP_SCALE[1]
    out = ImageTransform(crop_scale=CROP_SCALE)(torch.full((3, 32, 32), 128, dtype=torch.uint8))
    assert out.shape == (3, 32, 32)


# --- RAF-DB ------------------------------------------------------------------------------------------
# Label k's fixture images are filled with colour COLORS[k - 1], so decoding can be checked.
COLORS = [(250, 0, 0), (0, 250, 0), (0, 0, 250), (250, 250, 0), (0, 250, 250), (250, 0, 250), (120, 120, 120)]


def write_rafdb(root, train_labels=(1, 2, 3, 4, 5, 6, 7, 4, 4, 7), test_labels=(1, 2, 3, 4, 5, 6, 7), size=100):
    """The official layout: EmoLabel/list_patition_label.txt + Image/aligned/<name>_aligned.jpg."""
    (root / "EmoLabel").mkdir(parents=True)
    (root / "Image" / "aligned").mkdir(parents=True)
    lines = []
    for split, labels in (("train", train_labels), ("test", test_labels)):
        for i, label in enumerate(labels, start=1):
            name = f"{split}_{i:05d}" if split == "train" else f"{split}_{i:04d}"
            lines.append(f"{name}.jpg {label}")
            Image.new("RGB", (size, size), COLORS[label - 1]).save(root / "Image" / "aligned" / f"{name}_aligned.jpg")
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return root


def rafdb(root, **kwargs):
    return build_data({"name": "rafdb", "root": str(root), "image_size": 32, **kwargs})


def test_rafdb_official_layout(tmp_path):
    data = rafdb(write_rafdb(tmp_path / "basic"), augment=False)
    assert data.class_names == CLASS_ORDER
    assert data.model_kwargs == {"num_classes": 7, "img_size": 32} and data.input_keys == ("image",)
    assert data.train.targets == [0, 1, 2, 3, 4, 5, 6, 3, 3, 6]  # label k → class k - 1
    assert data.val.targets == list(range(7))
    assert data.info["layout"] == "official" and data.info["val_split"] == "test"
    assert data.train.images.shape == (10, 3, 32, 32)  # resized from 100×100
    for image, target in zip(data.train.images, data.train.targets):
        mean = image.float().mean(dim=(1, 2))
        assert torch.allclose(mean, torch.tensor(COLORS[target], dtype=torch.float), atol=6)


def test_rafdb_imagefolder_layout_with_numbers_and_names(tmp_path):
    root = tmp_path / "folders"
    folders = {"train": ["1", "happy", "Neutral"], "test": ["surprise", "4", "7"]}
    for split, names in folders.items():
        for name in names:
            (root / split / name).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (40, 40), (i * 50, 0, 0)).save(root / split / name / f"{i}.png")
    data = rafdb(root)
    assert data.info["layout"] == "imagefolder"
    assert sorted(set(data.train.targets)) == [0, 3, 6]  # 1 = Surprise, happy = Happiness, Neutral
    assert sorted(set(data.val.targets)) == [0, 3, 6]
    assert len(data.train) == 6 and len(data.val) == 6
    (root / "test" / "bored").mkdir()
    with pytest.raises(ConfigError, match="bored: unknown class folder 'bored'"):
        rafdb(root)


def test_rafdb_subsets_are_fixed(tmp_path):
    root = write_rafdb(tmp_path / "basic")
    a, b = rafdb(root, max_train_samples=4), rafdb(root, max_train_samples=4, use_cache=False)
    assert len(a.train) == 4 and a.train.targets == b.train.targets
    assert torch.equal(a.train.images, b.train.images)


def test_rafdb_missing_label_file(tmp_path):
    root = write_rafdb(tmp_path / "basic")
    (root / "EmoLabel" / "list_patition_label.txt").unlink()
    with pytest.raises(ConfigError, match="RAF-DB label file not found: .*basic/EmoLabel/list_patition_label.txt"):
        rafdb(root, layout="official")
    with pytest.raises(ConfigError, match="label file EmoLabel/list_patition_label.txt not found"):
        rafdb(root)  # auto: neither layout is there
    with pytest.raises(ConfigError, match="RAF-DB root not found"):
        rafdb(tmp_path / "elsewhere")


@pytest.mark.parametrize("label", [0, 8])
def test_rafdb_label_outside_1_to_7(tmp_path, label):
    root = write_rafdb(tmp_path / "basic")
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    lines = label_file.read_text().splitlines()
    lines[2] = lines[2].split()[0] + f" {label}"
    label_file.write_text("\n".join(lines))
    with pytest.raises(ConfigError, match=f"list_patition_label.txt:3: label {label} of train_00003.jpg "
                                          "is outside 1-7 \\(1 = Surprise"):
        rafdb(root)


def test_rafdb_listed_image_missing(tmp_path):
    root = write_rafdb(tmp_path / "basic")
    (root / "Image" / "aligned" / "test_0002_aligned.jpg").unlink()
    with pytest.raises(ConfigError, match="1 listed image\\(s\\) not found, e.g. test_0002.jpg \\(line 12\\)"):
        rafdb(root)


def test_rafdb_original_images_are_read_by_their_listed_names(tmp_path):
    root = write_rafdb(tmp_path / "basic")
    with pytest.raises(ConfigError, match="17 listed image\\(s\\) not found, e.g. train_00001.jpg \\(line 1\\) → "
                                          ".*Image/original/train_00001.jpg"):
        rafdb(root, aligned=False)  # no Image/original/ folder at all
    (root / "Image" / "aligned").rename(root / "Image" / "original")
    for path in (root / "Image" / "original").iterdir():
        path.rename(path.with_name(path.name.replace("_aligned", "")))
    data = rafdb(root, aligned=False, augment=False)
    assert len(data.train) == 10 and len(data.val) == 7
    assert data.train.targets[:3] == [0, 1, 2]  # labels 1-3 in file order, as the aligned images give


def test_rafdb_empty_split(tmp_path):
    root = write_rafdb(tmp_path / "basic", test_labels=())
    with pytest.raises(ConfigError, match="the test split is empty"):
        rafdb(root)
    folders = tmp_path / "folders"
    (folders / "train" / "happy").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folders / "train" / "happy" / "a.jpg")
    (folders / "test" / "happy").mkdir(parents=True)
    with pytest.raises(ConfigError, match="test: the test split is empty"):
        rafdb(folders)


# --- Training through the one loop ------------------------------------------------------------------
def tiny_config(tmp_path, model: str, data: dict) -> object:
    return build_config({
        "experiment": "fer_test", "name": model, "runs_root": str(tmp_path / "runs"),
        "model": {"name": model, **TINY_MODEL}, "data": data,
        "train": {"epochs": 2, "batch_size": 8, "progress": False, "label_smoothing": 0.1},
        "optim": {"lr": 1e-3},
    })


@pytest.mark.parametrize("model", ["ir50_vit", "ir50_cls"])
@pytest.mark.parametrize("source", ["synthetic", "rafdb"])
def test_models_train_through_fit(tmp_path, model, source):
    if source == "synthetic":
        data = {"name": "synthetic_faces", "num_train": 16, "num_val": 14, "image_size": 32}
    else:
        data = {"name": "rafdb", "root": str(write_rafdb(tmp_path / "basic")), "image_size": 32}
    cfg = tiny_config(tmp_path, model, data)
    result = fit(cfg)
    run = result.run_dir
    assert result.summary["status"] == "completed"
    assert result.summary["steps"] == 4  # 2 epochs × ceil(16 or 10 / 8) batches
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(np.isfinite(float(r["train_loss"])) for r in rows)
    # Confusion matrix: classes in the fixed order, every validation image counted once.
    with open(run / "confusion_matrix.csv") as f:
        matrix = list(csv.reader(f))
    assert matrix[0] == ["true\\predicted", *CLASS_ORDER]
    assert [r[0] for r in matrix[1:]] == CLASS_ORDER
    n_val = 14 if source == "synthetic" else 7
    assert sum(int(v) for r in matrix[1:] for v in r[1:]) == n_val
    summary = json.loads((run / "summary.json").read_text())
    assert list(summary["per_class_acc"]) == CLASS_ORDER
    assert summary["data"]["dataset"] == ("synthetic_faces" if source == "synthetic" else "rafdb")
    # The checkpoint alone rebuilds the model, which reproduces the recorded accuracy.
    rebuilt, ckpt = model_from_checkpoint(run / "checkpoints" / "epoch_002.pt")
    assert ckpt["class_names"] == CLASS_ORDER and ckpt["model_kwargs"]["num_classes"] == 7
    data_splits = build_data(cfg.data)
    with torch.no_grad():
        batch = data_splits.collate([data_splits.val[i] for i in range(len(data_splits.val))])
        acc = (rebuilt(batch["image"]).argmax(1) == batch["target"]).float().mean().item()
    assert acc == pytest.approx(float(rows[-1]["val_acc"]))


def test_fer_params_files_validate_and_match_image_sizes():
    files = sorted((project_root() / "params" / "train").glob("fer_*.yaml"))
    assert len(files) >= 2
    for file in files:
        cfg = load_config(file)
        assert cfg.model["name"] in ("ir_vit", "ir_cls"), file
        assert "img_size" not in cfg.model, file  # the model's image size comes from the data


def test_vqalab_train_cli_with_a_fer_params_file(tmp_path, capsys):
    code = cli.main(["train", "params/train/fer_synthetic_vit.yaml", "--no-progress",
                     "--set", f"runs_root={tmp_path / 'runs'}", "--set", "data.num_train=14",
                     "--set", "data.num_val=7", "--set", "train.epochs=1", "--set", "train.batch_size=7",
                     "--set", "model.width=0.125", "--set", "data.image_size=32"])
    assert code == 0
    run_dir = capsys.readouterr().out.strip().splitlines()[-1]
    names = {p.name for p in (tmp_path / "runs").glob("*/*/*")}
    assert {"params.yaml", "metrics.csv", "summary.json", "confusion_matrix.csv", "checkpoints"} <= names
    assert run_dir.startswith(str(tmp_path / "runs"))


def test_the_models_image_size_comes_from_the_data(tmp_path):
    with pytest.raises(ConfigError, match=r"model.img_size: set from the data, remove it from the params"):
        build_config({"model": {"name": "ir50_vit", "img_size": 32}, "data": {"name": "synthetic_faces"}})
    cfg = build_config({"runs_root": str(tmp_path), "model": {"name": "ir50_cls", **TINY_MODEL},
                        "data": {"name": "synthetic_faces", "num_train": 14, "num_val": 7, "image_size": 48},
                        "train": {"epochs": 1, "batch_size": 7, "progress": False}})
    result = fit(cfg)
    model, ckpt = model_from_checkpoint(max((result.run_dir / "checkpoints").glob("*.pt")))
    assert ckpt["model_kwargs"]["img_size"] == 48 and model.img_size == 48  # built for the 48 px faces
