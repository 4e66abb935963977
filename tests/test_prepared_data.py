"""Prepared splits at scale: the fast VQA v2 path gives exactly the old answers, soft scores and
targets, the cached entry gives exactly the same splits, and a stale or damaged entry is rebuilt."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from test_vqa_v2 import FIXTURE_IMAGE_SIZE, write_vqa_v2_fixture

from data_fixtures import write_vqa_v2_stand_in
from vqalab.data import build_data, prepared, vqa_v2
from vqalab.metrics import clean_whitespace, normalize_answer
from vqalab.registry import ConfigError

MID_SCALE = 0.004  # ~1,800 train and ~860 val questions over ~500 images
FEATURES = {"train_features": "train2014_features", "val_features": "val2014_features"}


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VQALAB_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def mid_root(tmp_path_factory) -> Path:
    return write_vqa_v2_stand_in(tmp_path_factory.mktemp("mid") / "vqa_v2", scale=MID_SCALE, feature_dim=8)


def load(root: Path, **kwargs):
    spec = {"name": "vqa_v2", "root": str(root), "image_size": FIXTURE_IMAGE_SIZE}
    if (root / "train2014_features").is_dir():
        spec.update(FEATURES)
    return build_data({**spec, **kwargs})


# --- The old code path, written out: every answer normalised each time it is compared ------------

def reference_accuracy(prediction: str, answers: list[str]) -> float:
    human = [clean_whitespace(a) for a in answers]
    pred = clean_whitespace(prediction)
    if len(set(human)) > 1:
        human = [normalize_answer(a) for a in human]
        pred = normalize_answer(pred)
    matches = sum(a == pred for a in human)
    per_subset = [min(1.0, (matches - (a == pred)) / 3) for a in human]
    return sum(per_subset) / len(per_subset)


def reference_splits(data, root: Path, top_k: int | None = 3000) -> dict:
    """Answer vocabulary from the training file's human answers, then per kept question its soft scores."""
    annotations = json.loads((root / "v2_mscoco_train2014_annotations.json").read_text())["annotations"]
    counts = Counter(normalize_answer(a["answer"]) for ann in annotations for a in ann["answers"])
    counts.pop("", None)
    vocab = sorted(counts, key=lambda a: (-counts[a], a))[:top_k]  # top_k None: all
    index = {a: i for i, a in enumerate(vocab)}
    out = {"vocab": vocab}
    for split in ("train", "val"):
        scores = []
        for answers in getattr(data, split).answers:
            candidates = {normalize_answer(a) for a in answers} | {clean_whitespace(a) for a in answers}
            s = {index[c]: reference_accuracy(c, answers) for c in candidates if c in index}
            scores.append({i: v for i, v in s.items() if v > 0})
        out[split] = scores
    return out


