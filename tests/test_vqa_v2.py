"""VQA v2 loader on a tiny fixture written in the official layout (JSON files + COCO-named JPEGs)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqalab.config import build_config
from vqalab.data import build_data, vqa_v2
from vqalab.data.vqa_v2 import best_answer, build_answer_vocab, soft_scores
from vqalab.metrics import vqa_accuracy, vqa_summary
from vqalab.models import MODELS
from vqalab.registry import ConfigError
from vqalab.train import fit

FIXTURE_IMAGE_SIZE = 32

# (question, 10 human answers, answer_type, question_type) per image; a few answers differ only
# in the ways the official normalisation removes ("Two", "2", "yes!").
QUESTIONS = [
    ("What color is the square?", ["red"] * 7 + ["Red"] * 2 + ["orange"], "other", "what color is the"),
    ("How many circles are there?", ["2"] * 5 + ["two"] * 3 + ["3"] * 2, "number", "how many"),
    ("Is there a circle?", ["yes"] * 8 + ["yes!"] + ["no"], "yes/no", "is there a"),
]
SPLITS = {"train": [9, 25, 30, 42], "val": [133, 164]}


def write_vqa_v2_fixture(root: Path, image_size: int = FIXTURE_IMAGE_SIZE) -> Path:
    """A VQA v2 folder in the official layout: 4 train and 2 val images, 3 questions per image.

    The last val question has ten identical answers "Yes" (capitalised): its only in-vocabulary
    candidate "yes" scores 0 under the official metric, so the loader leaves it out.
    """
    rng = np.random.default_rng(0)
    for split, image_ids in SPLITS.items():
        folder = root / f"{split}2014"
        folder.mkdir(parents=True, exist_ok=True)
        questions, annotations = [], []
        for image_id in image_ids:
            pixels = rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"COCO_{split}2014_{image_id:012d}.jpg")
            for k, (text, answers, answer_type, question_type) in enumerate(QUESTIONS):
                qid = image_id * 1000 + k
                questions.append({"image_id": image_id, "question": text, "question_id": qid})
                annotations.append({
                    "question_id": qid, "image_id": image_id, "question_type": question_type,
                    "answer_type": answer_type, "multiple_choice_answer": answers[0],
                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1}
                                for i, a in enumerate(answers)],
                })
        if split == "val":
            annotations[-1]["answers"] = [{"answer": "Yes", "answer_confidence": "yes", "answer_id": i + 1}
                                          for i in range(10)]
        (root / f"v2_OpenEnded_mscoco_{split}2014_questions.json").write_text(json.dumps(
            {"task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": f"{split}2014", "questions": questions}))
        (root / f"v2_mscoco_{split}2014_annotations.json").write_text(json.dumps(
            {"data_type": "mscoco", "data_subtype": f"{split}2014", "annotations": annotations}))
    return root


@pytest.fixture
def vqa_root(tmp_path) -> Path:
    return write_vqa_v2_fixture(tmp_path / "vqa_v2")


def load(root: Path, **kwargs):
    return build_data({"name": "vqa_v2", "root": str(root), "image_size": FIXTURE_IMAGE_SIZE, **kwargs})


def test_answer_vocab_counts_normalised_answers_with_top_k_and_min_count():
    answers = [["Two", "2", "2", "the dog", "dog"], ["yes", "Yes!", "no", "a"]]
    # normalised: 2 ×3, dog ×2, yes ×2, no ×1; "a" normalises to "" and is never kept.
    assert build_answer_vocab(answers, top_k=None, min_count=1) == ["2", "dog", "yes", "no"]
    assert build_answer_vocab(answers, top_k=2, min_count=1) == ["2", "dog"]
    assert build_answer_vocab(answers, top_k=None, min_count=2) == ["2", "dog", "yes"]


def test_soft_scores_are_the_official_accuracy_of_each_vocabulary_answer():
    index = {"2": 0, "3": 1, "red": 2, "yes": 3}
    answers = ["2"] * 2 + ["two"] * 2 + ["3"] * 3 + ["4"] * 3
    scores = soft_scores(answers, index)
    # "2" and "two" normalise alike: 4 matches → 1.0; "3": 3 matches → 0.9; "4" is not in the vocabulary.
    assert scores == pytest.approx({0: 1.0, 1: 0.9})
    assert scores[0] == vqa_accuracy("2", answers)
    assert soft_scores(["red"] + ["blue"] * 9, index) == pytest.approx({2: 0.3})
    # Ten identical answers are not normalised by the metric: "yes" cannot match "Yes".
    assert soft_scores(["Yes"] * 10, index) == {}
    assert soft_scores(["yes"] * 10, index) == {3: 1.0}
    # Ties go to the multiple-choice answer, then to the more frequent (lower index) answer.
    assert best_answer({1: 0.6, 2: 0.6}, preferred=2) == 2
    assert best_answer({1: 0.6, 2: 0.6}, preferred=None) == 1


def test_loader_reads_the_official_layout(vqa_root):
    data = load(vqa_root)
    assert data.class_names[:3] == ["red", "yes", "2"]  # most frequent normalised answers first
    assert data.model_kwargs == {"vocab_size": len(data.vocab), "num_answers": len(data.class_names)}
    assert len(data.train) == 12
    assert len(data.val) == 5 and data.info["val_dropped_no_vocab_answer"] == 1
    assert data.info["val_kept_fraction"] == pytest.approx(5 / 6)
    assert data.train_groups == data.train.image_ids

    item = data.train[1]  # image 9, "How many circles are there?"
    assert item["image"].shape == (3, FIXTURE_IMAGE_SIZE, FIXTURE_IMAGE_SIZE)
    assert item["image_id"] == 9
    soft = item["soft_target"]
    assert soft.shape == (len(data.class_names),)
    two, three = data.class_names.index("2"), data.class_names.index("3")
    assert soft[two] == pytest.approx(1.0) and soft[three] == pytest.approx(0.6)
    assert soft.sum() == pytest.approx(1.6)
    assert item["target"] == two == data.train.targets[1]
    assert data.train.answers[1] == QUESTIONS[1][1] and data.train.answer_types[1] == "number"

    batch = data.collate([data.train[i] for i in range(4)])
    assert batch["image"].shape == (4, 3, FIXTURE_IMAGE_SIZE, FIXTURE_IMAGE_SIZE)
    assert batch["soft_target"].shape == (4, len(data.class_names))
    assert batch["question"].shape[0] == 4 and (batch["question_len"] > 0).all()


def test_image_pixels_are_resized_and_normalised(vqa_root):
    data = load(vqa_root, image_size=16)
    image = data.val[0]["image"]
    raw = Image.open(vqa_root / "val2014" / "COCO_val2014_000000000133.jpg").convert("RGB").resize((16, 16), Image.BILINEAR)
    expected = (torch.from_numpy(np.asarray(raw).copy()).permute(2, 0, 1).float() / 255 - data.val.mean) / data.val.std
    assert image.shape == (3, 16, 16)
    assert torch.allclose(image, expected)


def test_summary_per_answer_type_from_the_loader(vqa_root):
    data = load(vqa_root)
    predictions = [data.class_names[t] for t in data.val.targets]  # always the best answer
    summary = vqa_summary(predictions, data.val.answers, data.val.answer_types)
    # red: 9 of 10 say it → 1.0; "2"/"two": 8 → 1.0; yes: 9 → 1.0.
    assert summary["overall"] == pytest.approx(1.0)
    assert summary["per_answer_type"] == pytest.approx({"number": 1.0, "other": 1.0, "yes/no": 1.0})


def test_question_truncation_and_answer_limits(vqa_root):
    data = load(vqa_root, max_question_len=2, answer_top_k=2)
    assert all(len(q) <= 2 for q in data.train.questions)
    assert data.class_names == ["red", "yes"]
    assert len(data.train) == 8  # the "how many" questions have no answer left in the vocabulary
    assert data.info["train_dropped_no_vocab_answer"] == 4


def test_missing_file_names_the_file(vqa_root):
    (vqa_root / "v2_mscoco_val2014_annotations.json").unlink()
    with pytest.raises(ConfigError, match="annotations file not found: .*v2_mscoco_val2014_annotations.json"):
        load(vqa_root)
    with pytest.raises(ConfigError, match="image folder not found: .*nowhere"):
        load(vqa_root, train_images="nowhere")


def test_bad_json_names_the_file(vqa_root):
    (vqa_root / "v2_OpenEnded_mscoco_train2014_questions.json").write_text("{not json")
    with pytest.raises(ConfigError, match="v2_OpenEnded_mscoco_train2014_questions.json: not valid JSON"):
        load(vqa_root)
    (vqa_root / "v2_OpenEnded_mscoco_train2014_questions.json").write_text(json.dumps({"items": []}))
    with pytest.raises(ConfigError, match="expected a JSON object with a 'questions' list"):
        load(vqa_root)


def test_image_id_without_image_names_the_id_and_the_expected_file(vqa_root):
    (vqa_root / "train2014" / "COCO_train2014_000000000042.jpg").unlink()
    with pytest.raises(ConfigError, match=r"image_id 42 \(question_id 42000\) has no image in .*train2014 "
                                          r"\(expected COCO_train2014_000000000042.jpg\)"):
        load(vqa_root)


def test_precomputed_feature_files_replace_the_images(vqa_root):
    rng = np.random.default_rng(1)
    for split, ids in SPLITS.items():
        folder = vqa_root / f"features_{split}"
        folder.mkdir()
        for image_id in ids:
            np.save(folder / f"COCO_{split}2014_{image_id:012d}.npy", rng.normal(size=(5, 8)).astype(np.float32))
    data = load(vqa_root, train_features="features_train", val_features="features_val")
    assert data.model_kwargs["image_dim"] == 8
    item = data.train[0]
    stored = np.load(vqa_root / "features_train" / "COCO_train2014_000000000009.npy")
    assert item["image"].shape == (8, 5, 1)  # (K, D) regions → (D, K, 1)
    assert torch.allclose(item["image"][:, :, 0], torch.from_numpy(stored).t())
    with pytest.raises(ConfigError, match="give both or neither"):
        load(vqa_root, train_features="features_train")


def write_region_files(vqa_root: Path) -> None:
    """One bottom-up-attention .npz per image: 3 regions of 6 features in a 640×480 image."""
    rng = np.random.default_rng(2)
    for split, ids in SPLITS.items():
        folder = vqa_root / f"regions_{split}"
        folder.mkdir()
        for image_id in ids:
            boxes = np.array([[0, 0, 320, 240], [160, 120, 640, 480], [0, 0, 64, 48]], np.float32)
            np.savez(folder / f"COCO_{split}2014_{image_id:012d}.npz", features=rng.normal(size=(3, 6)).astype(np.float32),
                     boxes=boxes, image_w=640, image_h=480)


def test_bottom_up_region_files_give_features_and_normalised_boxes(vqa_root):
    write_region_files(vqa_root)
    data = load(vqa_root, train_features="regions_train", val_features="regions_val")
    assert data.model_kwargs["image_dim"] == 6 + 4
    item = data.train[0]  # (D + 4, K, 1): features, then the box as fractions of the image
    stored = np.load(vqa_root / "regions_train" / "COCO_train2014_000000000009.npz")
    assert item["image"].shape == (10, 3, 1)
    assert torch.allclose(item["image"][:6, :, 0], torch.from_numpy(stored["features"]).t())
    assert torch.allclose(item["image"][6:, 1, 0], torch.tensor([0.25, 0.25, 1.0, 1.0]))
    assert "boxes" in data.input_keys and torch.equal(item["boxes"], item["image"][6:, :, 0].t())
    assert data.collate([item, data.train[1]])["boxes"].shape == (2, 3, 4)
    np.savez(vqa_root / "regions_train" / "COCO_train2014_000000000009.npz", features=np.zeros((3, 6)))
    with pytest.raises(ConfigError, match=r"COCO_train2014_000000000009.npz: missing array 'boxes'"):
        load(vqa_root, train_features="regions_train", val_features="regions_val").train[0]


# Image VQA models (scene-graph and question-only models: tests/test_vqa_graph.py).
VQA_MODELS = [n for n in MODELS.names() if {"vocab_size", "num_answers", "image_encoder"} <= set(MODELS.parameters(n))]


@pytest.mark.parametrize("name", VQA_MODELS)
def test_every_model_trains_on_the_fixture_with_soft_scores(vqa_root, tmp_path, name):
    data = load(vqa_root)
    cfg = build_config({
        "experiment": "fixture", "name": name, "runs_root": str(tmp_path / "runs"),
        "model": {"name": name, "cnn_channels": [8, 8, 16]}, "data": {"name": "vqa_v2", "root": str(vqa_root)},
        "train": {"epochs": 1, "batch_size": 4, "loss": "bce", "progress": False},
    })
    result = fit(cfg, data=data)
    summary = result.summary
    assert summary["status"] == "completed", summary.get("error")
    assert summary["epochs"] == 1 and 0.0 <= summary["best_val_acc"] <= 1.0
    assert np.isfinite(summary["first_train_loss"]) and np.isfinite(summary["best_val_loss"])


@pytest.mark.parametrize("model", [
    {"name": "vqa_subgraph", "embed_dim": 8, "general_hidden_dim": 8, "mgat_layers": 2, "num_heads": 2},
    {"name": "vqa_ban", "hidden_dim": 8, "use_counter": True},
])
def test_region_models_train_on_vqa_v2_region_files(vqa_root, tmp_path, model):
    write_region_files(vqa_root)
    cfg = build_config({"experiment": "regions", "runs_root": str(tmp_path / "runs"), "model": model,
                        "data": {"name": "vqa_v2", "root": str(vqa_root), "train_features": "regions_train",
                                 "val_features": "regions_val"},
                        "train": {"epochs": 2, "batch_size": 4, "loss": "bce", "progress": False}})
    summary = fit(cfg).summary
    assert summary["status"] == "completed", summary.get("error")
    assert summary["best_train_loss"] < summary["first_train_loss"]


@pytest.mark.parametrize("array", [np.arange(7, dtype=np.float32), np.arange(12, dtype=np.float16).reshape(3, 4),
                                   np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))])
def test_read_npy_gives_what_np_load_gives(tmp_path, array):
    for name in ("a.npy", "b.npy"):  # the second file reuses the parsed header
        np.save(tmp_path / name, array)
        read = vqa_v2.read_npy(tmp_path / name)
        assert read.dtype == array.dtype and read.shape == array.shape and np.array_equal(read, np.load(tmp_path / name))
        assert read.flags.writeable


def test_read_npy_refuses_truncated_and_object_files(tmp_path):
    np.save(tmp_path / "full.npy", np.arange(8, dtype=np.float32))
    (tmp_path / "short.npy").write_bytes((tmp_path / "full.npy").read_bytes()[:-4])
    with pytest.raises(ValueError, match=r"short\.npy: 28 data bytes, expected 32"):
        vqa_v2.read_npy(tmp_path / "short.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="objects.npy: holds Python objects"):
        vqa_v2.read_npy(tmp_path / "objects.npy")
    (tmp_path / "text.npy").write_text("not numpy")
    with pytest.raises(ValueError, match="text.npy: not a .npy file"):
        vqa_v2.read_npy(tmp_path / "text.npy")
