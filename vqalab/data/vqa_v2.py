"""VQA v2 (Goyal et al. 2017) from its official files.

Layout under ``root`` (file and folder names are arguments; these are the official ones)::

    v2_OpenEnded_mscoco_train2014_questions.json   {"questions": [{image_id, question, question_id}, …]}
    v2_mscoco_train2014_annotations.json           {"annotations": [{question_id, image_id, answers:
                                                     [{answer, answer_id, …} × 10], multiple_choice_answer,
                                                     answer_type, question_type}, …]}
    train2014/COCO_train2014_000000000009.jpg …    COCO images (the trailing digits are the image id)
    … the same for val2014

In place of the image folders, folders of precomputed features may be given
(``train_features``/``val_features``): one file per image named like the image (trailing digits =
image id) with extension ``.npy`` or ``.pt``, holding a (D,) vector, a (D, h, w) map or (K, D)
region features, or ``.npz`` with bottom-up-attention region features and boxes
(``vqalab.data.regions``: each region becomes its D features followed by its box as fractions of
the image), the same shape for every image (batches are stacked). The model then skips its
image encoder (``image_dim`` is set from the files). When every file is ``.npz`` the batches also
carry the region ``boxes`` (B, K, 4), which BAN's counting module reads.

Answers: every human answer is normalised as the official metric does
(``vqalab.metrics.normalize_answer``); the answer vocabulary is the most frequent normalised
answers of the training split (``answer_top_k`` and/or ``answer_min_count``). Each question's
soft target over that vocabulary is the official accuracy of each answer, ``vqa_accuracy(answer,
human answers)`` (0, 0.3, 0.6, 0.9, 1 for 0, 1, 2, 3, ≥4 annotators), for ``train.loss: bce``;
``target`` (and ``.targets``) is the best-scoring answer, for ``train.loss: ce``. Questions with no
answer in the vocabulary cannot be answered right and are left out; ``info`` records how many.
Because their accuracy is 0 whatever the model predicts, the official accuracy over all
validation questions is ``val_acc × info["val_kept_fraction"]`` exactly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from vqalab.data import (
    DataSplits,
    DataStatus,
    fixed_subset,
    register_dataset,
    register_status,
    short_hash,
)
from vqalab.data.easy_vqa import collate_vqa
from vqalab.data.regions import REGION_INPUT_KEYS, boxes_of, check_finite, read_regions
from vqalab.data.transforms import IMAGENET_MEAN, IMAGENET_STD, open_rgb
from vqalab.metrics import clean_whitespace, normalize_answer, vqa_accuracy
from vqalab.paths import cache_dir, resolve_data
from vqalab.registry import ConfigError, short_repr
from vqalab.text import Vocabulary

log = logging.getLogger(__name__)

# The image id is the number just before the extension: COCO_train2014_000000000009.jpg → 9.
IMAGE_FILE = re.compile(r"(\d+)\.(?:jpe?g|png)$", re.IGNORECASE)
FEATURE_FILE = re.compile(r"(\d+)\.(?:npy|pt|npz)$")


def read_official_json(path: Path, key: str, what: str) -> list[dict]:
    """The ``key`` list of an official JSON file; errors name the file."""
    if not path.is_file():
        raise ConfigError(f"vqa_v2: {what} file not found: {path}")
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"vqa_v2: {path}: not valid JSON: {err}") from None
    if not isinstance(content, dict) or not isinstance(content.get(key), list):
        raise ConfigError(f"vqa_v2: {path}: expected a JSON object with a '{key}' list (the official {what} layout)")
    return content[key]


def index_files(folder: Path, pattern: re.Pattern, what: str) -> dict[int, Path]:
    """image id → file for every file in ``folder`` whose name matches ``pattern``."""
    if not folder.is_dir():
        raise ConfigError(f"vqa_v2: {what} folder not found: {folder}")
    files = {}
    for path in folder.iterdir():
        match = pattern.search(path.name)
        if match:
            files[int(match.group(1))] = path
    return files


# Keys every entry of the official files has; an entry without one is refused naming file and entry.
QUESTION_KEYS = ("question_id", "image_id", "question")
ANNOTATION_KEYS = ("question_id", "image_id", "answers")


def check_entries(entries: list, path: Path, what: str, keys: tuple[str, ...]) -> None:
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"vqa_v2: {path}: {what} entry {index} is a {type(entry).__name__}, expected an object")
        missing = [k for k in keys if k not in entry]
        if missing:
            ident = f" (question_id {entry['question_id']!r})" if "question_id" in entry else ""
            raise ConfigError(f"vqa_v2: {path}: {what} entry {index}{ident} has no {', '.join(repr(k) for k in missing)} "
                              f"(every entry needs {', '.join(keys)})")
        where = f"vqa_v2: {path}: {what} entry {index}"
        for key in ("question_id", "image_id"):
            if not isinstance(entry[key], int) or isinstance(entry[key], bool):
                raise ConfigError(f"{where}: {key} = {short_repr(entry[key])}: expected an integer")
        where += f" (question_id {entry['question_id']})"
        if what == "questions" and not isinstance(entry["question"], str):
            raise ConfigError(f"{where}: question = {short_repr(entry['question'])}: expected a string")
        if what == "annotations":
            if not (isinstance(entry["answers"], list)
                    and all(isinstance(a, dict) and "answer" in a for a in entry["answers"])):
                raise ConfigError(f"{where}: 'answers' must be a list of objects with an 'answer'")
            if not isinstance(entry.get("multiple_choice_answer", ""), str):
                raise ConfigError(f"{where}: multiple_choice_answer = {short_repr(entry['multiple_choice_answer'])}: "
                                  "expected a string")
            for a in entry["answers"]:
                if not isinstance(a["answer"], str):
                    raise ConfigError(f"{where}: answer = {short_repr(a['answer'])}: expected a string "
                                      '(the official files quote every answer, e.g. "2")')


def load_split(questions_path: Path, annotations_path: Path) -> list[dict]:
    """Questions joined with their annotations, in the questions file's order."""
    questions = read_official_json(questions_path, "questions", "questions")
    annotations = read_official_json(annotations_path, "annotations", "annotations")
    check_entries(questions, questions_path, "questions", QUESTION_KEYS)
    check_entries(annotations, annotations_path, "annotations", ANNOTATION_KEYS)
    by_question = {a["question_id"]: a for a in annotations}
    records = []
    for q in questions:
        ann = by_question.get(q["question_id"])
        if ann is None:
            raise ConfigError(f"vqa_v2: {annotations_path}: no annotation for question_id {q['question_id']} "
                              f"of {questions_path}")
        if ann["image_id"] != q["image_id"]:
            raise ConfigError(f"vqa_v2: question_id {q['question_id']}: image_id {q['image_id']} in {questions_path} "
                              f"but {ann['image_id']} in {annotations_path}")
        records.append({
            "question_id": q["question_id"], "image_id": q["image_id"], "question": q["question"],
            "answers": [a["answer"] for a in ann["answers"]],
            "multiple_choice_answer": ann.get("multiple_choice_answer", ""),
            "answer_type": ann.get("answer_type", ""), "question_type": ann.get("question_type", ""),
        })
    return records


