"""RAF-DB basic (Real-world Affective Faces, seven basic expressions) from local files.

Two layouts are read:

- official: ``EmoLabel/list_patition_label.txt`` (sic) with lines ``train_00001.jpg 5`` / ``test_0001.jpg 1``
  (labels 1-7 = Surprise, Fear, Disgust, Happiness, Sadness, Anger, Neutral) and images at
  ``Image/aligned/train_00001_aligned.jpg`` (or ``Image/original/train_00001.jpg``);
- ImageFolder: ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (or ``val/``), where ``<class>``
  is the label number 1-7 or the expression's name (``happy``, ``Happiness``, …).

RAF-DB has no validation split; the test split is the validation split, as in the literature.
Classes are always reported in ``EXPRESSIONS`` order (label k → class index k - 1). Decoded images
are cached under ``vqalab.paths.cache_dir()``, keyed by the file list, sizes, dates and image size,
and memory-mapped when read back (a full-size split is 577 MB at 112 px).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from vqalab.data import (
    DataSplits,
    DataStatus,
    fixed_subset,
    register_dataset,
    register_status,
    short_hash,
)
from vqalab.data.expressions import EXPRESSIONS, NUM_EXPRESSIONS, expression_splits
from vqalab.data.transforms import open_rgb
from vqalab.io import json_digest, write_atomically
from vqalab.paths import CACHE_KEY_DIGITS, cache_dir, resolve_data
from vqalab.registry import ConfigError

log = logging.getLogger(__name__)

LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"  # the official spelling
ALIGNED_DIR = Path("Image") / "aligned"
ORIGINAL_DIR = Path("Image") / "original"
SPLIT_PREFIXES = {"train": "train_", "test": "test_"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
VAL_FOLDERS = ("test", "val")  # ImageFolder: the first one present is the validation split
DECODE_VERSION = 1  # bump when decoding changes: old cache files are then ignored
# ImageFolder class folder names (lower case) → class index in EXPRESSIONS order.
CLASS_FOLDER_ALIASES = {
    **{str(k + 1): k for k in range(NUM_EXPRESSIONS)},
    **{name.lower(): k for k, name in enumerate(EXPRESSIONS)},
    "surprised": 0, "fearful": 1, "disgusted": 2, "happy": 3, "sad": 4, "angry": 5,
}


def label_help() -> str:
    return ", ".join(f"{k + 1} = {name}" for k, name in enumerate(EXPRESSIONS))


def read_label_file(root: Path, aligned: bool = True) -> dict[str, list[tuple[Path, int]]]:
    """Parse the official label file: {"train": [(image path, class index)], "test": [...]}.

    Raises ``ConfigError`` naming the file and line for a missing file, a malformed line, a
    label outside 1-7 or an unknown split prefix, and listing images that are listed but missing.
    """
    label_file = root / LABEL_FILE
    if not label_file.is_file():
        raise ConfigError(f"RAF-DB label file not found: {label_file} (expected the official layout "
                          f"{LABEL_FILE} + {ALIGNED_DIR}/, or train/<class>/ and test/<class>/ folders)")
    image_dir = root / (ALIGNED_DIR if aligned else ORIGINAL_DIR)
    try:
        text = label_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{label_file}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
                          f"{err.start}): expected lines '<image name> <label 1-7>'") from None
    splits: dict[str, list[tuple[Path, int]]] = {split: [] for split in SPLIT_PREFIXES}
    # One listing of the image folder instead of a stat per listed image (15,339 at full size).
    present = {entry.name for entry in os.scandir(image_dir) if entry.is_file()} if image_dir.is_dir() else set()
    missing: list[str] = []
    first_seen: dict[str, tuple[int, int]] = {}  # image name → (line, label) where first listed
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{label_file}:{line_no}"
        if len(fields) != 2:
            raise ConfigError(f"{where}: expected '<image name> <label 1-7>', got {line.strip()!r}")
        name, label_text = fields
        try:
            label = int(label_text)
        except ValueError:
            raise ConfigError(f"{where}: label {label_text!r} of {name} is not a number: expected 1-7 "
                              f"({label_help()})") from None
        if not 1 <= label <= NUM_EXPRESSIONS:
            raise ConfigError(f"{where}: label {label} of {name} is outside 1-{NUM_EXPRESSIONS} ({label_help()})")
        if name in first_seen:
            # Listed twice the image would count twice, or with two labels teach both.
            seen_line, seen_label = first_seen[name]
            labels = f"label {seen_label} and label {label}" if seen_label != label else f"label {label} both times"
            raise ConfigError(f"{label_file}: image {name} is listed twice, at lines {seen_line} and {line_no} "
                              f"({labels}): keep one line")
        first_seen[name] = (line_no, label)
        split = next((s for s, prefix in SPLIT_PREFIXES.items() if name.startswith(prefix)), None)
        if split is None:
            raise ConfigError(f"{where}: image name {name!r} starts with neither "
                              f"{' nor '.join(repr(p) for p in SPLIT_PREFIXES.values())}")
        path = image_dir / (f"{Path(name).stem}_aligned{Path(name).suffix}" if aligned else name)
        if path.name not in present:
            missing.append(f"{name} (line {line_no}) → {path}")
        splits[split].append((path, label - 1))
    if missing:
        raise ConfigError(f"{label_file}: {len(missing)} listed image(s) not found, e.g. {'; '.join(missing[:3])}")
    for split, items in splits.items():
        if not items:
            raise ConfigError(f"{label_file}: the {split} split is empty (no image name starts with "
                              f"{SPLIT_PREFIXES[split]!r})")
    return splits


def read_image_folders(root: Path) -> dict[str, list[tuple[Path, int]]]:
    """ImageFolder layout: {"train": [(image path, class index)], "test": [...]} from class folders."""
    val_dir = next((root / name for name in VAL_FOLDERS if (root / name).is_dir()), None)
    if not (root / "train").is_dir() or val_dir is None:
        raise ConfigError(f"{root}: expected train/<class>/ and test/<class>/ (or val/<class>/) folders")
    splits = {}
    for split, folder in (("train", root / "train"), ("test", val_dir)):
        items = []
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            index = CLASS_FOLDER_ALIASES.get(class_dir.name.lower())
            if index is None:
                raise ConfigError(f"{class_dir}: unknown class folder {class_dir.name!r}: expected 1-7 or one of "
                                  f"{', '.join(EXPRESSIONS)} ({', '.join(a for a in CLASS_FOLDER_ALIASES if not a.isdigit())})")
            items += [(p, index) for p in sorted(class_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not items:
            raise ConfigError(f"{folder}: the {split} split is empty (no {'/'.join(IMAGE_SUFFIXES)} files "
                              f"in its class folders)")
        splits[split] = items
    return splits


def detect_layout(root: Path) -> Literal["official", "imagefolder"]:
    if (root / LABEL_FILE).is_file():
        return "official"
    if (root / "train").is_dir():
        return "imagefolder"
    if not root.is_dir():
        raise ConfigError(f"RAF-DB root not found: {root} (set $VQALAB_DATA or data.root; `vqalab data` "
                          f"says what goes where)")
    raise ConfigError(f"{root}: not a RAF-DB folder: label file {LABEL_FILE} not found and no train/<class>/ "
                      f"folders (expected the official layout or the ImageFolder layout)")


def read_splits(folder: Path, layout: str, aligned: bool) -> tuple[str, dict[str, list[tuple[Path, int]]]]:
    """(layout found, {"train": [(image path, class index)], "test": [...]})."""
    if layout == "auto":
        layout = detect_layout(folder)
    return layout, read_label_file(folder, aligned) if layout == "official" else read_image_folders(folder)


EXPECTED_FILES = (f"the RAF-DB basic folder here: {LABEL_FILE.as_posix()} and {ALIGNED_DIR.as_posix()}/train_00001_aligned.jpg … "
                  f"(official layout), or train/<class>/*.jpg and test/<class>/*.jpg (ImageFolder layout, "
                  f"<class> = 1-7 or the expression's name)")


@register_status("rafdb", family="faces")
def rafdb_status(spec: dict) -> DataStatus:
    """Found when the folder reads as RAF-DB; fingerprint over the image files' names, sizes and dates."""
    folder = resolve_data(spec["root"])
    if not folder.exists():
        return DataStatus(name="rafdb", found=False, where=str(folder), expected=f"not found; put {EXPECTED_FILES}")
    try:
        layout, splits = read_splits(folder, spec["layout"], spec["aligned"])
    except ConfigError as err:
        return DataStatus(name="rafdb", found=False, where=str(folder), expected=f"{err}; expected {EXPECTED_FILES}")
    files = [(p.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns, t)
             for items in splits.values() for p, t in items for stat in (p.stat(),)]  # one stat per image
    classes = {t for items in splits.values() for _, t in items}
    return DataStatus(name="rafdb", found=True, where=str(folder), fingerprint=short_hash([layout, files]),
                      counts={"train_images": len(splits["train"]), "test_images": len(splits["test"]),
                              "classes": len(classes)},
                      detail=f"{layout} layout")


