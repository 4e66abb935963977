"""Synthetic scenes: the embedded, CPU-sized scene-graph VQA data set, in the spirit of CLEVR.

A seeded generator draws scenes of 2-D objects (shape, colour, size, position), their scene
graphs (left / right / above / below / near relations between every ordered pair of objects),
small rendered images, and templated questions that need one or two relations to answer:

    what color is the {shape} {rel} the {color} {shape}?                       (one relation)
    what shape is the {color} object {rel} the {color} {shape}?                (one relation)
    is there a {color} {shape} {rel} the {color} {shape}?                      (one relation, yes/no)
    what color is the {shape} {rel} the {color} {shape} and {rel} the {color} {shape}?   (two)

Every referenced object is unique in its scene and every question has one answer. No question can
be answered without its relations: the object asked about shares its shape (or colour) with at
least one other object outside the reference, and with two relations, neither alone singles it
out; the yes/no questions ask about an object that is in the scene either way. Answers are
balanced: the questions cycle through the answers (6 colours, 3 shapes, yes, no), so a
question-only model is near chance within each question kind. Relations, with y growing
downwards: "A left of B" when A's centre has the smaller x, "above" the smaller y, "near" when
the centres are closer than ``near_distance``.

The model inputs are chosen by ``inputs``: ``image`` (rendered pixels, for the image VQA models),
``regions`` (one feature vector per object: one-hot shape, colour, size and its box, for region
models such as ``vqa_aoa``) or ``scene_graph`` (``vqalab.data.graphs``, for ``vqa_subgraph``).
Train and validation scenes come from separate random streams of ``scene_seed``.
"""

from __future__ import annotations

import logging
import math
from typing import Literal

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from vqalab.data import DataSplits, DataStatus, register_dataset, register_status, short_hash
from vqalab.data.graphs import (
    GRAPH_INPUT_KEYS,
    collate_graph_vqa,
    encode_graph,
    vocabulary_with_labels,
)
from vqalab.data.regions import REGION_INPUT_KEYS, boxes_of
from vqalab.data.transforms import ImageTransform
from vqalab.data.vqa_batch import collate_vqa
from vqalab.registry import ConfigError

# Part of the data identity: bump it when the scenes or questions drawn for the same keywords change.
GENERATOR_VERSION = 2

log = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 80, 230), "yellow": (230, 210, 40),
          "purple": (150, 60, 200), "cyan": (40, 200, 210)}
SIZES = {"small": 0.06, "large": 0.1}  # object radius as a fraction of the image side
RELATIONS = ("left", "right", "above", "below", "near")
RELATION_PHRASE = {"left": "left of", "right": "right of", "above": "above", "below": "below", "near": "near"}
ANSWERS = (*COLORS, *SHAPES, "yes", "no")
BACKGROUND = (128, 128, 128)
MIN_CENTRE_GAP = 0.16  # centres at least this far apart: objects do not overlap
MIN_AXIS_GAP = 0.03  # |dx| and |dy| at least this: left/right and above/below are visible
PLACEMENT_TRIES = 200
SCENE_TRIES_PER_QUESTION = 50  # fresh scenes drawn for one wanted answer before giving up
SPLIT_STREAM = {"train": 0, "val": 1}
REGION_DIM = len(SHAPES) + len(COLORS) + len(SIZES) + 4  # one-hot shape, colour, size + box


def relation_holds(rel: str, a: dict, b: dict, near_distance: float) -> bool:
    """Whether "a is <rel> b" (positions are centres in [0, 1], y downwards)."""
    dx, dy = a["x"] - b["x"], a["y"] - b["y"]
    return {"left": dx < 0, "right": dx > 0, "above": dy < 0, "below": dy > 0,
            "near": math.hypot(dx, dy) < near_distance}[rel]


def draw_scene(rng: np.random.Generator, min_objects: int, max_objects: int) -> list[dict]:
    """Objects with shape, colour, size and centre, placed without overlap."""
    count = int(rng.integers(min_objects, max_objects + 1))
    objects: list[dict] = []
    for _ in range(PLACEMENT_TRIES):
        if len(objects) == count:
            break
        x, y = rng.uniform(0.12, 0.88, size=2)
        if all(math.hypot(x - o["x"], y - o["y"]) >= MIN_CENTRE_GAP and abs(x - o["x"]) >= MIN_AXIS_GAP
               and abs(y - o["y"]) >= MIN_AXIS_GAP for o in objects):
            objects.append({"shape": SHAPES[rng.integers(len(SHAPES))],
                            "color": list(COLORS)[rng.integers(len(COLORS))],
                            "size": list(SIZES)[rng.integers(len(SIZES))], "x": float(x), "y": float(y)})
    return objects