def build_answer_vocab(answer_lists: list[list[str]], top_k: int | None, min_count: int) -> list[str]:
    """Most frequent normalised answers, most frequent first (ties: alphabetical).

    answer_lists: the human answers of each training question. top_k: keep at most this many
    (None: no limit). min_count: keep answers given at least this many times. The empty answer
    (e.g. "the" normalised) is never kept.
    """
    counts = Counter(normalize_answer(a) for answers in answer_lists for a in answers)
    counts.pop("", None)
    kept = sorted((a for a, c in counts.items() if c >= min_count), key=lambda a: (-counts[a], a))
    return kept[:top_k] if top_k is not None else kept


def soft_scores(answers: list[str], answer_index: dict[str, int]) -> dict[int, float]:
    """{answer index: official VQA accuracy of predicting that answer} for the answers scoring > 0.

    The candidates are the human answers normalised and as given (the metric leaves them as
    given when all 10 agree), restricted to the vocabulary.
    """
    candidates = {normalize_answer(a) for a in answers} | {clean_whitespace(a) for a in answers}
    scores = {}
    for answer in candidates:
        if answer in answer_index:
            score = vqa_accuracy(answer, answers)
            if score > 0:
                scores[answer_index[answer]] = score
    return scores


def best_answer(scores: dict[int, float], preferred: int | None) -> int:
    """Index of the highest score; ties go to ``preferred`` (the annotation's multiple-choice
    answer), then to the more frequent answer (lower index)."""
    return max(scores, key=lambda i: (scores[i], i == preferred, -i))