def assert_same_splits(a, b) -> None:
    assert a.class_names == b.class_names and a.vocab == b.vocab and a.model_kwargs == b.model_kwargs
    cache_only = ("prepared_from_cache", "feature_tables")
    assert {k: v for k, v in a.info.items() if k not in cache_only} == \
        {k: v for k, v in b.info.items() if k not in cache_only}
    for split in ("train", "val"):
        x, y = getattr(a, split), getattr(b, split)
        assert len(x) == len(y) and x.targets == y.targets and x.image_ids == y.image_ids
        assert x.question_ids == y.question_ids and list(x.questions) == list(y.questions)
        assert list(x.answers) == list(y.answers)
        assert list(x.answer_types) == list(y.answer_types) and list(x.question_types) == list(y.question_types)
        for name in vqa_v2.SPLIT_ARRAYS:
            assert np.array_equal(x.arrays[name], y.arrays[name]) and x.arrays[name].dtype == y.arrays[name].dtype, name
        for i in range(0, len(x), max(1, len(x) // 50)):
            assert torch.equal(x.item_without_image(i)["soft_target"], y.item_without_image(i)["soft_target"])
        if a.info["features"]:  # read file by file or gathered from a feature table: the same batches
            batch = list(range(0, len(x), max(1, len(x) // 64)))
            for p, q in zip(x.__getitems__(batch), y.__getitems__(batch)):
                assert torch.equal(p["image"], q["image"]) and p["image"].shape == q["image"].shape


def test_fast_path_gives_the_old_formulas_soft_scores_and_targets_exactly(mid_root):
    data = load(mid_root, use_cache=False)
    assert len(data.train) > 1700 and len(data.val) > 800
    reference = reference_splits(data, mid_root)
    assert data.class_names == reference["vocab"]
    assert len({a for answers in data.train.answers for a in answers}) > 500  # many distinct strings
    for split in ("train", "val"):
        ds = getattr(data, split)
        for i in range(len(ds)):
            assert ds.scores_of(i) == reference[split][i], (split, i)  # == on floats: bit for bit
            soft = ds.item_without_image(i)["soft_target"]
            expected = torch.zeros(len(data.class_names))
            for k, v in reference[split][i].items():
                expected[k] = v
            assert torch.equal(soft, expected)
        # The target is the best score; ties go to the multiple-choice answer (the stand-in's first
        # answer as given), then the more frequent answer. Checked on the best score's value here.
        assert all(ds.scores_of(i)[t] == max(reference[split][i].values()) for i, t in enumerate(ds.targets))


@pytest.mark.parametrize("where", ["fixture", "mid"])
def test_prepared_splits_are_identical_with_and_without_the_cache(where, tmp_path, mid_root):
    root = write_vqa_v2_fixture(tmp_path / "vqa_v2") if where == "fixture" else mid_root
    fresh = load(root, use_cache=False)
    stored = load(root)  # prepares and stores the entry
    cached = load(root)  # reads it back
    assert not fresh.info["prepared_from_cache"] and not stored.info["prepared_from_cache"]
    assert cached.info["prepared_from_cache"]
    assert_same_splits(fresh, stored)
    assert_same_splits(fresh, cached)
    assert len(list((tmp_path / "cache" / "prepared").iterdir())) == 1
    # Other arguments give other prepared splits, in their own entry.
    smaller = load(root, answer_top_k=2)
    assert not smaller.info["prepared_from_cache"] and smaller.class_names == fresh.class_names[:2]
    assert load(root, answer_top_k=2).info["prepared_from_cache"]


def test_a_changed_json_file_rebuilds_the_entry(tmp_path):
    root = write_vqa_v2_fixture(tmp_path / "vqa_v2")
    before = load(root).class_names
    assert "crimson" not in before
    path = root / "v2_mscoco_train2014_annotations.json"
    path.write_text(path.read_text().replace('"red"', '"crimson"'))
    changed = load(root)
    assert not changed.info["prepared_from_cache"]
    assert "crimson" in changed.class_names and changed.class_names != before
    assert_same_splits(changed, load(root, use_cache=False))
    assert load(root).info["prepared_from_cache"]


def test_changed_preparing_code_rebuilds_the_entry(tmp_path, monkeypatch):
    root = write_vqa_v2_fixture(tmp_path / "vqa_v2")
    first = load(root)
    assert load(root).info["prepared_from_cache"]
    monkeypatch.setattr(vqa_v2, "PREPARED_VERSION", vqa_v2.PREPARED_VERSION + 1)
    assert not load(root).info["prepared_from_cache"]
    assert load(root).info["prepared_from_cache"]
    monkeypatch.setattr(vqa_v2, "preparing_code", lambda: "another digest")
    rebuilt = load(root)
    assert not rebuilt.info["prepared_from_cache"]
    assert_same_splits(first, rebuilt)


def entry_of(tmp_path: Path) -> Path:
    (entry,) = (tmp_path / "cache" / "prepared").iterdir()
    return entry


@pytest.mark.parametrize("damage", ["truncated", "garbage", "changed_array", "pickled_array"])
def test_a_damaged_entry_is_ignored_and_rebuilt(tmp_path, damage, caplog):
    root = write_vqa_v2_fixture(tmp_path / "vqa_v2")
    good = load(root)
    entry = entry_of(tmp_path)
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    elif damage == "garbage":
        raw = bytearray(entry.read_bytes())
        raw[len(raw) // 2: len(raw) // 2 + 64] = b"\xff" * 64
        entry.write_bytes(bytes(raw))
    else:
        with np.load(entry) as f:
            arrays = {name: f[name] for name in f.files}
        if damage == "changed_array":  # a valid file whose stored checksum no longer matches
            arrays["train/targets"] = arrays["train/targets"][::-1].copy()
        else:  # an object array: reading it would need pickle, which is never allowed
            arrays["train/targets"] = np.array([{"x": 1}], dtype=object)
        np.savez(entry, **arrays)
    rebuilt = load(root)
    assert not rebuilt.info["prepared_from_cache"]
    assert "rebuilding" in caplog.text
    assert_same_splits(good, rebuilt)
    assert load(root).info["prepared_from_cache"]  # the rebuilt entry is good again


def test_entry_arrays_round_trip_strings_and_ragged_rows(tmp_path):
    path = tmp_path / "entry.npz"
    rows = [[3, 1], [], [7, 7, 7]]
    ragged = prepared.Ragged.from_lists(rows)
    strings = ["yes", "", "Two dogs!", "ünïcode"]
    key = {"dataset": "x", "files": [[str(path), 1, 2]]}
    prepared.store_entry(path, key, {"flat": ragged.flat, "offsets": ragged.offsets,
                                     "strings": prepared.strings_array(strings)})
    arrays = prepared.load_entry(path, key)
    assert list(prepared.Ragged(arrays["flat"], arrays["offsets"])) == rows
    assert prepared.strings_of(arrays["strings"]) == strings
    assert prepared.load_entry(path, {**key, "files": [[str(path), 1, 3]]}) is None  # another file date


# --- GQA: the same prepared-splits cache -----------------------------------------------------------

def gqa_fixture(tmp_path: Path) -> Path:
    from test_gqa import QUESTIONS, SCENE_GRAPHS, write_regions

    root = tmp_path / "gqa"
    (root / "features").mkdir(parents=True)
    for split in ("train", "val"):
        (root / f"{split}_balanced_questions.json").write_text(json.dumps(QUESTIONS[split]))
        (root / f"{split}_sceneGraphs.json").write_text(json.dumps(SCENE_GRAPHS[split]))
    for seed, (image_id, k, w, h) in enumerate([("100", 5, 200, 100), ("101", 2, 100, 100), ("200", 4, 100, 50)]):
        write_regions(root / "features", image_id, k, w, h, seed)
    return root


def assert_same_gqa(a, b) -> None:
    assert a.class_names == b.class_names and a.vocab == b.vocab and a.model_kwargs == b.model_kwargs
    for split in ("train", "val"):
        x, y = getattr(a, split), getattr(b, split)
        assert x.targets == y.targets and x.image_ids == y.image_ids and x.question_ids == y.question_ids
        assert list(x.questions) == list(y.questions) and list(x.answers) == list(y.answers)
        assert list(x.structural_types) == list(y.structural_types) and x.image_names == y.image_names
        for i in range(len(x)):
            p, q = x[i], y[i]
            for name in ("graph", "image", "boxes"):
                if name == "graph" and name in q:
                    assert all(torch.equal(p[name][k], q[name][k]) for k in q[name])
                elif name in q:
                    assert torch.equal(p[name], q[name])


@pytest.mark.parametrize("inputs", ["scene_graph", "regions"])
def test_gqa_splits_are_identical_with_and_without_the_cache(tmp_path, inputs):
    from vqalab.data.gqa import graph_nodes
    from vqalab.data.graphs import encode_graph
    from vqalab.text import Vocabulary

    root = gqa_fixture(tmp_path)
    spec = {"name": "gqa", "root": str(root), "inputs": inputs, "features": "features", "max_boxes": 4}
    fresh = build_data({**spec, "use_cache": False})
    stored, cached = build_data(spec), build_data(spec)
    assert not stored.info["prepared_from_cache"] and cached.info["prepared_from_cache"]
    assert_same_gqa(fresh, stored)
    assert_same_gqa(fresh, cached)
    if inputs == "scene_graph":  # the packed graphs read back as encode_graph's tensors
        graphs = json.loads((root / "train_sceneGraphs.json").read_text())
        train = cached.train
        for i in range(len(train)):
            name = train.image_names[train.image_ids[i]]
            expected = encode_graph(graph_nodes(root, name, graphs[name], 4), Vocabulary(cached.vocab))
            assert all(torch.equal(train[i]["graph"][k], v) and train[i]["graph"][k].dtype == v.dtype
                       for k, v in expected.items())
    else:  # a region file removed after caching is still named
        (root / "features" / "101.npz").unlink()
        with pytest.raises(ConfigError, match=r"question t3: image 101 has no region file"):
            build_data(spec)


def test_gqa_entry_is_rebuilt_when_a_question_file_changes(tmp_path):
    root = gqa_fixture(tmp_path)
    spec = {"name": "gqa", "root": str(root)}
    assert build_data(spec).class_names == ["yes", "brown", "no", "white"]
    path = root / "train_balanced_questions.json"
    path.write_text(path.read_text().replace('"brown"', '"beige"'))
    changed = build_data(spec)
    assert not changed.info["prepared_from_cache"] and "beige" in changed.class_names
    assert build_data(spec).info["prepared_from_cache"]


# Answer lists where the metric's details matter: whitespace, all-equal before or after cleaning,
# punctuation and numbers, contractions, articles, empty answers, and not always ten annotators.
TRICKY_ANSWERS = [
    ["yes"] * 10, ["Yes"] * 10, ["yes"] * 9 + ["yes "], [" yes\t"] * 10, ["yes\n"] * 5 + ["Yes!"] * 5,
    ["two"] * 4 + ["2"] * 3 + ["Two."] * 3, ["1,000"] * 3 + ["1000"] * 3 + ["1.000"] * 4, ["2.5"] * 6 + ["2.5."] * 4,
    ["dont"] * 5 + ["don't"] * 5, ["the dog"] * 3 + ["a dog"] * 3 + ["dog"] * 2 + ["dogs"] * 2, ["the"] * 10,
    ["", "a", "an", "the", "", "x", "x", "x", "y", "y"], ["red"] * 9, ["red", "Red", "RED"] * 4, ["no"],
    ["a/b"] * 5 + ["a b"] * 5, ["(left)"] * 10, ["left side"] * 3 + ["left"] * 7, ["none"] * 5 + ["0"] * 5, [],
]


def write_tricky_vqa(root: Path) -> Path:
    root.mkdir(parents=True)
    for split, offset in (("train", 0), ("val", 1)):
        features = root / f"{split}2014_features"
        features.mkdir()
        questions, annotations = [], []
        for k, answers in enumerate(TRICKY_ANSWERS[offset:] + TRICKY_ANSWERS[:offset]):
            image_id = 10 + k
            np.save(features / f"COCO_{split}2014_{image_id:012d}.npy", np.zeros(4, np.float32))
            questions.append({"image_id": image_id, "question": f"What is {k}?", "question_id": k})
            annotations.append({"image_id": image_id, "question_id": k, "multiple_choice_answer": (answers or [""])[-1],
                                "answer_type": "other", "question_type": "what is",
                                "answers": [{"answer": a, "answer_id": j + 1} for j, a in enumerate(answers)]})
        (root / f"v2_OpenEnded_mscoco_{split}2014_questions.json").write_text(json.dumps({"questions": questions}))
        (root / f"v2_mscoco_{split}2014_annotations.json").write_text(json.dumps({"annotations": annotations}))
    return root


def test_fast_path_matches_the_metric_on_tricky_answers(tmp_path):
    from vqalab.data.vqa_v2 import best_answer

    root = write_tricky_vqa(tmp_path / "vqa_v2")
    data = load(root, use_cache=False, answer_top_k=None)
    reference = reference_splits(data, root, top_k=None)
    assert data.class_names == reference["vocab"]
    index = {a: i for i, a in enumerate(data.class_names)}
    for split in ("train", "val"):
        ds = getattr(data, split)
        assert len(ds) + data.info[f"{split}_dropped_no_vocab_answer"] == len(TRICKY_ANSWERS)
        for i in range(len(ds)):
            assert ds.scores_of(i) == reference[split][i], ds.answers[i]
            preferred = index.get(normalize_answer(ds.answers[i][-1] if ds.answers[i] else ""))
            assert ds.targets[i] == best_answer(reference[split][i], preferred)


def test_a_batch_holds_exactly_the_items_one_by_one(mid_root):
    data = load(mid_root, use_cache=False)
    ds = data.train
    indices = [5, 0, 17, 5, len(ds) - 1]  # a repeat and both ends
    batch = ds.__getitems__(indices)
    for index, item in zip(indices, batch):
        expected = torch.zeros(len(data.class_names))
        for k, v in ds.scores_of(index).items():
            expected[k] = v
        assert torch.equal(item["soft_target"], expected)
        assert item["question"] == ds.questions[index] and item["target"] == ds.targets[index]
        assert torch.equal(item["image"], ds[index]["image"])
    collated = data.collate(batch)
    assert torch.equal(collated["soft_target"][1], batch[1]["soft_target"])
    assert collated["question_len"].tolist() == [len(ds.questions[i]) for i in indices]


# --- Feature tables: the feature files of a split as one array in the cache -----------------------

def table_folders(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "cache" / "features").iterdir() if not p.name.startswith("."))


def test_feature_files_are_read_from_one_table_that_matches_them(tmp_path, mid_root):
    fresh = load(mid_root, use_cache=False)
    tabled = load(mid_root)
    assert fresh.info["feature_tables"] == {} and tabled.info["feature_tables"] == {"train": True, "val": True}
    assert len(table_folders(tmp_path)) == 2 and tabled.train.table.shape[1:] == (8, 1, 1)
    assert_same_splits(fresh, tabled)
    image_id = tabled.val.image_ids[0]
    expected = np.load(mid_root / "val2014_features" / tabled.val.files[image_id].name)
    assert torch.equal(tabled.val.load_image(image_id), torch.from_numpy(expected.astype(np.float32))[:, None, None])
    again = load(mid_root)
    assert len(table_folders(tmp_path)) == 2 and np.array_equal(again.train.table, tabled.train.table)


def test_a_changed_feature_file_rebuilds_the_table_and_a_damaged_table_is_rebuilt(tmp_path):
    root = write_vqa_v2_stand_in(tmp_path / "vqa_v2", scale=0.0005, feature_dim=4)
    first = load(root)
    image_id = first.train.image_ids[0]
    path = first.train.files[image_id]
    np.save(path, np.full(4, 7.0, dtype=np.float32))  # a recomputed feature: new bytes, size and date
    changed = load(root)
    assert torch.equal(changed.train.load_image(image_id), torch.full((4, 1, 1), 7.0))
    assert torch.equal(changed.train.__getitems__([0])[0]["image"], torch.full((4, 1, 1), 7.0))
    for folder in table_folders(tmp_path):  # cut every table short: unreadable, so never trusted
        data_file = folder / "features.npy"
        data_file.write_bytes(data_file.read_bytes()[:100])
    rebuilt = load(root)
    assert rebuilt.info["feature_tables"] == {"train": True, "val": True}
    assert torch.equal(rebuilt.train.load_image(image_id), torch.full((4, 1, 1), 7.0))


def test_feature_files_of_another_layout_are_read_one_by_one_and_bad_values_are_named(tmp_path):
    root = write_vqa_v2_stand_in(tmp_path / "vqa_v2", scale=0.0005, feature_dim=4)
    probe = load(root, use_cache=False)
    odd = probe.train.files[probe.train.image_ids[-1]]
    np.save(odd, np.ones(4, dtype=np.float64))  # another dtype: another header
    mixed = load(root)
    assert mixed.info["feature_tables"]["train"] is False and mixed.train.table is None
    assert torch.equal(mixed.train.load_image(probe.train.image_ids[-1]), torch.ones(4, 1, 1))
    bad = probe.val.files[probe.val.image_ids[-1]]
    np.save(bad, np.array([0.0, np.nan, 0.0, 0.0], dtype=np.float32))
    with pytest.raises(ConfigError, match=f"{bad.name}.*non-finite"):
        load(root)


@pytest.mark.parametrize("shape, fortran", [((6,), False), ((3, 5), False), ((3, 5), True), ((4, 2, 3), True)])
def test_a_table_filled_in_chunks_holds_each_files_features_as_loaded_one_by_one(tmp_path, shape, fortran):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(7):
        values = rng.standard_normal(shape).astype(np.float32)
        paths.append(tmp_path / f"COCO_val2014_{i:012d}.npy")
        np.save(paths[-1], np.asfortranarray(values) if fortran else values)
    expected = torch.stack([vqa_v2.load_features(p) for p in paths]).numpy()
    values = vqa_v2.read_npy(paths[0])
    size = paths[0].stat().st_size
    header = paths[0].read_bytes()[:size - values.nbytes]
    table = np.zeros_like(expected)
    vqa_v2.fill_feature_table(table, paths, header, size, chunk=3)  # chunks of 3, 3 and 1 files
    assert np.array_equal(table, expected)