def related(objects: list[dict], ref: int, rel: str, near_distance: float) -> list[int]:
    """Indices of the objects that are <rel> object ``ref``."""
    return [i for i, o in enumerate(objects) if i != ref and relation_holds(rel, o, objects[ref], near_distance)]


def unique_references(objects: list[dict]) -> list[int]:
    """Objects whose (colour, shape) is unique in the scene: they can be named in a question."""
    keys = [(o["color"], o["shape"]) for o in objects]
    return [i for i, k in enumerate(keys) if keys.count(k) == 1]


def candidate_questions(objects: list[dict], near_distance: float,
                        two_relations: bool) -> list[tuple[str, str, int | None]]:
    """Every (question, answer, answer object) the templates allow for this scene (one-relation
    templates, or the two-relation template when ``two_relations``). The answer object is the index
    of the object whose colour or shape is the answer; None for yes/no questions."""
    refs = unique_references(objects)
    named = lambda i: f"the {objects[i]['color']} {objects[i]['shape']}"
    # How many objects other than the reference have this shape / colour: a question about one of
    # them needs its relation only when there is more than one (else the object is named outright).
    def others(ref: int, key: str, value: str) -> int:
        return sum(1 for i, o in enumerate(objects) if i != ref and o[key] == value)
    out = []
    if two_relations:
        for r2 in refs:
            for r3 in refs:
                if r3 <= r2:
                    continue
                for rel2 in RELATIONS:
                    for rel3 in RELATIONS:
                        group2 = related(objects, r2, rel2, near_distance)
                        group3 = related(objects, r3, rel3, near_distance)
                        both = set(group2) & set(group3)
                        for shape in SHAPES:
                            hits = [i for i in both if objects[i]["shape"] == shape]
                            # Neither relation alone may single the object out: both are needed.
                            alone = [sum(1 for i in g if objects[i]["shape"] == shape) for g in (group2, group3)]
                            if len(hits) == 1 and min(alone) >= 2:
                                text = (f"what color is the {shape} {RELATION_PHRASE[rel2]} {named(r2)} and "
                                        f"{RELATION_PHRASE[rel3]} {named(r3)}?")
                                out.append((text, objects[hits[0]]["color"], hits[0]))
        return out
    for ref in refs:
        for rel in RELATIONS:
            group = related(objects, ref, rel, near_distance)
            phrase = f"{RELATION_PHRASE[rel]} {named(ref)}"
            for shape in SHAPES:
                hits = [i for i in group if objects[i]["shape"] == shape]
                if len(hits) == 1 and others(ref, "shape", shape) >= 2:
                    out.append((f"what color is the {shape} {phrase}?", objects[hits[0]]["color"], hits[0]))
            for color in COLORS:
                hits = [i for i in group if objects[i]["color"] == color]
                if len(hits) == 1 and others(ref, "color", color) >= 2:
                    out.append((f"what shape is the {color} object {phrase}?", objects[hits[0]]["shape"], hits[0]))
            # Yes/no about objects present in the scene (not only at random), so "no" needs the relation.
            for o in objects:
                if o is objects[ref]:
                    continue
                answer = "yes" if any(objects[i]["color"] == o["color"] and objects[i]["shape"] == o["shape"]
                                      for i in group) else "no"
                out.append((f"is there a {o['color']} {o['shape']} {phrase}?", answer, None))
    return out


def scene_graph(objects: list[dict], near_distance: float) -> list[dict]:
    """Nodes for ``graphs.encode_graph``: name = shape, attributes = colour and size, every relation
    that holds between each ordered pair."""
    nodes = []
    for a in objects:
        r = SIZES[a["size"]]
        nodes.append({"name": a["shape"], "attributes": [a["color"], a["size"]],
                      "box": (a["x"] - r, a["y"] - r, a["x"] + r, a["y"] + r),
                      "relations": [(rel, j) for j, b in enumerate(objects) if b is not a
                                    for rel in RELATIONS if relation_holds(rel, a, b, near_distance)]})
    return nodes


