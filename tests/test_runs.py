"""A run folder's files and contents, folder uniqueness, and checkpoints that rebuild their model."""

import csv
import json
import math
import os
import subprocess

import pytest
import torch
import yaml

from vqalab import runs
from vqalab.config import build_config
from vqalab.data import build_data
from vqalab.models import create_model
from vqalab.registry import ConfigError
from vqalab.runs import load_checkpoint, model_from_checkpoint, new_run_dir
from vqalab.train import fit

DATA = {"name": "easy_vqa", "max_train_samples": 256, "max_val_samples": 64}


def tiny_config(tmp_path, **train):
    return build_config({
        "experiment": "unit", "name": "tiny", "seed": 7, "runs_root": str(tmp_path / "runs"),
        "model": {"name": "vqa_mean_mlp", "cnn_channels": [4, 8, 8], "embed_dim": 8, "hidden_dim": 16},
        "data": DATA, "train": {"epochs": 2, "batch_size": 64, "progress": False, **train},
    })


@pytest.fixture(scope="module")
def data():
    return build_data(DATA)


def test_model1_forward_backward_shapes_and_gradients(data):
    model = create_model("vqa_mean_mlp", cnn_channels=(4, 8, 8), **data.model_kwargs)
    batch = data.collate([data.train[i] for i in range(5)])
    logits = model(**{k: batch[k] for k in data.input_keys})
    assert logits.shape == (5, 13) and torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_image_deduplication_gives_the_same_logits(data):
    model = create_model("vqa_mean_mlp", cnn_channels=(4, 8, 8), **data.model_kwargs).eval()
    ids = data.train.image_ids
    shared = [i for i in range(len(ids)) if ids.count(ids[i]) > 1][:12]  # questions sharing an image
    batch = data.collate([data.train[i] for i in shared])
    assert len(batch["image_id"].unique()) < len(shared)
    with torch.no_grad():
        deduped = model(batch["image"], batch["question"], batch["question_len"], batch["image_id"])
        plain = model(batch["image"], batch["question"], batch["question_len"])
    torch.testing.assert_close(deduped, plain)


def test_run_folder_holds_params_metrics_summary_and_checkpoints(tmp_path, data):
    result = fit(tiny_config(tmp_path), data=data)
    run = result.run_dir
    assert run.parent == tmp_path / "runs" / "unit" and run.name.endswith("-tiny")
    params = yaml.safe_load((run / "params.yaml").read_text())
    assert params["seed"] == 7 and params["model"]["cnn_channels"] == [4, 8, 8]
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) >= {"epoch", "train_loss", "val_loss", "val_acc", "epoch_time_s", "samples_per_s"}
    assert all(0 <= float(r["val_acc"]) <= 1 for r in rows)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["seed"] == 7 and summary["epochs"] == 2
    assert summary["best_val_acc"] == max(float(r["val_acc"]) for r in rows)
    assert summary["best_epoch"] == int(max(rows, key=lambda r: float(r["val_acc"]))["epoch"])
    assert summary["device"] == "cpu" and summary["torch"] == torch.__version__
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_001.pt", "epoch_002.pt"]
    matrix = list(csv.reader((run / "confusion_matrix.csv").read_text().splitlines()))
    assert len(matrix) == 14 and sum(int(x) for r in matrix[1:] for x in r[1:]) == len(data.val)
    # the best epoch's answer per validation question: its accuracy is the recorded best val_acc
    predicted = runs.read_predictions(run)
    truth = [data.class_names[t] for t in data.val.targets]
    assert len(predicted) == len(data.val) and set(predicted) <= set(data.class_names)
    assert sum(p == t for p, t in zip(predicted, truth)) / len(truth) == pytest.approx(summary["best_val_acc"])


def test_two_runs_never_share_a_folder(tmp_path):
    first = new_run_dir(tmp_path, "exp", "same")
    second = new_run_dir(tmp_path, "exp", "same")  # same second, same name
    assert first != second and first.is_dir() and second.is_dir()


