"""Image normalisation constants and augmentations shared by all data sets.

Images are stored as uint8 (3, H, W) tensors; ``ImageTransform`` turns one into the normalised
float tensor a model takes, with the training augmentations (horizontal flip, random resized
crop) when asked. Randomness comes from torch's global generator, which the training loop seeds.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

# ImageNet statistics (torchvision's pretrained weights expect them).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# face.evoLVe / InsightFace input normalisation ((x - 127.5) / 127.5): what IR backbones trained
# for face recognition expect.
FACE_MEAN = (0.5, 0.5, 0.5)
FACE_STD = (0.5, 0.5, 0.5)
NORMALIZATIONS = {"face": (FACE_MEAN, FACE_STD), "imagenet": (IMAGENET_MEAN, IMAGENET_STD)}

@contextmanager
def open_rgb(path: Path, what: str = "image"):
    """``path`` opened as an RGB PIL image; a damaged file or a decompression bomb (more pixels than
    ``PIL.Image.MAX_IMAGE_PIXELS``, which PIL only warns about up to twice that) is refused as a
    ``ConfigError`` naming the file (``what``: e.g. "image_id 25") before it is decoded."""
    from vqalab.registry import ConfigError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                rgb = img.convert("RGB")
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ConfigError(f"{path}: cannot read the image ({what}): more than {Image.MAX_IMAGE_PIXELS:,} pixels "
                          "(PIL.Image.MAX_IMAGE_PIXELS), so it is refused as a possible decompression bomb") from None
    except OSError as err:  # a truncated or damaged file: name it (this may be mid-epoch)
        raise ConfigError(f"{path}: cannot read the image ({what}): {err}") from None
    yield rgb


FLIP_PROB = 0.5  # horizontal flip: expressions are (nearly) mirror-symmetric
CROP_SCALE = (0.8, 1.0)  # random resized crop keeps this fraction of the area: faces stay in view
CROP_RATIO = (3 / 4, 4 / 3)  # aspect-ratio range of the crop (torchvision's default)
CROP_ATTEMPTS = 10  # tries to draw a crop that fits, then the whole image (torchvision's rule)


def random_resized_crop_box(height: int, width: int, scale: tuple[float, float] = CROP_SCALE,
                            ratio: tuple[float, float] = CROP_RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop with area fraction in ``scale`` and aspect ratio in ``ratio``
    (log-uniform), as torchvision's ``RandomResizedCrop``; the whole image when none fits."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(CROP_ATTEMPTS):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1]).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1]).item())
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,)).item())
            left = int(torch.randint(0, width - w + 1, (1,)).item())
            return top, left, h, w
    return 0, 0, height, width


class ImageTransform:
    """uint8 (3, H, W) → normalised float32 (3, H, W), optionally augmented.

    normalization: "face" (mean = std = 0.5, as IR face backbones expect) or "imagenet".
    flip: random horizontal flip with probability ``FLIP_PROB``.
    crop_scale: area range of a random resized crop back to (H, W) (None: no crop).
    """

    def __init__(self, *, normalization: Literal["face", "imagenet"] = "face", flip: bool = False,
                 crop_scale: tuple[float, float] | None = None):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization {normalization!r}: expected one of {', '.join(NORMALIZATIONS)}")
        if crop_scale is not None and not 0 < crop_scale[0] <= crop_scale[1] <= 1:
            raise ValueError(f"crop_scale {crop_scale}: expected 0 < low ≤ high ≤ 1")
        mean, std = NORMALIZATIONS[normalization]
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.flip = flip
        self.crop_scale = crop_scale

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        if self.crop_scale is not None:
            top, left, h, w = random_resized_crop_box(height, width, self.crop_scale)
            image = TF.resized_crop(image, top, left, h, w, [height, width], antialias=True)
        if self.flip and torch.rand(()).item() < FLIP_PROB:
            image = image.flip(-1)
        return (image.float() / 255 - self.mean) / self.std

    def __repr__(self) -> str:
        return f"ImageTransform(flip={self.flip}, crop_scale={self.crop_scale})"
