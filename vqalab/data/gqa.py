"""GQA (Hudson & Manning 2019) from its official files: balanced questions with scene graphs and/or
region features.

Layout under ``root`` (file and folder names are arguments; these are the official ones)::

    train_balanced_questions.json   {"<question id>": {"imageId": str, "question": str, "answer": str,
                                      "types": {"structural": "verify|query|choose|logical|compare", …}, …}, …}
    val_balanced_questions.json     the same (testdev_balanced_questions.json too)
    train_sceneGraphs.json          {"<image id>": {"width": int, "height": int, "objects": {"<object id>":
                                      {"name": str, "x": int, "y": int, "w": int, "h": int,
                                       "attributes": [str], "relations": [{"name": str, "object": "<object id>"}]}}}}
    val_sceneGraphs.json            the same (there are none for testdev)
    features/<image id>.npz         region features, one file per image (``features`` argument):
                                      features (K, D) float, boxes (K, 4) float pixels x1, y1, x2, y2,
                                      image_w, image_h (scalars): the bottom-up-attention fields

Inputs (``inputs``): ``scene_graph`` gives each question its image's scene graph
(``vqalab.data.graphs``; the first ``max_boxes`` objects in file order, relations between them),
for ``vqa_subgraph``; ``regions`` gives the region features as a (D + 4, max_boxes, 1) map: each
region's features followed by its box as fractions of the image (x1, y1, x2, y2), the first
``max_boxes`` regions, zero columns after the last one, for ``vqa_aoa`` and the image VQA models
(``image_dim`` is set from the files). Questions are truncated to ``question_len`` tokens.

Answers: the vocabulary is the training answers (``answer_top_k`` most frequent, given at least
``answer_min_count`` times); accuracy is exact match (``vqalab.metrics.gqa_accuracy``). Validation
questions whose answer is not in the vocabulary cannot be answered right and are left out;
``info["val_kept_fraction"]`` says how many were kept, so the accuracy over all validation
questions is ``val_acc × val_kept_fraction``. Each split keeps per question ``question_ids``,
``structural_types`` and ``answers`` for ``gqa_accuracy``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

import vqalab.data as data_package
import vqalab.data.graphs as graphs_module
import vqalab.text as text_module
from vqalab.data import (
    SUBSET_SEED,
    DataSplits,
    DataStatus,
    fixed_subset,
    prepared,
    register_dataset,
    register_status,
    short_hash,
)
from vqalab.data.graphs import GRAPH_INPUT_KEYS, collate_graph_vqa, vocabulary_with_labels
from vqalab.data.prepared import (
    Coded,
    Ragged,
    StringTable,
    code_digest,
    file_fingerprint,
    load_entry,
    paused_gc,
    store_entry,
    strings_array,
    strings_of,
)
from vqalab.data.prepared import entry_path as prepared_entry_path
from vqalab.data.regions import REGION_INPUT_KEYS, boxes_of, read_regions
from vqalab.data.vqa_batch import collate_vqa
from vqalab.io import load_large_json
from vqalab.paths import resolve_data
from vqalab.registry import ConfigError
from vqalab.text import UNK, Vocabulary

log = logging.getLogger(__name__)

OBJECT_KEYS = {"name": str, "x": (int, float), "y": (int, float), "w": (int, float), "h": (int, float)}


def read_json_object(path: Path, what: str) -> dict:
    """A JSON file holding one object (id → entry); errors name the file."""
    if not path.is_file():
        raise ConfigError(f"gqa: {what} file not found: {path}")
    try:
        content = load_large_json(path)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"gqa: {path}: not valid JSON: {err}") from None
    if not isinstance(content, dict):
        raise ConfigError(f"gqa: {path}: expected a JSON object of id → entry (the official {what} layout)")
    return content


def load_questions(path: Path) -> list[dict]:
    """Questions in file order, each ``{question_id, image_id, question, answer, structural}``."""
    records = []
    for qid, q in read_json_object(path, "questions").items():
        where = f"gqa: {path}: question {qid}"
        if not isinstance(q, dict):
            raise ConfigError(f"{where}: expected an object, got {type(q).__name__}")
        for key in ("imageId", "question", "answer"):
            if not isinstance(q.get(key), str):
                raise ConfigError(f"{where}: '{key}' missing or not a string (got {q.get(key)!r})")
        types = q.get("types", {})
        if not isinstance(types, dict) or not isinstance(types.get("structural", ""), str):
            raise ConfigError(f"{where}: 'types' must be an object with a string 'structural' (got {types!r})")
        records.append({"question_id": qid, "image_id": q["imageId"], "question": q["question"],
                        "answer": q["answer"], "structural": types.get("structural", "")})
    return records


def graph_nodes(path: Path, image_id: str, graph: dict, max_boxes: int) -> list[dict]:
    """The first ``max_boxes`` objects of one image's scene graph as ``encode_graph`` nodes."""
    where = f"gqa: {path}: image {image_id}"
    if not isinstance(graph, dict) or not isinstance(graph.get("objects"), dict):
        raise ConfigError(f"{where}: expected an object with an 'objects' object")
    width, height = graph.get("width"), graph.get("height")
    if not (isinstance(width, (int, float)) and isinstance(height, (int, float)) and width > 0 and height > 0):
        raise ConfigError(f"{where}: 'width' and 'height' must be positive numbers (got {width!r}, {height!r})")
    objects = graph["objects"]
    for oid, o in objects.items():
        bad = [k for k, kind in OBJECT_KEYS.items() if not isinstance(o.get(k) if isinstance(o, dict) else None, kind)]
        if bad:
            raise ConfigError(f"{where}, object {oid}: {', '.join(bad)} missing or of the wrong type")
        for rel in o.get("relations", []):
            if not isinstance(rel, dict) or rel.get("object") not in objects or not isinstance(rel.get("name"), str):
                raise ConfigError(f"{where}, object {oid}: relation {rel!r} needs a 'name' and an 'object' "
                                  f"of this image")
    kept = list(objects)[:max_boxes]
    index = {oid: i for i, oid in enumerate(kept)}
    nodes = []
    for oid in kept:
        o = objects[oid]
        nodes.append({"name": o["name"], "attributes": [str(a) for a in o.get("attributes", [])],
                      "box": (o["x"] / width, o["y"] / height, (o["x"] + o["w"]) / width, (o["y"] + o["h"]) / height),
                      "relations": [(r["name"], index[r["object"]]) for r in o.get("relations", [])
                                    if r["object"] in index]})
    return nodes