def test_reloaded_checkpoint_rebuilds_the_model_and_predicts_identically(tmp_path, data):
    result = fit(tiny_config(tmp_path, epochs=1), data=data)
    checkpoint = result.run_dir / "checkpoints" / "epoch_001.pt"
    payload = load_checkpoint(checkpoint)  # weights_only=True: no pickled code
    assert payload["model_name"] == "vqa_mean_mlp" and payload["class_names"] == data.class_names
    model, _ = model_from_checkpoint(checkpoint)
    batch = data.collate([data.val[i] for i in range(16)])
    inputs = {k: batch[k] for k in data.input_keys}
    trained = create_model("vqa_mean_mlp", **payload["model_kwargs"])
    trained.load_state_dict(payload["model_state"])
    trained.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs), trained(**inputs), rtol=0, atol=0)
    # and the reloaded model reproduces the accuracy recorded for that epoch
    with torch.no_grad():
        all_batch = data.collate([data.val[i] for i in range(len(data.val))])
        preds = model(**{k: all_batch[k] for k in data.input_keys}).argmax(1)
    acc = (preds == all_batch["target"]).float().mean().item()
    assert acc == pytest.approx(payload["metrics"]["val_acc"])


def test_same_seed_repeats_exactly(tmp_path, data):
    a = fit(tiny_config(tmp_path, epochs=1), data=data)
    b = fit(tiny_config(tmp_path, epochs=1), data=data)
    sa = load_checkpoint(a.run_dir / "checkpoints" / "epoch_001.pt")["model_state"]
    sb = load_checkpoint(b.run_dir / "checkpoints" / "epoch_001.pt")["model_state"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_metrics_rows_round_trip_exactly(tmp_path):
    history = [{c: 0.1 * (i + 1) for c in runs.METRIC_COLUMNS} | {"epoch": i + 1, "step": 3 * (i + 1)} for i in range(2)]
    history[1]["peak_memory_mb"] = math.nan
    path = tmp_path / runs.METRICS_FILE
    runs.write_metrics(path, history[:1])
    runs.append_metrics(path, history[1])
    rows = runs.read_metrics_rows(path)
    assert [type(r["epoch"]) for r in rows] == [int, int] and rows[1]["step"] == 6
    assert rows[0] == history[0] and rows[1]["train_loss"] == history[1]["train_loss"]  # floats exact
    assert math.isnan(rows[1]["peak_memory_mb"])


def test_predictions_file_round_trips_and_damage_is_named(tmp_path):
    runs.write_predictions(tmp_path, ["no", "yes, surely"], torch.tensor([1, 0, 1], dtype=torch.int32))
    assert runs.read_predictions(tmp_path) == ["yes, surely", "no", "yes, surely"]  # a comma is quoted
    path = tmp_path / runs.PREDICTIONS_FILE
    path.write_text("index,predicted\n0,no\n2,yes\n")
    with pytest.raises(ConfigError, match=r"val_predictions.csv: line 3: .*expected index 1"):
        runs.read_predictions(tmp_path)
    path.write_text("question,answer\n")
    with pytest.raises(ConfigError, match="expected index,predicted"):
        runs.read_predictions(tmp_path)
    with pytest.raises(ConfigError, match="val_predictions.csv is missing"):
        runs.read_predictions(tmp_path / "elsewhere")


def test_confusion_matrix_file_and_per_class_accuracy(tmp_path):
    matrix = runs.confusion_matrix(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 1]), 4)
    assert matrix.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    runs.write_confusion(tmp_path, ["a", "b", "c", "d"], matrix)
    assert list(csv.reader((tmp_path / runs.CONFUSION_FILE).read_text().splitlines())) == [
        ["true\\predicted", "a", "b", "c", "d"], ["a", "1", "1", "0", "0"], ["b", "0", "1", "0", "0"],
        ["c", "0", "1", "0", "0"], ["d", "0", "0", "0", "0"]]
    recall = runs.per_class_accuracy(matrix, ["a", "b", "c", "d"])
    assert recall["a"] == 0.5 and recall["b"] == 1.0 and recall["c"] == 0.0 and math.isnan(recall["d"])


def test_environment_names_device_versions_and_commit(tmp_path, repo_root):
    env = runs.environment(torch.device("cpu"), root=tmp_path)  # not a git repository
    assert env["device"] == "cpu" and env["gpu"] is None and env["torch"] == torch.__version__
    assert env["cpu_cores"] == os.cpu_count() and env["cpu"]
    assert env["git_commit"] is None and env["git_dirty"] is False
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
                          cwd=repo_root).stdout.strip()
    assert runs.environment(torch.device("cpu"), root=repo_root)["git_commit"] == head
    assert runs.environment()["device"] == "cpu"  # auto: $VQALAB_DEVICE, which the suite sets to cpu


def test_new_folder_adds_a_suffix_when_taken(tmp_path):
    first, second = runs.new_folder(tmp_path / "p", "stem"), runs.new_folder(tmp_path / "p", "stem")
    assert (first.name, second.name) == ("stem", "stem-1")
