"""easy-VQA (the ``easy-vqa`` package): 64×64 shape images, 38,575 train / 9,673 test questions,
13 answers. The package has no validation split, so the test split is the validation split."""

from __future__ import annotations

import copy
import functools
from importlib import metadata

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
from vqalab.data.transforms import ImageTransform
from vqalab.data.vqa_batch import collate_vqa
from vqalab.io import json_digest, write_atomically
from vqalab.paths import CACHE_KEY_DIGITS, cache_dir
from vqalab.text import Vocabulary

# The subset taken by max_*_samples is the same for every run seed, so runs stay comparable.


def load_split(split: str) -> tuple[list[str], list[str], list[int], dict[int, str]]:
    import easy_vqa

    if split == "train":
        texts, answers, image_ids = easy_vqa.get_train_questions()
        paths = easy_vqa.get_train_image_paths()
    else:
        texts, answers, image_ids = easy_vqa.get_test_questions()
        paths = easy_vqa.get_test_image_paths()
    return texts, answers, image_ids, paths


def decode_images(paths: dict[int, str], split: str) -> tuple[np.ndarray, dict[int, int]]:
    """All images of a split as one (N, 3, 64, 64) uint8 array, cached on disk after the first call."""
    ids = sorted(paths)
    key = json_digest([[i, paths[i]] for i in ids], length=CACHE_KEY_DIGITS)
    cached = cache_dir() / "easy_vqa" / f"{split}-{key}.npy"
    if cached.is_file():
        array = np.load(cached)
    else:
        array = np.stack([np.asarray(Image.open(paths[i]).convert("RGB")).transpose(2, 0, 1) for i in ids])
        write_atomically(cached, lambda f: np.save(f, array))  # a concurrent reader never sees half a file
    return array, {image_id: row for row, image_id in enumerate(ids)}


class QuestionImageDataset(Dataset):
    """Items: image (3, H, W) normalised float, question token ids, image_id, target answer index."""

    def __init__(self, images: np.ndarray, row_of_image: dict[int, int], questions: list[list[int]],
                 image_ids: list[int], targets: list[int]):
        self.images = torch.from_numpy(images)
        self.row_of_image = row_of_image
        self.questions = questions
        self.image_ids = image_ids
        self.targets = targets
        self.normalize = ImageTransform(normalization="imagenet")  # no augmentation

    def __len__(self) -> int:
        return len(self.questions)

    def __getitem__(self, index: int) -> dict:
        image_id = self.image_ids[index]
        return {
            "image": self.normalize(self.images[self.row_of_image[image_id]]),
            "question": self.questions[index],
            "image_id": image_id,
            "target": self.targets[index],
        }


@register_dataset
def easy_vqa(
    *,
    max_train_samples: int | None = None,
    max_val_samples: int | None = None,
    group_by_image: bool = True,
) -> DataSplits:
    """easy-VQA from the installed package.

    max_train_samples / max_val_samples: use a fixed random subset of questions (None: all).
    group_by_image: batch the questions of one image together so the encoder runs once per image.
    """
    answers = load_split_answers()
    train_text, train_ans, train_img, train_paths = load_split("train")
    val_text, val_ans, val_img, val_paths = load_split("test")
    train_keep = fixed_subset(len(train_text), max_train_samples)
    val_keep = fixed_subset(len(val_text), max_val_samples)
    vocab = Vocabulary.build(train_text[i] for i in train_keep)
    answer_index = {a: i for i, a in enumerate(answers)}

    def make(texts, ans, imgs, paths, keep, split):
        images, rows = decode_images(paths, split)
        return QuestionImageDataset(
            images, rows,
            [vocab.encode(texts[i]) for i in keep],
            [imgs[i] for i in keep],
            [answer_index[ans[i]] for i in keep],
        )

    train = make(train_text, train_ans, train_img, train_paths, train_keep, "train")
    val = make(val_text, val_ans, val_img, val_paths, val_keep, "test")
    return DataSplits(
        train=train,
        val=val,
        collate=collate_vqa,
        input_keys=("image", "question", "question_len", "image_id"),
        model_kwargs={"vocab_size": len(vocab), "num_answers": len(answers)},
        class_names=answers,
        train_groups=train.image_ids if group_by_image else None,
        vocab=vocab.tokens,
        info={"dataset": "easy_vqa", "train_questions": len(train), "val_questions": len(val),
              "val_split": "test", "image_size": int(train.images.shape[-1])},
    )


def load_split_answers() -> list[str]:
    import easy_vqa

    return easy_vqa.get_answers()


@functools.lru_cache(maxsize=1)
def package_status() -> DataStatus:
    """The installed package's status, read once per process (its files do not change under it)."""
    try:
        version = metadata.version("easy-vqa")
        _, train_answers, train_images = load_split("train")[:3]
        _, val_answers, val_images = load_split("test")[:3]
    except (ImportError, metadata.PackageNotFoundError):
        return DataStatus(name="easy_vqa", found=False, where="the easy-vqa package",
                          expected="not installed: pip install easy-vqa")
    counts = {"train_questions": len(train_answers), "val_questions": len(val_answers),
              "train_images": len(set(train_images)), "val_images": len(set(val_images)),
              "answers": len(load_split_answers())}
    return DataStatus(name="easy_vqa", found=True, where=f"easy-vqa package {version}", counts=counts,
                      fingerprint=short_hash([version, counts]))


@register_status("easy_vqa", family="vqa")
def easy_vqa_status(spec: dict) -> DataStatus:
    """Found when the ``easy-vqa`` package is installed (it embeds its images and questions)."""
    return copy.deepcopy(package_status())