def load_features(path: Path) -> torch.Tensor:
    """A feature file as a (D, h, w) float tensor: (D,) → (D, 1, 1); (K, D) regions → (D, K, 1);
    ``.npz`` regions with boxes → (D + 4, K, 1)."""
    if path.suffix == ".npz":
        array = read_regions(path)
    else:
        array = np.load(path) if path.suffix == ".npy" else torch.load(path, map_location="cpu", weights_only=True)
    features = torch.as_tensor(array, dtype=torch.float32)
    check_finite(path, features.numpy())
    if features.ndim == 1:
        return features[:, None, None]
    if features.ndim == 2:
        return features.t()[:, :, None].contiguous()
    if features.ndim == 3:
        return features
    raise ValueError(f"{path}: expected features of shape (D,), (K, D) or (D, h, w), got {tuple(features.shape)}")


class VQAv2Split(Dataset):
    """One split. Items: image (3, S, S) normalised, or features (D, h, w); question token ids;
    image_id; target (best answer index); soft_target (num_answers,) official accuracies.

    Also kept per question, in item order: ``targets``, ``image_ids``, ``question_ids``,
    ``answers`` (the human answers as given), ``answer_types``, ``question_types``.
    """

    def __init__(self, *, records: list[dict], questions: list[list[int]], scores: list[dict[int, float]],
                 targets: list[int], num_answers: int, files: dict[int, Path], image_size: int | None):
        self.questions = questions
        self.scores = scores
        self.targets = targets
        self.num_answers = num_answers
        self.files = files
        self.image_size = image_size  # None: the files hold precomputed features
        self.with_boxes = all(path.suffix == ".npz" for path in files.values())  # region files with boxes
        self.image_ids = [r["image_id"] for r in records]
        self.question_ids = [r["question_id"] for r in records]
        self.answers = [r["answers"] for r in records]
        self.answer_types = [r["answer_type"] for r in records]
        self.question_types = [r["question_type"] for r in records]
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
        # Read by the feature cache: what was done to the pixels.
        self.transform_key = f"resize {image_size}x{image_size} bilinear, ImageNet mean/std {IMAGENET_MEAN}/{IMAGENET_STD}"

    def __len__(self) -> int:
        return len(self.questions)

    def load_image(self, image_id: int) -> torch.Tensor:
        path = self.files[image_id]
        if self.image_size is None:
            return load_features(path)
        try:
            with open_rgb(path, f"image_id {image_id}") as img:
                rgb = img.resize((self.image_size, self.image_size), Image.BILINEAR)
        except ConfigError as err:
            raise ConfigError(f"vqa_v2: {err}") from None
        image = torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float().div_(255)  # (3, S, S)
        return (image - self.mean) / self.std

    def item_without_image(self, index: int) -> dict:
        soft = torch.zeros(self.num_answers)
        for answer, score in self.scores[index].items():
            soft[answer] = score
        return {"question": self.questions[index], "image_id": self.image_ids[index],
                "target": self.targets[index], "soft_target": soft}

    def __getitem__(self, index: int) -> dict:
        item = {**self.item_without_image(index), "image": self.load_image(self.image_ids[index])}
        if self.with_boxes:
            item["boxes"] = boxes_of(item["image"])
        return item

    def image_fingerprint(self) -> str:
        """Hash of the image files used (path, size, modification time): changes when an image does."""
        digest = hashlib.sha1()
        for image_id in sorted(set(self.image_ids)):
            path = self.files[image_id]
            stat = path.stat()
            digest.update(f"{image_id}:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns};".encode())
        return digest.hexdigest()


