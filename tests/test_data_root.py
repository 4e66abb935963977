"""One data root for local data sets and weights, `vqalab data`, and the tiny lab-data fixtures."""

import numpy as np
import pytest

from data_fixtures import (
    RAFDB_DIR,
    VQA_V2_DIR,
    write_rafdb_imagefolder,
    write_rafdb_official,
    write_vqa_v2,
)
from vqalab.cli import main
from vqalab.data import DATASETS, build_data, data_status
from vqalab.paths import data_root, project_root, resolve_data
from vqalab.registry import ConfigError


@pytest.fixture
def lab_data(tmp_path, monkeypatch):
    """An empty data root in $VQALAB_DATA and a private cache."""
    root = tmp_path / "lab-data"
    root.mkdir()
    monkeypatch.setenv("VQALAB_DATA", str(root))
    monkeypatch.setenv("VQALAB_CACHE", str(tmp_path / "cache"))
    return root


def test_data_root_is_the_environment_variable_else_data_under_the_project(lab_data, monkeypatch):
    assert data_root() == lab_data
    assert resolve_data("weights/ir50.pth") == lab_data / "weights" / "ir50.pth"
    assert resolve_data("/abs/file.pth").as_posix() == "/abs/file.pth"
    monkeypatch.delenv("VQALAB_DATA")
    assert data_root() == project_root() / "data"


def test_loaders_default_roots_come_from_the_data_root(lab_data):
    with pytest.raises(ConfigError, match=str(lab_data / RAFDB_DIR)):
        build_data({"name": "rafdb"})
    with pytest.raises(ConfigError, match=str(lab_data / VQA_V2_DIR)):
        build_data({"name": "vqa_v2"})
    write_rafdb_official(lab_data / RAFDB_DIR)
    data = build_data({"name": "rafdb", "image_size": 32})
    assert data.info["root"] == str(lab_data / RAFDB_DIR) and len(data.train) == 28


def test_missing_data_sets_name_the_path_and_the_official_files(lab_data):
    rafdb = data_status("rafdb")
    assert not rafdb.found and rafdb.where == str(lab_data / RAFDB_DIR)
    assert "EmoLabel/list_patition_label.txt" in rafdb.expected and "Image/aligned/" in rafdb.expected
    vqa = data_status("vqa_v2")
    assert not vqa.found and vqa.where == str(lab_data / VQA_V2_DIR)
    for name in ("v2_OpenEnded_mscoco_train2014_questions.json", "v2_mscoco_val2014_annotations.json",
                 "train2014/", "val2014/"):
        assert name in vqa.expected
    write_vqa_v2(lab_data / VQA_V2_DIR)
    (lab_data / VQA_V2_DIR / "v2_mscoco_val2014_annotations.json").unlink()
    vqa = data_status("vqa_v2")
    assert not vqa.found and vqa.expected.startswith("missing v2_mscoco_val2014_annotations.json (")


def test_found_data_sets_report_counts_and_a_fingerprint_that_follows_the_files(lab_data):
    write_rafdb_official(lab_data / RAFDB_DIR, train_per_class=3, test_per_class=2)
    write_vqa_v2(lab_data / VQA_V2_DIR, train_images=5, val_images=2)
    rafdb = data_status("rafdb")
    assert rafdb.found and rafdb.counts == {"train_images": 21, "test_images": 14, "classes": 7}
    assert rafdb.detail == "official layout"
    vqa = data_status("vqa_v2")
    assert vqa.found and vqa.counts["train_questions"] == 15 and vqa.counts["val_questions"] == 6
    assert vqa.counts["train_images"] == 5 and vqa.counts["val_images"] == 2
    loaded = build_data({"name": "vqa_v2", "image_size": 32})
    assert vqa.counts["answers"] == len(loaded.class_names)  # every normalised training answer kept
    assert data_status("vqa_v2").fingerprint == vqa.fingerprint  # the second call reads the cached counts
    before = rafdb.fingerprint
    image = next((lab_data / RAFDB_DIR / "Image" / "aligned").glob("test_*.jpg"))
    image.write_bytes(image.read_bytes() + b"\0")  # same name, new content
    assert data_status("rafdb").fingerprint != before
    identity = data_status("rafdb").identity()
    assert set(identity) == {"name", "root", "counts", "fingerprint"} and identity["name"] == "rafdb"


