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