@register_dataset
def vqa_v2(
    *,
    root: str = "vqa_v2",
    train_questions: str = "v2_OpenEnded_mscoco_train2014_questions.json",
    train_annotations: str = "v2_mscoco_train2014_annotations.json",
    train_images: str = "train2014",
    val_questions: str = "v2_OpenEnded_mscoco_val2014_questions.json",
    val_annotations: str = "v2_mscoco_val2014_annotations.json",
    val_images: str = "val2014",
    train_features: str | None = None,
    val_features: str | None = None,
    image_size: int = 224,
    answer_top_k: int | None = 3000,
    answer_min_count: int = 1,
    max_question_len: int | None = None,
    max_train_samples: int | None = None,
    max_val_samples: int | None = None,
    group_by_image: bool = True,
) -> DataSplits:
    """VQA v2 from the official questions/annotations JSON files and COCO images (or feature files).

    root: folder holding the files below (relative paths: from the data root, ``$VQALAB_DATA`` or data/).
    train_questions / train_annotations / val_questions / val_annotations: JSON files under root.
    train_images / val_images: COCO image folders under root (COCO_<split>2014_<12-digit id>.jpg).
    train_features / val_features: folders of precomputed per-image feature files under root, used
        instead of the images (give both or neither).
    image_size: images are resized to image_size × image_size (ignored with features).
    answer_top_k: keep the K most frequent normalised training answers (None: no limit).
    answer_min_count: keep answers given at least this many times in the training split.
    max_question_len: truncate questions to this many tokens (None: keep all; lab note 001 used 12).
    max_train_samples / max_val_samples: use a fixed random subset of questions (None: all).
    group_by_image: batch the questions of one image together so the encoder runs once per image.
    """
    base = resolve_data(root)
    if (train_features is None) != (val_features is None):
        raise ConfigError(f"vqa_v2: train_features = {train_features!r}, val_features = {val_features!r}: give both or neither")
    for key, value in (("image_size", image_size), ("answer_min_count", answer_min_count),
                       ("answer_top_k", answer_top_k), ("max_question_len", max_question_len)):
        if value is not None and value < 1:
            raise ConfigError(f"vqa_v2: {key} = {value}: expected at least 1")
    use_features = train_features is not None

    splits = {}
    for split, (q_file, a_file, images, features, limit) in {
        "train": (train_questions, train_annotations, train_images, train_features, max_train_samples),
        "val": (val_questions, val_annotations, val_images, val_features, max_val_samples),
    }.items():
        records = load_split(base / q_file, base / a_file)
        records = [records[i] for i in fixed_subset(len(records), limit)]
        folder = base / (features if use_features else images)
        files = index_files(folder, FEATURE_FILE if use_features else IMAGE_FILE,
                            "feature" if use_features else "image")
        for r in records:
            if r["image_id"] not in files:
                expected = f"a file ending in {r['image_id']:012d}.npy/.pt/.npz" if use_features else \
                    f"COCO_{folder.name}_{r['image_id']:012d}.jpg"
                raise ConfigError(f"vqa_v2: image_id {r['image_id']} (question_id {r['question_id']}) has no "
                                  f"{'feature file' if use_features else 'image'} in {folder} (expected {expected})")
        splits[split] = (records, files)

    train_records = splits["train"][0]
    answers = build_answer_vocab([r["answers"] for r in train_records], answer_top_k, answer_min_count)
    if not answers:
        raise ConfigError(f"vqa_v2: no training answer is given {answer_min_count} or more times: lower answer_min_count")
    answer_index = {a: i for i, a in enumerate(answers)}
    vocab = Vocabulary.build(r["question"] for r in train_records)

    def make(split: str) -> tuple[VQAv2Split, int]:
        records, files = splits[split]
        kept, scores, targets = [], [], []
        for r in records:
            s = soft_scores(r["answers"], answer_index)
            if not s:
                continue  # no vocabulary answer scores above 0: nothing the model could get right
            kept.append(r)
            scores.append(s)
            targets.append(best_answer(s, answer_index.get(normalize_answer(r["multiple_choice_answer"]))))
        questions = [vocab.encode(r["question"])[:max_question_len] for r in kept]
        dataset = VQAv2Split(records=kept, questions=questions, scores=scores, targets=targets,
                             num_answers=len(answers), files=files, image_size=None if use_features else image_size)
        return dataset, len(records) - len(kept)

    train, train_dropped = make("train")
    val, val_dropped = make("val")
    if len(train) == 0 or len(val) == 0:
        raise ConfigError(f"vqa_v2: no {'training' if len(train) == 0 else 'validation'} question has an answer in "
                          f"the vocabulary of {len(answers)} answers: raise answer_top_k or lower answer_min_count")
    model_kwargs = {"vocab_size": len(vocab), "num_answers": len(answers)}
    if use_features:
        model_kwargs["image_dim"] = int(val.load_image(val.image_ids[0]).shape[0])
    log.info("vqa_v2: %d train / %d val questions, %d answers, %d question tokens",
             len(train), len(val), len(answers), len(vocab))
    return DataSplits(
        train=train, val=val, collate=collate_vqa,
        input_keys=REGION_INPUT_KEYS if train.with_boxes and val.with_boxes else
        ("image", "question", "question_len", "image_id"),
        model_kwargs=model_kwargs, class_names=answers,
        train_groups=train.image_ids if group_by_image else None,
        vocab=vocab.tokens,
        info={"dataset": "vqa_v2", "root": str(base), "train_questions": len(train), "val_questions": len(val),
              "train_dropped_no_vocab_answer": train_dropped, "val_dropped_no_vocab_answer": val_dropped,
              "val_kept_fraction": len(val) / (len(val) + val_dropped), "num_answers": len(answers),
              "image_size": None if use_features else image_size, "features": use_features},
    )