def load_regions(path: Path, max_boxes: int) -> torch.Tensor:
    """A region feature file as a (D + 4, max_boxes, 1) map (see the module docstring)."""
    regions = read_regions(path)[:max_boxes]  # (K, D + 4)
    padded = np.zeros((max_boxes, regions.shape[1]), np.float32)
    padded[: len(regions)] = regions
    return torch.from_numpy(padded).t()[:, :, None].contiguous()  # (D + 4, max_boxes, 1)


def pack_graphs(graphs: list[list[dict]], vocab) -> dict[str, np.ndarray]:
    """``encode_graph`` of each graph (a list of ``graph_nodes`` nodes), all in flat arrays.

    Graph g's nodes are rows ``node_offsets[g]:node_offsets[g + 1]`` of ``names`` (int64) and
    ``boxes`` (float32, 4 columns); its attributes are ``attr_width[g]`` columns per node from
    ``attrs[attr_offsets[g]:]``; its edges rows ``edge_offsets[g]:edge_offsets[g + 1]`` of ``edges``
    ([src, dst, label], int64). ``GQASplit.graph`` turns them back into ``encode_graph``'s tensors.
    """
    unk = vocab.index[UNK]
    index = vocab.index
    names, boxes, attrs, edges = [], [], [], []
    node_counts, widths, edge_counts = [], [], []
    for objects in graphs:
        width = max([len(o["attributes"]) for o in objects] + [1])
        for i, o in enumerate(objects):
            names.append(index.get(o["name"], unk))
            boxes.append(o["box"])
            row = [index.get(a, unk) for a in o["attributes"]]
            attrs.extend(row + [0] * (width - len(row)))
            edges.extend((i, j, index.get(label, unk)) for label, j in o["relations"])
        node_counts.append(len(objects))
        widths.append(width)
        edge_counts.append(sum(len(o["relations"]) for o in objects))

    def offsets(counts) -> np.ndarray:
        out = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(np.asarray(counts, dtype=np.int64), out=out[1:])
        return out

    node_counts_array, widths_array = np.asarray(node_counts, dtype=np.int64), np.asarray(widths, dtype=np.int64)
    return {"graph_names": np.array(names, dtype=np.int64),
            "graph_boxes": np.array(boxes, dtype=np.float32).reshape(len(names), 4),
            "graph_attrs": np.array(attrs, dtype=np.int64), "graph_attr_width": widths_array,
            "graph_attr_offsets": offsets(node_counts_array * widths_array),
            "graph_node_offsets": offsets(node_counts),
            "graph_edges": np.array(edges, dtype=np.int64).reshape(len(edges), 3),
            "graph_edge_offsets": offsets(edge_counts)}


