"""GQA: the official files (a tiny set written in a temp dir), scene graphs, region features, errors
and the exact-match accuracy per structural type."""

import json

import numpy as np
import pytest
import torch

from vqalab.config import build_config, load_config
from vqalab.data import build_data
from vqalab.metrics import gqa_accuracy
from vqalab.registry import ConfigError
from vqalab.train import fit

FEATURE_DIM = 6

SCENE_GRAPHS = {
    "train": {
        "100": {"width": 200, "height": 100, "objects": {
            "1": {"name": "dog", "x": 10, "y": 20, "w": 50, "h": 40, "attributes": ["brown", "small"],
                  "relations": [{"name": "to the left of", "object": "2"}]},
            "2": {"name": "tennis racket", "x": 100, "y": 10, "w": 30, "h": 60, "attributes": [],
                  "relations": [{"name": "to the right of", "object": "1"}, {"name": "near", "object": "3"}]},
            "3": {"name": "table", "x": 0, "y": 50, "w": 200, "h": 50, "attributes": ["wooden"],
                  "relations": [{"name": "near", "object": "2"}]}}},
        "101": {"width": 100, "height": 100, "objects": {
            "7": {"name": "cat", "x": 0, "y": 0, "w": 50, "h": 50, "attributes": ["white"], "relations": []}}},
    },
    "val": {
        "200": {"width": 100, "height": 50, "objects": {
            "4": {"name": "dog", "x": 0, "y": 0, "w": 10, "h": 10, "attributes": ["black"],
                  "relations": [{"name": "near", "object": "5"}]},
            "5": {"name": "cat", "x": 20, "y": 0, "w": 10, "h": 10, "attributes": [], "relations": []}}},
    },
}


def question(image, text, answer, structural):
    return {"imageId": image, "question": text, "answer": answer, "fullAnswer": f"It is {answer}.",
            "isBalanced": True, "types": {"structural": structural, "semantic": "attr", "detailed": "x"}}


QUESTIONS = {
    "train": {
        "t1": question("100", "Is the dog to the left of the tennis racket?", "yes", "verify"),
        "t2": question("100", "What color is the dog on the left side of the picture near the wooden table?", "brown", "query"),
        "t3": question("101", "Is the cat white or black?", "white", "choose"),
        "t4": question("101", "Is there a cat and a dog?", "no", "logical"),
        "t5": question("100", "Are the dog and the table the same color?", "yes", "compare"),
    },
    "val": {
        "v1": question("200", "Is the dog near the cat?", "yes", "verify"),
        "v2": question("200", "What color is the dog?", "black", "query"),  # not a training answer
        "v3": question("200", "Is the cat white?", "no", "verify"),
    },
}


def write_regions(folder, image_id, k, width, height, seed):
    rng = np.random.default_rng(seed)
    boxes = np.array([[0, 0, width / 2, height / 2]] * k, np.float32)
    np.savez(folder / f"{image_id}.npz", features=rng.normal(size=(k, FEATURE_DIM)).astype(np.float32),
             boxes=boxes, image_w=width, image_h=height)


@pytest.fixture
def gqa_root(tmp_path):
    for split in ("train", "val"):
        (tmp_path / f"{split}_balanced_questions.json").write_text(json.dumps(QUESTIONS[split]))
        (tmp_path / f"{split}_sceneGraphs.json").write_text(json.dumps(SCENE_GRAPHS[split]))
    (tmp_path / "features").mkdir()
    for seed, (image_id, k, w, h) in enumerate([("100", 5, 200, 100), ("101", 2, 100, 100), ("200", 4, 100, 50)]):
        write_regions(tmp_path / "features", image_id, k, w, h, seed)
    return tmp_path


