"""Tiny copies of the lab's data sets in their official layouts, drawn on the spot.

Tests and notebook smoke runs write them into a temporary data root (``$VQALAB_DATA``), so the
real loaders, status checks and studies run end to end without the real files:

- ``write_rafdb_official``: ``EmoLabel/list_patition_label.txt`` + ``Image/aligned/*_aligned.jpg``;
- ``write_rafdb_imagefolder``: ``train/<expression>/*.jpg`` and ``test/<expression>/*.jpg``;
- ``write_vqa_v2``: the four official JSON files and COCO-named JPEGs in ``train2014/``, ``val2014/``.

Every image is learnable from its pixels: an expression is a colour and a stripe direction; a
VQA image shows a coloured square and some circles, and its questions ask about exactly those
(yes/no, number and other answers).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vqalab.data.expressions import EXPRESSIONS

RAFDB_DIR = Path("RAF-DB") / "basic"  # under the data root
VQA_V2_DIR = Path("vqa_v2")  # under the data root
# Expression k (0-6): a colour and stripes at angle k·180°/7, so every class looks different.
EXPRESSION_COLORS = [(230, 60, 60), (60, 200, 60), (60, 60, 230), (230, 210, 50), (50, 210, 210),
                     (210, 60, 210), (150, 150, 150)]
STRIPE_PERIOD = 8  # pixels at 100 px; scaled with the image
PIXEL_NOISE = 12  # std of the Gaussian noise added to every pixel (0-255 scale)
SHAPE_COLORS = {"red": (220, 40, 40), "green": (40, 180, 40), "blue": (40, 40, 220)}
SQUARE_COLORS = list(SHAPE_COLORS)
MAX_CIRCLES = 3


def expression_image(label: int, size: int, rng: np.random.Generator) -> Image.Image:
    """A (size × size) RGB image of expression ``label`` (0-6): its colour, its stripes, noise."""
    y, x = np.mgrid[0:size, 0:size] * (100 / size)
    angle = np.pi * label / len(EXPRESSIONS)
    stripes = np.sin(2 * np.pi * (x * np.cos(angle) + y * np.sin(angle)) / STRIPE_PERIOD + rng.uniform(0, 2 * np.pi))
    pixels = np.array(EXPRESSION_COLORS[label], dtype=float)[None, None, :] * (0.75 + 0.25 * stripes[..., None])
    pixels += rng.normal(0, PIXEL_NOISE, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _labels(per_class: int) -> list[int]:
    return [k for _ in range(per_class) for k in range(len(EXPRESSIONS))]  # 0..6, 0..6, …


def write_rafdb_official(root: Path, *, train_per_class: int = 4, test_per_class: int = 2, size: int = 100,
                         seed: int = 0) -> Path:
    """RAF-DB basic in the official layout under ``root``; returns ``root``.

    Names as released: ``train_00001.jpg`` / ``test_0001.jpg`` in the label file (labels 1-7),
    images ``Image/aligned/train_00001_aligned.jpg`` (100 × 100 in the release).
    """
    rng = np.random.default_rng(seed)
    image_dir = root / "Image" / "aligned"
    image_dir.mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    lines = []
    for split, per_class, digits in (("train", train_per_class, 5), ("test", test_per_class, 4)):
        for i, label in enumerate(_labels(per_class), start=1):
            name = f"{split}_{i:0{digits}d}"
            expression_image(label, size, rng).save(image_dir / f"{name}_aligned.jpg", quality=95)
            lines.append(f"{name}.jpg {label + 1}")
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return root


def write_rafdb_imagefolder(root: Path, *, train_per_class: int = 4, test_per_class: int = 2, size: int = 100,
                            seed: int = 0) -> Path:
    """RAF-DB in the ImageFolder layout: ``train/<Expression>/*.jpg``, ``test/<Expression>/*.jpg``."""
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        for i, label in enumerate(_labels(per_class)):
            folder = root / split / EXPRESSIONS[label]
            folder.mkdir(parents=True, exist_ok=True)
            expression_image(label, size, rng).save(folder / f"{split}_{i:04d}.jpg", quality=95)
    return root


def vqa_image(color: str, circles: int, size: int, rng: np.random.Generator) -> Image.Image:
    """A square of ``color`` and ``circles`` white circles on a dark background."""
    image = Image.new("RGB", (size, size), tuple(int(c) for c in rng.integers(0, 60, 3)))
    draw = ImageDraw.Draw(image)
    half = size // 2
    draw.rectangle([2, 2, half - 2, half - 2], fill=SHAPE_COLORS[color])
    r = max(2, size // 10)
    for k in range(circles):
        cx, cy = half + r + (k % 2) * 2 * r, half + r + (k // 2) * 2 * r
        draw.ellipse([cx - r + 1, cy - r + 1, cx + r - 1, cy + r - 1], fill=(245, 245, 245))
    return image


def _answers(rng: np.random.Generator, answer: str, variants: list[str]) -> list[dict]:
    """Ten human answers: mostly ``answer``, a few in spellings the official normalisation maps to it."""
    given = [answer] * 7 + [str(rng.choice(variants)) for _ in range(3)]
    return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(given)]


NUMBER_WORDS = {0: "zero", 1: "one", 2: "two", 3: "three"}


def write_vqa_v2(root: Path, *, train_images: int = 12, val_images: int = 6, size: int = 32, seed: int = 0) -> Path:
    """VQA v2 in the official layout under ``root``; returns ``root``.

    Files: ``v2_OpenEnded_mscoco_{train,val}2014_questions.json``, ``v2_mscoco_{train,val}2014_annotations.json``,
    images ``{train,val}2014/COCO_{train,val}2014_<12-digit id>.jpg``. Three questions per image,
    one of each answer type: "What color is the square?" (other), "How many circles are there?"
    (number) and "Is there a circle?" (yes/no).
    """
    rng = np.random.default_rng(seed)
    next_id = 1
    for split, count in (("train", train_images), ("val", val_images)):
        folder = root / f"{split}2014"
        folder.mkdir(parents=True, exist_ok=True)
        questions, annotations = [], []
        for _ in range(count):
            image_id = int(next_id * 7 + 2)  # sparse ids, as in COCO
            next_id += 1
            color = SQUARE_COLORS[int(rng.integers(len(SQUARE_COLORS)))]
            circles = int(rng.integers(0, MAX_CIRCLES + 1))
            vqa_image(color, circles, size, rng).save(folder / f"COCO_{split}2014_{image_id:012d}.jpg", quality=95)
            asked = [
                ("What color is the square?", "other", "what color is the", color, [color.capitalize(), f"{color}."]),
                ("How many circles are there?", "number", "how many", str(circles), [NUMBER_WORDS[circles]]),
                ("Is there a circle?", "yes/no", "is there a", "yes" if circles else "no",
                 ["Yes" if circles else "No"]),
            ]
            for k, (text, answer_type, question_type, answer, variants) in enumerate(asked):
                question_id = image_id * 1000 + k
                questions.append({"image_id": image_id, "question": text, "question_id": question_id})
                annotations.append({"question_id": question_id, "image_id": image_id, "question_type": question_type,
                                    "answer_type": answer_type, "multiple_choice_answer": answer,
                                    "answers": _answers(rng, answer, variants)})
        subtype = f"{split}2014"
        (root / f"v2_OpenEnded_mscoco_{subtype}_questions.json").write_text(json.dumps(
            {"task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": subtype, "questions": questions}))
        (root / f"v2_mscoco_{subtype}_annotations.json").write_text(json.dumps(
            {"data_type": "mscoco", "data_subtype": subtype, "annotations": annotations}))
    return root


def write_lab_data(data_root: Path, *, rafdb_layout: str = "official") -> Path:
    """RAF-DB (``official`` or ``imagefolder`` layout) and VQA v2 where the loaders look by default."""
    writer = write_rafdb_official if rafdb_layout == "official" else write_rafdb_imagefolder
    writer(data_root / RAFDB_DIR)
    write_vqa_v2(data_root / VQA_V2_DIR)
    return data_root


# --- Full-size stand-ins (benchmarks/full_size_data.py; a small scale in the loader tests) ---------

# The official counts: (questions, images) per split.
VQA_V2_COUNTS = {"train": (443_757, 82_783), "val": (214_354, 40_504)}
GQA_COUNTS = {"train": (943_000, 72_140), "val": (132_062, 10_234)}  # balanced questions
RAFDB_COUNTS = {"train": 12_271, "test": 3_068}
HUMAN_ANSWERS = 10
# VQA v2's answer types, their share of the questions, and a question template of each kind.
ANSWER_TYPES = (("yes/no", 0.38), ("number", 0.12), ("other", 0.50))
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwxz" for v in "aeiou"]


def pseudo_word(i: int) -> str:
    """A pronounceable made-up word for index i (distinct for distinct i)."""
    out = ""
    i += len(SYLLABLES)  # at least two syllables
    while i:
        i, r = divmod(i, len(SYLLABLES))
        out += SYLLABLES[r]
    return out


def scaled(count: int, scale: float) -> int:
    return max(1, round(count * scale))


def spread(questions: int, images: int, rng: np.random.Generator) -> np.ndarray:
    """How many questions each image gets: at least one, the rest spread at random (sums to ``questions``)."""
    base = min(3, questions // images)
    return base + rng.multinomial(questions - base * images, np.full(images, 1 / images))


def zipf_index(rng: np.random.Generator, size, pool: int, exponent: float = 1.05) -> np.ndarray:
    """Indices in [0, pool) drawn with a Zipf-like frequency (a few answers dominate, a long tail)."""
    weights = 1.0 / np.arange(1, pool + 1) ** exponent
    return rng.choice(pool, size=size, p=weights / weights.sum())


def write_json_list(path: Path, head: dict, key: str, entries) -> None:
    """``{**head, key: [entries…]}`` written entry by entry (a full-size list is never one string)."""
    with open(path, "w") as f:
        f.write(json.dumps(head)[:-1] + (", " if head else "") + json.dumps(key) + ": [")
        f.writelines((", " if i else "") + json.dumps(entry) for i, entry in enumerate(entries))
        f.write("]}")


def write_json_object(path: Path, items) -> None:
    """A JSON object of the ``(key, value)`` pairs ``items``, written pair by pair (GQA's id → entry files)."""
    with open(path, "w") as f:
        f.write("{")
        f.writelines((", " if i else "") + json.dumps(key) + ": " + json.dumps(value) for i, (key, value) in enumerate(items))
        f.write("}")


def write_npy_vectors(folder: Path, names: list[str], dim: int, rng: np.random.Generator) -> None:
    """One ``.npy`` file of a (dim,) float32 vector per name (ResNet-18 pooled features are 512-d)."""
    folder.mkdir(parents=True, exist_ok=True)
    template = io.BytesIO()
    np.save(template, np.zeros(dim, np.float32))
    header = template.getvalue()[: -dim * 4]  # the .npy header of every file; the vector follows
    for start in range(0, len(names), 4096):
        block = rng.standard_normal((min(4096, len(names) - start), dim), dtype=np.float32)
        for name, row in zip(names[start:start + 4096], block):
            (folder / name).write_bytes(header + row.tobytes())


def write_vqa_v2_stand_in(root: Path, *, scale: float = 1.0, feature_dim: int = 512, seed: int = 0) -> Path:
    """VQA v2 at the official counts × ``scale`` in the official layout, with feature files for images.

    The four official JSON files (every field of the release) and ``{train,val}2014_features/``
    holding one ``COCO_<split>2014_<id>.npy`` (feature_dim,) vector per image. Answers: yes/no, a
    number or a made-up word drawn Zipf-like from a pool growing with the scale (about 20,000
    distinct normalised answers at full size), given by 10 annotators who mostly agree, some in
    spellings the official normalisation maps together ("Two", "two!", "the dog").
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    pool = max(30, round(40_000 * scale))
    numbers = [str(n) for n in range(21)]
    first_id = {"train": 9, "val": 42}
    for split, (n_questions, n_images) in VQA_V2_COUNTS.items():
        n_questions, n_images = scaled(n_questions, scale), scaled(n_images, scale)
        image_ids = np.sort(rng.choice(np.arange(first_id[split], 600_000, 2), n_images, replace=False))
        per_image = spread(n_questions, n_images, rng)
        kinds = rng.choice(len(ANSWER_TYPES), n_questions, p=[p for _, p in ANSWER_TYPES])
        truth = np.where(kinds == 0, rng.integers(0, 2, n_questions),
                         np.where(kinds == 1, zipf_index(rng, n_questions, len(numbers), 1.5),
                                  zipf_index(rng, n_questions, pool)))
        # Per annotator: 0 the answer as given, 1 a variant spelling, 2 another answer of the kind.
        choice = rng.choice(3, (n_questions, HUMAN_ANSWERS), p=[0.7, 0.15, 0.15])
        variant = rng.integers(0, 4, (n_questions, HUMAN_ANSWERS))
        other = zipf_index(rng, (n_questions, HUMAN_ANSWERS), pool)
        nouns = zipf_index(rng, n_questions, 3000, 0.9)

        def answer_text(kind: int, value: int) -> str:
            if kind == 0:
                return ("no", "yes")[value % 2]
            if kind == 1:
                return numbers[value % len(numbers)]
            return pseudo_word(value) if value % 7 else f"{pseudo_word(value)} and {pseudo_word(value + 1)}"

        def spelled(text: str, kind: int, how: int) -> str:
            if how == 0:
                return text.capitalize()
            if how == 1:
                return text + ("!" if kind == 0 else ".")
            if kind == 1:
                return NUMBER_WORDS.get(int(text), text) if how == 2 else f"{text} "
            return f"the {text}" if how == 2 else f"{text}?"

        questions, annotations = [], []
        row = 0
        for image_id, count in zip(image_ids.tolist(), per_image.tolist()):
            for k in range(count):
                kind, noun = int(kinds[row]), pseudo_word(int(nouns[row]))
                given = answer_text(kind, int(truth[row]))
                answers = []
                for j in range(HUMAN_ANSWERS):
                    how = int(choice[row, j])
                    answers.append(given if how == 0 else spelled(given, kind, int(variant[row, j])) if how == 1
                                   else answer_text(kind, int(other[row, j]) if kind == 2 else int(other[row, j]) % 21))
                text, question_type = (
                    (f"Is the {noun} on the left?", "is the") if kind == 0 else
                    (f"How many {noun}s are there?", "how many") if kind == 1 else
                    (f"What is the {noun} made of?", "what is the"))
                question_id = image_id * 1000 + k
                questions.append({"image_id": image_id, "question": text, "question_id": question_id})
                annotations.append({
                    "question_type": question_type, "multiple_choice_answer": given,
                    "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                for j, a in enumerate(answers)],
                    "image_id": image_id, "answer_type": ANSWER_TYPES[kind][0], "question_id": question_id})
                row += 1
        subtype = f"{split}2014"
        info = {"description": "VQA v2 stand-in (generated)", "version": "2.0"}
        write_json_list(root / f"v2_OpenEnded_mscoco_{subtype}_questions.json",
                        {"info": info, "task_type": "Open-Ended", "data_type": "mscoco", "license": {},
                         "data_subtype": subtype}, "questions", questions)
        del questions
        write_json_list(root / f"v2_mscoco_{subtype}_annotations.json",
                        {"info": info, "license": {}, "data_subtype": subtype, "data_type": "mscoco"},
                        "annotations", annotations)
        del annotations
        write_npy_vectors(root / f"{subtype}_features", [f"COCO_{subtype}_{i:012d}.npy" for i in image_ids.tolist()],
                          feature_dim, rng)
    return root