class GQASplit(Dataset):
    """One split. Items: question token ids, image_id (an index: ``image_names[image_id]`` is GQA's
    id), target answer index, and ``graph`` (inputs scene_graph) or ``image`` and ``boxes`` (inputs regions).
    Per question, in item order: ``targets``, ``image_ids``, ``question_ids``, ``structural_types``,
    ``answers``. The questions and graphs are held as flat arrays (``pack_graphs``, ``prepared.Ragged``)."""

    def __init__(self, *, arrays: dict[str, np.ndarray], strings: list[str], feature_files: dict[str, Path] | None,
                 max_boxes: int):
        self.arrays, self.max_boxes = arrays, max_boxes
        self.questions = Ragged(arrays["tokens"], arrays["token_offsets"])
        self.targets = arrays["targets"].tolist()
        self.image_names = strings_of(arrays["image_names"])
        self.image_ids = arrays["image_index"].tolist()
        self.question_ids = strings_of(arrays["question_ids"])
        self.structural_types = Coded(arrays["structural"], strings)
        self.answers = Coded(arrays["answers"], strings)
        self.feature_files = feature_files

    def __len__(self) -> int:
        return len(self.targets)

    def graph(self, image: int) -> dict:
        """The scene graph of image ``image`` (an index) as ``encode_graph`` gives it."""
        a = self.arrays
        start, end = a["graph_node_offsets"][image:image + 2]
        width, attrs_start = int(a["graph_attr_width"][image]), a["graph_attr_offsets"][image]
        edges_start, edges_end = a["graph_edge_offsets"][image:image + 2]
        return {"names": torch.from_numpy(a["graph_names"][start:end]),
                "attrs": torch.from_numpy(a["graph_attrs"][attrs_start:attrs_start + (end - start) * width]
                                          .reshape(end - start, width)),
                "boxes": torch.from_numpy(a["graph_boxes"][start:end]),
                "edges": torch.from_numpy(a["graph_edges"][edges_start:edges_end])}

    def __getitem__(self, index: int) -> dict:
        image = self.image_ids[index]
        item = {"question": self.questions[index], "image_id": image, "target": self.targets[index]}
        if self.feature_files is None:
            item["graph"] = self.graph(image)
        else:
            item["image"] = load_regions(self.feature_files[self.image_names[image]], self.max_boxes)
            item["boxes"] = boxes_of(item["image"])
        return item


# What the prepared arrays depend on besides the files and the arguments (see vqa_v2.PREPARED_VERSION).
PREPARED_VERSION = 1


def preparing_code() -> str:
    return code_digest(__file__, graphs_module.__file__, text_module.__file__, data_package.__file__, prepared.__file__)


def first_of_each(values: list[str], ids: list[str]) -> tuple[list[str], list[str]]:
    """The distinct ``values`` in order of first appearance, and the id where each first appears."""
    first: dict[str, str] = {}
    for value, ident in zip(values, ids):
        first.setdefault(value, ident)
    return list(first), list(first.values())


def check_region_files(folder: Path, q_path: Path, images: list[str], first_question: list[str]) -> dict[str, Path]:
    files = {}
    for image, question_id in zip(images, first_question):
        path = folder / f"{image}.npz"
        if not path.is_file():
            raise ConfigError(f"gqa: {q_path}: question {question_id}: image {image} has no region file {path}")
        files[image] = path
    return files


@register_dataset
def gqa(
    *,
    root: str = "gqa",
    train_questions: str = "train_balanced_questions.json",
    val_questions: str = "val_balanced_questions.json",
    train_scene_graphs: str = "train_sceneGraphs.json",
    val_scene_graphs: str = "val_sceneGraphs.json",
    features: str | None = None,
    inputs: Literal["scene_graph", "regions"] = "scene_graph",
    question_len: int = 12,
    max_boxes: int = 50,
    answer_top_k: int | None = None,
    answer_min_count: int = 1,
    max_train_samples: int | None = None,
    max_val_samples: int | None = None,
    group_by_image: bool = True,
    use_cache: bool = True,
) -> DataSplits:
    """GQA balanced questions with scene graphs (inputs scene_graph) or region features (regions).

    root: folder holding the files below (relative paths are taken from the data root, ``$VQALAB_DATA``
        else ``data/``).
    train_questions / val_questions: official balanced question files under root (val may be
        testdev_balanced_questions.json with inputs regions: testdev has no scene graphs).
    train_scene_graphs / val_scene_graphs: official scene-graph files under root (inputs scene_graph).
    features: folder under root of <image id>.npz region files (inputs regions; see the module docstring).
    inputs: scene_graph (for vqa_subgraph) or regions (for vqa_aoa and the image VQA models).
    question_len: truncate questions to this many tokens (lab note 001: 12, range 8-20).
    max_boxes: keep at most this many objects or regions per image (lab note 001: 50, range 30-100).
    answer_top_k: keep the K most frequent training answers (None: all).
    answer_min_count: keep answers given at least this many times in the training split.
    max_train_samples / max_val_samples: use a fixed random subset of questions (None: all).
    group_by_image: batch the questions of one image together.
    use_cache: keep the prepared splits under the cache folder (``vqalab.data.prepared``) and reuse
        them while the JSON files and the preparing code are unchanged.
    """
    with paused_gc():
        return build_gqa(**locals())