def render(objects: list[dict], image_size: int) -> np.ndarray:
    """(3, S, S) uint8 picture of the scene."""
    img = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in objects:
        cx, cy, r = o["x"] * image_size, o["y"] * image_size, SIZES[o["size"]] * image_size
        color = COLORS[o["color"]]
        if o["shape"] == "circle":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
        elif o["shape"] == "square":
            draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=color)
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=color)
    return np.asarray(img).transpose(2, 0, 1).copy()


def region_features(objects: list[dict], max_objects: int) -> torch.Tensor:
    """(REGION_DIM, max_objects, 1) per-object features (a feature map of max_objects regions;
    missing objects are zero columns)."""
    feats = torch.zeros(REGION_DIM, max_objects, 1)
    for k, o in enumerate(objects):
        r = SIZES[o["size"]]
        onehot = [s == o["shape"] for s in SHAPES] + [c == o["color"] for c in COLORS] + [s == o["size"] for s in SIZES]
        feats[:, k, 0] = torch.tensor([float(v) for v in onehot] + [o["x"] - r, o["y"] - r, o["x"] + r, o["y"] + r])
    return feats


def generate(num_questions: int, rng: np.random.Generator, *, min_objects: int, max_objects: int,
             near_distance: float, two_relation_fraction: float, questions_per_scene: int) -> tuple[list, list]:
    """Scenes and questions ``{"scene", "question", "answer", "answer_object", "relations"}``, answers cycling
    through ``ANSWERS``. A scene is kept for up to ``questions_per_scene`` questions."""
    scenes: list[list[dict]] = []
    questions: list[dict] = []
    objects, used = None, questions_per_scene
    for q in range(num_questions):
        wanted = ANSWERS[q % len(ANSWERS)]
        # Only colour answers have a two-relation template.
        two = wanted in COLORS and rng.random() < two_relation_fraction
        for _ in range(SCENE_TRIES_PER_QUESTION):
            if objects is None or used >= questions_per_scene:
                objects, used = draw_scene(rng, min_objects, max_objects), 0
                scenes.append(objects)
            options = [c for c in candidate_questions(objects, near_distance, two) if c[1] == wanted]
            if options:
                text, _, answer_object = options[rng.integers(len(options))]
                questions.append({"scene": len(scenes) - 1, "question": text, "answer": wanted,
                                  "answer_object": answer_object, "relations": 2 if two else 1})
                used += 1
                break
            used = questions_per_scene  # this scene cannot give the wanted answer: draw another
        else:
            raise ConfigError(f"synthetic_scenes: no scene gave a question with answer '{wanted}' in "
                              f"{SCENE_TRIES_PER_QUESTION} tries: allow more objects (max_objects)")
    return scenes, questions


class SceneQuestions(Dataset):
    """Items: question token ids, image_id (the scene), target answer index, and the chosen input:
    ``image`` (3, S, S) normalised pixels, ``image`` (REGION_DIM, max_objects, 1) region features
    with their ``boxes`` (max_objects, 4),
    or ``graph`` (``encode_graph``). Per question: ``targets``, ``image_ids``, ``relation_counts`` and
    ``answer_objects`` (the node index of the object the answer describes, None for yes/no: what an
    interpretable model should choose)."""

    def __init__(self, *, scenes: list, questions: list[dict], vocab, answer_index: dict, inputs: str,
                 near_distance: float, image_size: int, max_objects: int):
        self.inputs = inputs
        self.questions = [vocab.encode(q["question"]) for q in questions]
        self.texts = [q["question"] for q in questions]
        self.targets = [answer_index[q["answer"]] for q in questions]
        self.image_ids = [q["scene"] for q in questions]
        self.relation_counts = [q["relations"] for q in questions]
        self.answer_objects = [q["answer_object"] for q in questions]
        if inputs == "image":
            self.images = torch.from_numpy(np.stack([render(s, image_size) for s in scenes]))
            self.normalize = ImageTransform(normalization="imagenet")  # no augmentation
        elif inputs == "regions":
            self.regions = [region_features(s, max_objects) for s in scenes]
        else:
            self.graphs = [encode_graph(scene_graph(s, near_distance), vocab) for s in scenes]

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> dict:
        scene = self.image_ids[index]
        item = {"question": self.questions[index], "image_id": scene, "target": self.targets[index]}
        if self.inputs == "image":
            item["image"] = self.normalize(self.images[scene])
        elif self.inputs == "regions":
            item["image"] = self.regions[scene]
            item["boxes"] = boxes_of(item["image"])
        else:
            item["graph"] = self.graphs[scene]
        return item