def test_vqalab_data_lists_every_data_set_and_require_exits_1_when_missing(lab_data, capsys):
    assert main(["data"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"data root: {lab_data} (set VQALAB_DATA to change it)"
    assert [line.split()[0] for line in lines[1:]] == DATASETS.names()
    assert f"rafdb            missing  {lab_data / RAFDB_DIR}: not found" in out
    assert main(["data", "--require", "synthetic_faces"]) == 0
    assert main(["data", "--require", "rafdb"]) == 1
    assert "required but missing: rafdb" in capsys.readouterr().err
    assert main(["data", "--require", "rafdbb"]) == 2  # a typo is a usage error, not a missing data set
    write_rafdb_imagefolder(lab_data / RAFDB_DIR)
    assert main(["data", "--require", "rafdb"]) == 0
    assert "rafdb            found    " in capsys.readouterr().out


def nearest_centroid_accuracy(data) -> float:
    train = data.train.images.float().flatten(1)
    centroids = np.stack([train[np.array(data.train.targets) == k].mean(0).numpy() for k in range(7)])
    val = data.val.images.float().flatten(1).numpy()
    predicted = ((val[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((predicted == np.array(data.val.targets)).mean())


@pytest.mark.parametrize("writer, layout", [(write_rafdb_official, "official"), (write_rafdb_imagefolder, "imagefolder")])
def test_rafdb_fixtures_in_both_layouts_are_balanced_and_learnable(lab_data, writer, layout):
    writer(lab_data / RAFDB_DIR)
    data = build_data({"name": "rafdb", "image_size": 32, "augment": False, "use_cache": False})
    assert data.info["layout"] == layout
    assert data.info["train_class_counts"] == [4] * 7 and data.info["val_class_counts"] == [2] * 7
    assert nearest_centroid_accuracy(data) == 1.0  # each expression is a distinct pattern


def test_vqa_v2_fixture_has_every_answer_type_and_answers_that_follow_the_image(lab_data):
    write_vqa_v2(lab_data / VQA_V2_DIR)
    data = build_data({"name": "vqa_v2", "image_size": 32})
    assert set(data.train.answer_types) == {"yes/no", "number", "other"}
    assert len(data.train) == 36 and len(data.val) == 18
    assert all(name.startswith("COCO_train2014_") for name in
               (p.name for p in (lab_data / VQA_V2_DIR / "train2014").iterdir()))
    for i in range(0, len(data.train), 3):  # colour, count, yes/no of one image
        count = data.class_names[data.train.targets[i + 1]]
        yes_no = data.class_names[data.train.targets[i + 2]]
        assert yes_no == ("yes" if count != "0" else "no")
        assert data.class_names[data.train.targets[i]] in ("red", "green", "blue")


def test_frozen_features_status_is_its_source_and_its_weights_file(lab_data):
    spec = {"name": "frozen_features", "source": {"name": "vqa_v2"}, "weights": "weights/resnet18.pth"}
    assert not data_status(spec).found and data_status(spec).where == str(lab_data / VQA_V2_DIR)
    write_vqa_v2(lab_data / VQA_V2_DIR, train_images=2, val_images=1)
    status = data_status(spec)
    assert not status.found and status.where == str(lab_data / "weights" / "resnet18.pth")
    (lab_data / "weights").mkdir()
    (lab_data / "weights" / "resnet18.pth").write_bytes(b"weights")
    status = data_status(spec)
    assert status.found and status.counts == data_status("vqa_v2").counts
    assert status.fingerprint != data_status("vqa_v2").fingerprint  # the encoder is part of what the data are


def test_every_registered_data_set_has_a_status_check_and_a_family():
    from vqalab.data import FAMILIES, STATUS_CHECKS

    assert set(STATUS_CHECKS) == set(DATASETS.names()) == set(FAMILIES)
    assert {FAMILIES["rafdb"], FAMILIES["vqa_v2"]} == {"faces", "vqa"}
    assert FAMILIES["synthetic_faces"] == FAMILIES["rafdb"] and FAMILIES["easy_vqa"] == FAMILIES["vqa_v2"]


def test_vqalab_data_on_a_fresh_clone_without_a_data_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("VQALAB_DATA", str(tmp_path / "not-there"))
    assert main(["data"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == len(DATASETS.names())
    assert {line.split()[0]: line.split()[1] for line in lines}["rafdb"] == "missing"