def build_gqa(*, root, train_questions, val_questions, train_scene_graphs, val_scene_graphs, features, inputs,
              question_len, max_boxes, answer_top_k, answer_min_count, max_train_samples, max_val_samples,
              group_by_image, use_cache) -> DataSplits:
    """``gqa`` (see there), run with the garbage collector paused."""
    base = resolve_data(root)
    for key, value in (("question_len", question_len), ("max_boxes", max_boxes), ("answer_min_count", answer_min_count),
                       ("answer_top_k", answer_top_k)):
        if value is not None and value < 1:
            raise ConfigError(f"gqa: {key} = {value}: expected at least 1")
    if inputs == "regions" and features is None:
        raise ConfigError("gqa: inputs = 'regions' needs features: the folder of <image id>.npz region files")

    sources = {"train": (base / train_questions, base / train_scene_graphs, max_train_samples),
               "val": (base / val_questions, base / val_scene_graphs, max_val_samples)}
    json_paths = [q for q, _, _ in sources.values()] + ([g for _, g, _ in sources.values()] if inputs == "scene_graph" else [])
    arguments = {"inputs": inputs, "question_len": question_len, "max_boxes": max_boxes, "answer_top_k": answer_top_k,
                 "answer_min_count": answer_min_count, "max_train_samples": max_train_samples,
                 "max_val_samples": max_val_samples, "subset_seed": SUBSET_SEED}
    entry, key, stored = None, None, None
    if use_cache and all(path.is_file() for path in json_paths):
        entry = prepared_entry_path("gqa", [str(base), [p.name for p in json_paths], arguments])
        key = {"dataset": "gqa", "version": PREPARED_VERSION, "code": preparing_code(),
               "files": file_fingerprint(json_paths), "arguments": arguments}
        stored = load_entry(entry, key)

    files = {}
    if stored is not None:
        strings = strings_of(stored["strings"])
        answers, vocab = strings_of(stored["answer_vocab"]), Vocabulary(strings_of(stored["question_vocab"]))
        arrays = {split: {name[len(split) + 1:]: a for name, a in stored.items() if name.startswith(split + "/")}
                  for split in sources}
        dropped = {split: int(arrays[split].pop("dropped")) for split in sources}
        if inputs == "regions":
            for split, (q_path, _, _) in sources.items():
                files[split] = check_region_files(base / features, q_path, strings_of(arrays[split]["listed_images"]),
                                                  strings_of(arrays[split]["listed_first_question"]))
    else:
        splits = {}
        for split, (q_path, g_path, limit) in sources.items():
            records = load_questions(q_path)
            records = [records[i] for i in fixed_subset(len(records), limit)]
            listed = first_of_each([r["image_id"] for r in records], [r["question_id"] for r in records])
            nodes = None
            if inputs == "scene_graph":
                scene_graphs = read_json_object(g_path, "scene graphs")
                nodes = {}
                for r in records:
                    if r["image_id"] not in nodes:
                        if r["image_id"] not in scene_graphs:
                            raise ConfigError(f"gqa: {q_path}: question {r['question_id']}: image {r['image_id']} "
                                              f"has no scene graph in {g_path}")
                        nodes[r["image_id"]] = graph_nodes(g_path, r["image_id"], scene_graphs[r["image_id"]], max_boxes)
                del scene_graphs
            else:
                files[split] = check_region_files(base / features, q_path, *listed)
            splits[split] = (records, nodes, listed)

        train_records = splits["train"][0]
        counts = Counter(r["answer"] for r in train_records)
        answers = sorted((a for a, c in counts.items() if c >= answer_min_count), key=lambda a: (-counts[a], a))[:answer_top_k]
        if not answers:
            raise ConfigError(f"gqa: no training answer is given {answer_min_count} or more times: lower answer_min_count")
        answer_index = {a: i for i, a in enumerate(answers)}
        train_nodes = splits["train"][1] or {}
        labels = [label for nodes in train_nodes.values() for n in nodes
                  for label in (n["name"], *n["attributes"], *(rel for rel, _ in n["relations"]))]
        vocab = vocabulary_with_labels((r["question"] for r in train_records), labels)
        table = StringTable()
        arrays, dropped = {}, {}
        for split, (records, nodes, listed) in splits.items():
            kept = [r for r in records if r["answer"] in answer_index]
            image_names = sorted({r["image_id"] for r in kept})
            number = {name: i for i, name in enumerate(image_names)}
            tokens = Ragged.from_lists([vocab.encode(r["question"])[:question_len] for r in kept])
            arrays[split] = {
                "tokens": tokens.flat, "token_offsets": tokens.offsets,
                "targets": np.array([answer_index[r["answer"]] for r in kept], dtype=np.int64),
                "image_names": strings_array(image_names),
                "image_index": np.array([number[r["image_id"]] for r in kept], dtype=np.int64),
                "question_ids": strings_array([r["question_id"] for r in kept]),
                "structural": table.codes_of([r["structural"] for r in kept]),
                "answers": table.codes_of([r["answer"] for r in kept]),
                "listed_images": strings_array(listed[0]), "listed_first_question": strings_array(listed[1]),
            }
            if nodes is not None:
                arrays[split].update(pack_graphs([nodes[name] for name in image_names], vocab))
            dropped[split] = len(records) - len(kept)
        strings = table.strings
        del splits
        if entry is not None:
            payload = {f"{split}/{name}": a for split, split_arrays in arrays.items() for name, a in split_arrays.items()}
            payload.update({f"{split}/dropped": np.array(n) for split, n in dropped.items()})
            payload.update(strings=strings_array(strings), answer_vocab=strings_array(answers),
                           question_vocab=strings_array(vocab.tokens))
            store_entry(entry, key, payload)

    train, val = (GQASplit(arrays=arrays[split], strings=strings, feature_files=files.get(split), max_boxes=max_boxes)
                  for split in ("train", "val"))
    if len(val) == 0:
        raise ConfigError(f"gqa: no validation answer is among the {len(answers)} training answers: "
                          f"raise answer_top_k or lower answer_min_count")
    model_kwargs = {"vocab_size": len(vocab), "num_answers": len(answers)}
    if inputs == "regions":
        model_kwargs["image_dim"] = int(val[0]["image"].shape[0])
    log.info("gqa: %d train / %d val questions, %d answers, %d tokens%s", len(train), len(val), len(answers), len(vocab),
             " (prepared data from the cache)" if stored is not None else "")
    return DataSplits(
        train=train, val=val,
        collate=collate_graph_vqa if inputs == "scene_graph" else collate_vqa,
        input_keys=GRAPH_INPUT_KEYS if inputs == "scene_graph" else REGION_INPUT_KEYS,
        model_kwargs=model_kwargs, class_names=answers,
        train_groups=train.image_ids if group_by_image else None, vocab=vocab.tokens,
        info={"dataset": "gqa", "root": str(base), "inputs": inputs, "train_questions": len(train),
              "val_questions": len(val), "train_dropped_no_vocab_answer": dropped["train"],
              "val_dropped_no_vocab_answer": dropped["val"], "val_kept_fraction": len(val) / (len(val) + dropped["val"]),
              "num_answers": len(answers), "question_len": question_len, "max_boxes": max_boxes,
              "prepared_from_cache": stored is not None},
    )


@register_status("gqa", family="vqa")
def gqa_status(spec: dict) -> DataStatus:
    """Found when the question files (and the scene graphs or region folder the inputs need) are
    there; the fingerprint covers those files' names, sizes and dates."""
    base = resolve_data(spec["root"])
    needed = [spec["train_questions"], spec["val_questions"]]
    if spec["inputs"] == "scene_graph":
        needed += [spec["train_scene_graphs"], spec["val_scene_graphs"]]
    elif spec["features"] is not None:
        needed.append(spec["features"])
    missing = [name for name in needed if not (base / name).exists()]
    if missing:
        return DataStatus(name="gqa", found=False, where=str(base),
                          expected=f"missing {', '.join(missing)}; put the official GQA files there: "
                                   "{train,val}_balanced_questions.json, {train,val}_sceneGraphs.json "
                                   "and/or a folder of <image id>.npz region files")
    stats = [(name, (base / name).stat().st_size, (base / name).stat().st_mtime_ns) for name in needed]
    return DataStatus(name="gqa", found=True, where=str(base), fingerprint=short_hash([spec["inputs"], stats]),
                      detail=f"inputs {spec['inputs']}")