def decode_images(paths: list[Path], size: int, use_cache: bool = True) -> np.ndarray:
    """uint8 (N, 3, size, size), resized with a bicubic filter; cached on disk after the first call."""
    folders: dict[Path, Path] = {}  # each folder resolved once (15,339 files share two folders)
    stats = []
    for p in paths:
        folder = folders.get(p.parent) or folders.setdefault(p.parent, p.parent.resolve())
        stat = p.stat()
        stats.append(f"{folder / p.name}:{stat.st_size}:{stat.st_mtime_ns}")
    key = json_digest([size, DECODE_VERSION, stats], length=CACHE_KEY_DIGITS)
    cached = cache_dir() / "rafdb" / f"{size}px-{len(paths)}-{key}.npy"
    if use_cache and cached.is_file():
        # Memory-mapped copy-on-write: pages are read when a batch needs them, not all up front.
        return np.load(cached, mmap_mode="c")
    array = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(paths):
        with open_rgb(path, f"RAF-DB image {path.name}") as img:
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BICUBIC)
            array[i] = np.asarray(img).transpose(2, 0, 1)
    if use_cache:  # atomic: a concurrent reader never sees half a file
        write_atomically(cached, lambda f: np.save(f, array))
    return array


@register_dataset
def rafdb(
    *,
    root: str = "RAF-DB/basic",
    layout: Literal["auto", "official", "imagefolder"] = "auto",
    aligned: bool = True,
    image_size: int = 112,
    max_train_samples: int | None = None,
    max_val_samples: int | None = None,
    augment: bool = True,
    normalization: Literal["face", "imagenet"] = "face",
    use_cache: bool = True,
) -> DataSplits:
    """RAF-DB basic from a local folder; the test split is the validation split.

    root: the RAF-DB ``basic`` folder (relative paths: from the data root, ``$VQALAB_DATA`` or data/).
    layout: "official" (EmoLabel/list_patition_label.txt + Image/aligned/), "imagefolder"
    (train/<class>/, test/<class>/) or "auto" (whichever is there). aligned: official layout only,
    read Image/aligned/*_aligned.jpg (100×100) rather than Image/original/.
    image_size: images are resized to this, and the model is built for it (112 for IR-50).
    max_train_samples / max_val_samples: a fixed random subset (None: all).
    augment: random flip + resized crop on the train split. normalization: "face" or "imagenet".
    use_cache: keep decoded arrays under the cache folder.
    """
    if not 16 <= image_size <= 512:
        raise ConfigError(f"data 'rafdb': image_size = {image_size}: expected 16 … 512")
    for key, value in (("max_train_samples", max_train_samples), ("max_val_samples", max_val_samples)):
        if value is not None and value < 1:
            raise ConfigError(f"data 'rafdb': {key} = {value}: expected ≥ 1 or null")
    folder = resolve_data(root)
    layout, splits = read_splits(folder, layout, aligned)
    train_items = [splits["train"][i] for i in fixed_subset(len(splits["train"]), max_train_samples)]
    val_items = [splits["test"][i] for i in fixed_subset(len(splits["test"]), max_val_samples)]
    log.info("RAF-DB %s layout at %s: %d train, %d test images", layout, folder, len(train_items), len(val_items))
    return expression_splits(
        train_images=decode_images([p for p, _ in train_items], image_size, use_cache),
        train_targets=[t for _, t in train_items],
        val_images=decode_images([p for p, _ in val_items], image_size, use_cache),
        val_targets=[t for _, t in val_items],
        augment=augment, normalization=normalization,
        info={"dataset": "rafdb", "root": str(folder), "layout": layout, "aligned": aligned,
              "val_split": "test"},
    )