def test_scene_graph_inputs_follow_the_official_files(gqa_root):
    data = build_data({"name": "gqa", "root": str(gqa_root), "question_len": 6})
    train = data.train
    assert train.question_ids == ["t1", "t2", "t3", "t4", "t5"]
    assert data.class_names == ["yes", "brown", "no", "white"]  # by count, then alphabetical
    assert [data.class_names[t] for t in train.targets] == ["yes", "brown", "white", "no", "yes"]
    assert train.structural_types == ["verify", "query", "choose", "logical", "compare"]
    assert max(len(q) for q in train.questions) == 6  # truncated to question_len
    vocab = {t: i for i, t in enumerate(data.vocab)}
    assert "tennis racket" in vocab and "to the left of" in vocab and vocab["dog"] < len(data.vocab)
    graph = train[0]["graph"]
    assert graph["names"].tolist() == [vocab["dog"], vocab["tennis racket"], vocab["table"]]
    assert graph["attrs"][0].tolist() == [vocab["brown"], vocab["small"]]
    assert torch.allclose(graph["boxes"][0], torch.tensor([10 / 200, 20 / 100, 60 / 200, 60 / 100]))
    assert sorted(graph["edges"].tolist()) == sorted([[0, 1, vocab["to the left of"]], [1, 0, vocab["to the right of"]],
                                                      [1, 2, vocab["near"]], [2, 1, vocab["near"]]])
    # v2's answer "black" is not a training answer: left out and recorded.
    assert data.val.question_ids == ["v1", "v3"]
    assert data.info["val_kept_fraction"] == pytest.approx(2 / 3)
    batch = data.collate([train[i] for i in range(3)])
    assert batch["node_mask"].sum(dim=1).tolist() == [3, 3, 1]


def test_max_boxes_keeps_the_first_objects_and_their_relations(gqa_root):
    data = build_data({"name": "gqa", "root": str(gqa_root), "max_boxes": 2})
    vocab = {t: i for i, t in enumerate(data.vocab)}
    graph = data.train[0]["graph"]
    assert len(graph["names"]) == 2
    assert sorted(graph["edges"].tolist()) == [[0, 1, vocab["to the left of"]], [1, 0, vocab["to the right of"]]]


def test_region_inputs_are_features_and_normalised_boxes_padded_to_max_boxes(gqa_root):
    data = build_data({"name": "gqa", "root": str(gqa_root), "inputs": "regions", "features": "features",
                       "max_boxes": 4})
    assert data.model_kwargs["image_dim"] == FEATURE_DIM + 4
    image = data.train[0]["image"]  # image 100: 5 regions, the first 4 kept
    assert image.shape == (FEATURE_DIM + 4, 4, 1)
    stored = np.load(gqa_root / "features" / "100.npz")
    assert torch.allclose(image[:FEATURE_DIM, :, 0].t(), torch.from_numpy(stored["features"][:4]))
    assert torch.allclose(image[FEATURE_DIM:, 0, 0], torch.tensor([0.0, 0.0, 0.5, 0.5]))
    small = data.train[2]["image"]  # image 101: 2 regions, then zero columns
    assert small[:, 2:].abs().sum() == 0 and small[:, :2].abs().sum() > 0
    # The boxes also travel on their own, for BAN's counting module.
    assert "boxes" in data.input_keys
    batch = data.collate([data.train[0], data.train[2]])
    assert batch["boxes"].shape == (2, 4, 4)
    assert torch.allclose(batch["boxes"][0, 0], torch.tensor([0.0, 0.0, 0.5, 0.5]))
    assert batch["boxes"][1, 2:].abs().sum() == 0
    with pytest.raises(ConfigError, match="inputs = 'regions' needs features"):
        build_data({"name": "gqa", "root": str(gqa_root), "inputs": "regions"})


def rewrite(path, change):
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def test_malformed_entries_name_the_file_and_the_question(gqa_root):
    questions = gqa_root / "train_balanced_questions.json"
    rewrite(questions, lambda c: c["t3"].pop("answer"))
    with pytest.raises(ConfigError, match=r"train_balanced_questions.json: question t3: 'answer' missing"):
        build_data({"name": "gqa", "root": str(gqa_root)})
    rewrite(questions, lambda c: c.update(t3={**QUESTIONS["train"]["t3"], "imageId": "999"}))
    with pytest.raises(ConfigError, match=r"question t3: image 999 has no scene graph in .*train_sceneGraphs.json"):
        build_data({"name": "gqa", "root": str(gqa_root)})
    with pytest.raises(ConfigError, match=r"question t3: image 999 has no region file .*999.npz"):
        build_data({"name": "gqa", "root": str(gqa_root), "inputs": "regions", "features": "features"})
    (gqa_root / "val_balanced_questions.json").write_text("{not json")
    rewrite(questions, lambda c: c.update(t3=QUESTIONS["train"]["t3"]))
    with pytest.raises(ConfigError, match=r"val_balanced_questions.json: not valid JSON"):
        build_data({"name": "gqa", "root": str(gqa_root)})


