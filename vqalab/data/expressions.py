"""The seven basic expressions and the ``DataSplits`` every FER data set returns (synthetic faces,
RAF-DB): the model takes ``image`` only, classes in ``EXPRESSIONS`` order."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from vqalab.data import DataSplits
from vqalab.data.transforms import CROP_SCALE, ImageTransform

# RAF-DB's basic-expression labels 1-7, in this order; every FER data set reports classes so.
EXPRESSIONS = ("Surprise", "Fear", "Disgust", "Happiness", "Sadness", "Anger", "Neutral")
NUM_EXPRESSIONS = len(EXPRESSIONS)


class ExpressionDataset(Dataset):
    """Items: ``image`` (3, H, W) float from ``transform``, ``target`` class index, ``index``.

    images: uint8 (N, 3, H, W). targets: class index of each image (``EXPRESSIONS`` order).
    transform: uint8 image → float tensor (augmentation + normalisation).
    """

    def __init__(self, *, images: np.ndarray | torch.Tensor, targets: list[int], transform: ImageTransform):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images but {len(targets)} targets")
        self.images = torch.as_tensor(images)
        self.targets = [int(t) for t in targets]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict:
        return {"image": self.transform(self.images[index]), "target": self.targets[index], "index": index}


def collate_expressions(items: list[dict]) -> dict:
    return {
        "image": torch.stack([it["image"] for it in items]),  # (B, 3, H, W)
        "target": torch.tensor([it["target"] for it in items], dtype=torch.long),
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
    }


def expression_splits(*, train_images, train_targets, val_images, val_targets, augment: bool,
                      normalization: Literal["face", "imagenet"], info: dict) -> DataSplits:
    """``DataSplits`` for a FER data set: the model takes ``image`` only; classes in ``EXPRESSIONS`` order.

    The model's ``img_size`` comes from the images (``model_kwargs``): it cannot differ from them.
    """
    train_transform = ImageTransform(normalization=normalization, flip=augment,
                                     crop_scale=CROP_SCALE if augment else None)
    val_transform = ImageTransform(normalization=normalization)
    train = ExpressionDataset(images=train_images, targets=train_targets, transform=train_transform)
    val = ExpressionDataset(images=val_images, targets=val_targets, transform=val_transform)
    counts = {split: np.bincount(ds.targets, minlength=NUM_EXPRESSIONS).tolist() for split, ds in
              (("train", train), ("val", val))}
    return DataSplits(
        train=train, val=val, collate=collate_expressions, input_keys=("image",),
        model_kwargs={"num_classes": NUM_EXPRESSIONS, "img_size": int(train.images.shape[-1])},
        class_names=list(EXPRESSIONS),
        info={**info, "train_images": len(train), "val_images": len(val),
              "image_size": int(train.images.shape[-1]), "augment": augment, "normalization": normalization,
              "train_class_counts": counts["train"], "val_class_counts": counts["val"]},
    )