@register_dataset
def synthetic_scenes(
    *,
    num_train: int = 4000,
    num_val: int = 1000,
    min_objects: int = 4,
    max_objects: int = 7,
    two_relation_fraction: float = 0.3,
    near_distance: float = 0.3,
    questions_per_scene: int = 4,
    image_size: int = 64,
    inputs: Literal["scene_graph", "image", "regions"] = "scene_graph",
    scene_seed: int = 0,
    group_by_image: bool = True,
) -> DataSplits:
    """Seeded CLEVR-like scenes with scene graphs, rendered images and relational questions.

    num_train / num_val: questions per split.
    min_objects / max_objects: objects per scene (difficulty: more objects, more distractors; 2-10).
    two_relation_fraction: share of colour questions that need two relations (difficulty; 0-1).
    near_distance: centres closer than this (fraction of the image side) are "near" (0.15-0.5).
    questions_per_scene: questions asked about one scene before a new one is drawn.
    image_size: side of the rendered images in pixels (inputs "image").
    inputs: scene_graph (for vqa_subgraph), image (rendered pixels, for the image VQA models) or
        regions (one feature vector per object, as precomputed region features).
    scene_seed: seed of the generator (the same seed always gives the same data).
    group_by_image: batch the questions of one scene together.
    """
    if not 2 <= min_objects <= max_objects <= 10:
        raise ConfigError(f"synthetic_scenes: min_objects = {min_objects}, max_objects = {max_objects}: "
                          f"expected 2 <= min_objects <= max_objects <= 10")
    for key, value in (("num_train", num_train), ("num_val", num_val), ("questions_per_scene", questions_per_scene),
                       ("image_size", image_size)):
        if value < 1:
            raise ConfigError(f"synthetic_scenes: {key} = {value}: expected at least 1")
    if not 0.0 <= two_relation_fraction <= 1.0 or near_distance <= 0:
        raise ConfigError(f"synthetic_scenes: two_relation_fraction = {two_relation_fraction}, near_distance = "
                          f"{near_distance}: expected a fraction in [0, 1] and a positive distance")
    knobs = {"min_objects": min_objects, "max_objects": max_objects, "near_distance": near_distance,
             "two_relation_fraction": two_relation_fraction, "questions_per_scene": questions_per_scene}
    generated = {split: generate(n, np.random.default_rng([scene_seed, SPLIT_STREAM[split]]), **knobs)
                 for split, n in (("train", num_train), ("val", num_val))}
    labels = [*SHAPES, *COLORS, *SIZES, *RELATIONS]
    vocab = vocabulary_with_labels((q["question"] for q in generated["train"][1]), labels)
    answer_index = {a: i for i, a in enumerate(ANSWERS)}
    train, val = (SceneQuestions(scenes=generated[s][0], questions=generated[s][1], vocab=vocab,
                                 answer_index=answer_index, inputs=inputs, near_distance=near_distance,
                                 image_size=image_size, max_objects=max_objects) for s in ("train", "val"))
    model_kwargs = {"vocab_size": len(vocab), "num_answers": len(ANSWERS)}
    if inputs == "regions":
        model_kwargs["image_dim"] = REGION_DIM
    log.info("synthetic_scenes: %d train / %d val questions on %d / %d scenes", len(train), len(val),
             len(generated["train"][0]), len(generated["val"][0]))
    return DataSplits(
        train=train, val=val,
        collate=collate_graph_vqa if inputs == "scene_graph" else collate_vqa,
        input_keys={"scene_graph": GRAPH_INPUT_KEYS, "regions": REGION_INPUT_KEYS}.get(
            inputs, ("image", "question", "question_len", "image_id")),
        model_kwargs=model_kwargs, class_names=list(ANSWERS),
        train_groups=train.image_ids if group_by_image else None, vocab=vocab.tokens,
        info={"dataset": "synthetic_scenes", "train_questions": len(train), "val_questions": len(val),
              "train_scenes": len(generated["train"][0]), "val_scenes": len(generated["val"][0]),
              "inputs": inputs, **knobs, "scene_seed": scene_seed},
    )


@register_status("synthetic_scenes", family="vqa")
def synthetic_scenes_status(spec: dict) -> DataStatus:
    """Always there: drawn on use; the fingerprint covers every keyword the scenes depend on."""
    return DataStatus(name="synthetic_scenes", found=True, where="generated on use (no files)",
                      counts={"train_questions": spec["num_train"], "val_questions": spec["num_val"]},
                      fingerprint=short_hash([spec, GENERATOR_VERSION]))