def test_malformed_scene_graph_objects_name_the_image_and_object(gqa_root):
    graphs = gqa_root / "train_sceneGraphs.json"
    rewrite(graphs, lambda c: c["100"]["objects"]["2"]["relations"].append({"name": "on", "object": "42"}))
    with pytest.raises(ConfigError, match=r"train_sceneGraphs.json: image 100, object 2: relation .* of this image"):
        build_data({"name": "gqa", "root": str(gqa_root)})
    rewrite(graphs, lambda c: c["100"]["objects"]["2"].pop("w"))
    with pytest.raises(ConfigError, match=r"image 100, object 2: w missing or of the wrong type"):
        build_data({"name": "gqa", "root": str(gqa_root)})
    graphs.write_text(json.dumps(SCENE_GRAPHS["train"]))
    with pytest.raises(ConfigError, match="gqa: scene graphs file not found: .*missing.json"):
        build_data({"name": "gqa", "root": str(gqa_root), "val_scene_graphs": "missing.json"})


def test_gqa_accuracy_per_structural_type_matches_a_brute_force_count():
    rng = np.random.default_rng(0)
    vocab = ["yes", "no", "red", "left", "dog"]
    answers = rng.choice(vocab, 200).tolist()
    predictions = [a if rng.random() < 0.6 else rng.choice(vocab) for a in answers]
    types = rng.choice(["verify", "query", "choose", "logical", "compare"], 200).tolist()
    summary = gqa_accuracy(predictions, answers, types)
    assert summary["count"] == 200
    assert summary["overall"] == pytest.approx(np.mean([p == a for p, a in zip(predictions, answers)]))
    for kind in ("verify", "query", "choose", "logical", "compare"):
        hits = total = 0
        for p, a, t in zip(predictions, answers, types):
            if t == kind:
                total += 1
                hits += p == a
        assert summary["per_structural_type"][kind] == pytest.approx(hits / total)
    assert gqa_accuracy(["Yes"], ["yes"])["overall"] == 0.0  # exact match, no normalisation
    with pytest.raises(ValueError, match="2 predictions for 1 questions"):
        gqa_accuracy(["a", "b"], ["a"])


@pytest.mark.parametrize("model, data", [
    ({"name": "vqa_subgraph", "embed_dim": 8, "general_hidden_dim": 8, "mgat_layers": 1, "num_heads": 2}, {}),
    ({"name": "vqa_aoa", "hidden_dim": 8, "aoa_layers": 1, "num_heads": 2}, {"inputs": "regions", "features": "features"}),
    ({"name": "vqa_ban", "hidden_dim": 8, "glimpses": 2, "use_counter": True},
     {"inputs": "regions", "features": "features", "max_boxes": 4}),
    ({"name": "vqa_subgraph", "embed_dim": 8, "general_hidden_dim": 8, "mgat_layers": 1, "num_heads": 2},
     {"inputs": "regions", "features": "features", "max_boxes": 4}),
])
def test_models_train_on_the_gqa_fixture(gqa_root, tmp_path, model, data):
    cfg = build_config({"experiment": "gqa", "runs_root": str(tmp_path / "runs"), "model": model,
                        "data": {"name": "gqa", "root": str(gqa_root), **data},
                        "train": {"epochs": 2, "batch_size": 2, "progress": False}})
    summary = fit(cfg).summary
    assert summary["status"] == "completed", summary.get("error")
    assert summary["data"]["val_questions"] == 2 and 0.0 <= summary["best_val_acc"] <= 1.0


PRESETS = ["gqa_subgraph.yaml", "gqa_subgraph_8gb.yaml", "gqa_subgraph_24gb.yaml", "gqa_aoa.yaml", "vqa_v2_aoa.yaml",
           "vqa_v2_subgraph.yaml", "scenes_subgraph.yaml"]


@pytest.mark.parametrize("file", PRESETS)
def test_lab_note_001_presets_validate(repo_root, file):
    cfg = load_config(repo_root / "params" / "train" / file)
    assert cfg.model["name"] in ("vqa_subgraph", "vqa_aoa")
    if cfg.data["name"] == "gqa":
        assert cfg.data["question_len"] == 12 and cfg.data["max_boxes"] == 50  # lab note 001's data values
        assert cfg.train.clip_norm == 0.25 and cfg.seed == 1204
    # The guide's GPU-size presets: batch, accumulation, precision and memory share.
    gpu_size = {"gqa_subgraph_8gb.yaml": (16, 4, "fp16", 0.7), "gqa_subgraph_24gb.yaml": (48, 1, "off", 0.9)}
    if file in gpu_size:
        train = cfg.train
        assert (train.batch_size, train.grad_accum_steps, train.amp, train.max_memory_fraction) == gpu_size[file]