STATUS_CACHE_VERSION = 1  # bump when the counts below change meaning


def count_split(questions_path: Path, annotations_path: Path) -> tuple[int, set[str]]:
    """(questions, the distinct normalised answers) of one split's official files."""
    questions = read_official_json(questions_path, "questions", "questions")
    annotations = read_official_json(annotations_path, "annotations", "annotations")
    return len(questions), {normalize_answer(a["answer"]) for ann in annotations for a in ann["answers"]}


@register_status("vqa_v2", family="vqa", targets="soft")
def vqa_v2_status(spec: dict) -> DataStatus:
    """Found when the four JSON files and both image (or feature) folders are there.

    The fingerprint covers the JSON files' sizes and dates and each folder's file count and date
    (cheap for 120k images); the counts, which need the JSON parsed, are cached under that key.
    """
    base = resolve_data(spec["root"])
    use_features = spec["train_features"] is not None
    folders = [spec["train_features"], spec["val_features"]] if use_features else [spec["train_images"], spec["val_images"]]
    json_files = [spec["train_questions"], spec["train_annotations"], spec["val_questions"], spec["val_annotations"]]
    missing = [name for name in json_files if not (base / name).is_file()] + \
              [f"{name}/" for name in folders if not (base / name).is_dir()]
    if missing:
        what = "feature files named like the images (…000000000009.npy)" if use_features else \
            "COCO images (COCO_train2014_000000000009.jpg …)"
        return DataStatus(name="vqa_v2", found=False, where=str(base),
                          expected=f"missing {', '.join(missing)} (the official VQA v2 question and annotation "
                                   f"JSON files; {what} in {' and '.join(f + '/' for f in folders)})")
    file_stats = [(name, (base / name).stat().st_size, (base / name).stat().st_mtime_ns) for name in json_files]
    images = {name: sum(1 for p in (base / name).iterdir()
                        if (FEATURE_FILE if use_features else IMAGE_FILE).search(p.name)) for name in folders}
    folder_stats = [(name, images[name], (base / name).stat().st_mtime_ns) for name in folders]
    fingerprint = short_hash([file_stats, folder_stats])
    cached = cache_dir() / "data_status" / f"vqa_v2-{STATUS_CACHE_VERSION}-{fingerprint}.json"
    if cached.is_file():
        counts = json.loads(cached.read_text())
    else:
        train_questions, train_answers = count_split(base / json_files[0], base / json_files[1])
        val_questions, _ = count_split(base / json_files[2], base / json_files[3])
        counts = {"train_questions": train_questions, "val_questions": val_questions,
                  "train_images": images[folders[0]], "val_images": images[folders[1]],
                  "answers": len(train_answers - {""})}  # distinct normalised training answers
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(counts))
        tmp.replace(cached)  # atomic: a concurrent reader never sees half a file
    return DataStatus(name="vqa_v2", found=True, where=str(base), counts=counts, fingerprint=fingerprint,
                      detail="feature files" if use_features else "images")
