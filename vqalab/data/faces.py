"""Facial-expression data: the seven expression classes, the image dataset, and synthetic faces.

Synthetic faces are the embedded default FER data set: procedurally drawn faces showing RAF-DB's
seven basic expressions through eyes, brows and mouth, deterministic from a seed. Each sample
draws an identity (face shape, skin, hair, feature placement), an expression at a random
intensity, a pose, a background with clutter, an optional occluder and pixel noise. The knobs of
``synthetic_faces`` set how hard the task is; the defaults are tuned so that a small IR-ViT
clearly beats a linear classifier on raw pixels (benchmarks/fer_synthetic.py).

Every sample comes from its own random stream ``(seed, split, index)``, so growing a split keeps
its first samples, and train and validation never share a stream. Generated arrays are cached
under ``vqalab.paths.cache_dir()``, keyed by every knob.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

from vqalab.data import DataSplits, DataStatus, register_dataset, register_status, short_hash
from vqalab.data.expressions import EXPRESSIONS, NUM_EXPRESSIONS, expression_splits
from vqalab.io import json_digest, write_atomically
from vqalab.paths import CACHE_KEY_DIGITS, cache_dir
from vqalab.registry import ConfigError

log = logging.getLogger(__name__)

GENERATOR_VERSION = 2  # bump when drawing changes: old cache files are then ignored
SPLIT_STREAM = {"train": 0, "val": 1}  # second word of each sample's seed
SUPERSAMPLE = 3  # draw at 3× and downsample with a box filter: anti-aliased edges
ELLIPSE_POINTS = 32  # polygon vertices per drawn ellipse
CURVE_POINTS = 12  # polyline vertices per brow / lip curve
BROW_WIDTH = 0.03  # line widths in face units
LIP_WIDTH = 0.024


# --- Expressions -------------------------------------------------------------------------------------
# Facial parameters in face units (1 = image size at scale 1; y grows downwards). An expression
# at intensity t is NEUTRAL + t · (EXPRESSION - NEUTRAL), plus per-sample variation.
@dataclass(frozen=True)
class Expression:
    eye_open: float  # eye height / eye width: 0.1 = nearly shut, 1 = round
    brow_raise: float  # brows move up by this (face units)
    brow_tilt: float  # inner brow ends move up (+, worry) or down (-, frown) by this
    brow_arch: float  # brow middle bulges up by this
    mouth_curve: float  # mouth corners move up (+, smile) or down (-) by this
    mouth_open: float  # gap between the lips at the middle
    mouth_width: float  # multiplier of the neutral mouth width
    mouth_asym: float  # the right corner moves up by this (disgust's one-sided sneer)
    teeth: float  # fraction of the open mouth shown as teeth
    wrinkle: float  # strength of nose-bridge wrinkles (0 none, 1 full)


NEUTRAL = Expression(eye_open=0.55, brow_raise=0.0, brow_tilt=0.0, brow_arch=0.006, mouth_curve=0.0,
                     mouth_open=0.0, mouth_width=1.0, mouth_asym=0.0, teeth=0.0, wrinkle=0.0)
EXPRESSION_PARAMS = {
    "Surprise": Expression(eye_open=1.0, brow_raise=0.05, brow_tilt=0.0, brow_arch=0.025, mouth_curve=0.0,
                           mouth_open=0.09, mouth_width=0.55, mouth_asym=0.0, teeth=0.0, wrinkle=0.0),
    "Fear": Expression(eye_open=0.95, brow_raise=0.03, brow_tilt=0.035, brow_arch=0.0, mouth_curve=-0.015,
                       mouth_open=0.04, mouth_width=1.25, mouth_asym=0.0, teeth=0.5, wrinkle=0.0),
    "Disgust": Expression(eye_open=0.3, brow_raise=-0.02, brow_tilt=-0.02, brow_arch=0.0, mouth_curve=-0.02,
                          mouth_open=0.012, mouth_width=0.9, mouth_asym=0.035, teeth=0.6, wrinkle=1.0),
    "Happiness": Expression(eye_open=0.32, brow_raise=0.008, brow_tilt=0.0, brow_arch=0.01, mouth_curve=0.055,
                            mouth_open=0.03, mouth_width=1.2, mouth_asym=0.0, teeth=0.7, wrinkle=0.0),
    "Sadness": Expression(eye_open=0.4, brow_raise=0.005, brow_tilt=0.04, brow_arch=-0.005, mouth_curve=-0.045,
                          mouth_open=0.0, mouth_width=0.95, mouth_asym=0.0, teeth=0.0, wrinkle=0.0),
    "Anger": Expression(eye_open=0.4, brow_raise=-0.025, brow_tilt=-0.045, brow_arch=-0.005, mouth_curve=-0.012,
                        mouth_open=0.018, mouth_width=0.95, mouth_asym=0.0, teeth=0.9, wrinkle=0.3),
    "Neutral": NEUTRAL,
}
# Per-sample spread of every expression parameter (standard deviation, face units): people
# express the same emotion differently, so the classes overlap near the neutral face.
EXPRESSION_SPREAD = Expression(eye_open=0.08, brow_raise=0.008, brow_tilt=0.008, brow_arch=0.005,
                               mouth_curve=0.01, mouth_open=0.008, mouth_width=0.08, mouth_asym=0.006,
                               teeth=0.1, wrinkle=0.1)


def expression_at(name: str, intensity: float, rng: np.random.Generator) -> Expression:
    """The parameters of ``name`` at ``intensity`` (0 = neutral, 1 = full), with per-sample spread."""
    full, neutral, spread = asdict(EXPRESSION_PARAMS[name]), asdict(NEUTRAL), asdict(EXPRESSION_SPREAD)
    values = {k: neutral[k] + intensity * (full[k] - neutral[k]) + spread[k] * rng.standard_normal()
              for k in full}
    for key in ("eye_open", "mouth_open", "teeth", "wrinkle", "mouth_width"):
        values[key] = max(values[key], 0.0)
    values["eye_open"] = max(values["eye_open"], 0.08)
    return Expression(**values)


# --- Difficulty ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Difficulty:
    """Knobs that make synthetic faces harder (see ``synthetic_faces`` for their meaning and defaults)."""

    pose_jitter: float
    scale_jitter: float
    noise_std: float
    occlusion_prob: float
    min_intensity: float
    clutter: int


FACE_ZOOM = 1.2  # face height ≈ the image height, like RAF-DB's aligned crops
MAX_ROLL_DEG = 15.0  # in-plane head rotation at pose_jitter 1
MAX_YAW = 0.035  # sideways shift of the features inside the face outline at pose_jitter 1
MAX_SHIFT = 0.06  # face centre moves by up to this fraction of the image at pose_jitter 1
OCCLUDER_SIZE = (0.15, 0.3)  # side of an occluding patch, fraction of the image
BRIGHTNESS = (0.75, 1.25)  # lighting multiplier range


def _rotate(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _ellipse(cx: float, cy: float, rx: float, ry: float, n: int = ELLIPSE_POINTS) -> np.ndarray:
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _color(rgb) -> tuple[int, int, int]:
    return tuple(int(np.clip(round(c * 255), 0, 255)) for c in rgb)


class FacePainter:
    """Draws polygons and lines given in face units onto a supersampled PIL canvas.

    A face-unit point p maps to pixels as ``size · (centre + scale · R(roll) · p)``.
    """

    def __init__(self, draw: ImageDraw.ImageDraw, size: int, centre: tuple[float, float], scale: float,
                 roll: float):
        self.draw, self.size, self.centre, self.scale, self.roll = draw, size, np.array(centre), scale, roll

    def to_pixels(self, points: np.ndarray) -> list[tuple[float, float]]:
        xy = self.size * (self.centre + self.scale * _rotate(np.asarray(points, dtype=float), self.roll))
        return [tuple(p) for p in xy]

    def polygon(self, points: np.ndarray, fill) -> None:
        self.draw.polygon(self.to_pixels(points), fill=_color(fill))

    def line(self, points: np.ndarray, fill, width: float) -> None:
        self.draw.line(self.to_pixels(points), fill=_color(fill), width=max(1, round(width * self.size * self.scale)),
                       joint="curve")


def draw_face(rng: np.random.Generator, label: int, size: int, difficulty: Difficulty) -> np.ndarray:
    """One synthetic face of expression ``EXPRESSIONS[label]``: uint8 (3, size, size)."""
    d = difficulty
    canvas = size * SUPERSAMPLE
    # Background: a random colour plus clutter blobs (they defeat a pixel template, not a CNN).
    background = rng.uniform(0.1, 0.9, 3)
    image = Image.new("RGB", (canvas, canvas), _color(background))
    draw = ImageDraw.Draw(image)
    plain = FacePainter(draw, canvas, (0.0, 0.0), 1.0, 0.0)
    for _ in range(rng.integers(0, d.clutter + 1)):
        cx, cy = rng.uniform(0, 1, 2)
        plain.polygon(_ellipse(cx, cy, *rng.uniform(0.05, 0.25, 2)), rng.uniform(0, 1, 3))

    # Pose and identity.
    roll = math.radians(rng.uniform(-MAX_ROLL_DEG, MAX_ROLL_DEG) * d.pose_jitter)
    yaw = rng.uniform(-MAX_YAW, MAX_YAW) * d.pose_jitter
    scale = FACE_ZOOM * (1.0 + rng.uniform(-d.scale_jitter, d.scale_jitter))
    centre = (0.5 + rng.uniform(-MAX_SHIFT, MAX_SHIFT) * d.pose_jitter,
              0.52 + rng.uniform(-MAX_SHIFT, MAX_SHIFT) * d.pose_jitter)
    face = FacePainter(draw, canvas, centre, scale, roll)
    face_rx, face_ry = rng.uniform(0.29, 0.35), rng.uniform(0.37, 0.43)
    skin = np.clip(rng.uniform(0.35, 0.95) * np.array([1.0, 0.82, 0.68]) + rng.normal(0, 0.04, 3), 0, 1)
    shade = skin * 0.6  # nose, wrinkles, lips' outline
    if rng.uniform() < 0.85:  # hair behind the face, showing at the top
        face.polygon(_ellipse(0, -0.06, face_rx * 1.1, face_ry * 0.95), rng.uniform(0, 0.5) * np.array([1, 0.8, 0.6]))
    face.polygon(_ellipse(0, 0, face_rx, face_ry), skin)

    eye_dx, eye_y = rng.uniform(0.115, 0.14), rng.uniform(-0.09, -0.05)
    eye_rx = rng.uniform(0.055, 0.068)
    brow_gap, brow_len = rng.uniform(0.055, 0.07), rng.uniform(0.09, 0.11)
    mouth_y, mouth_rx = rng.uniform(0.17, 0.2), rng.uniform(0.1, 0.125)
    iris_color = rng.uniform(0.05, 0.45, 3)
    brow_color = rng.uniform(0.0, 0.3) * np.array([1, 0.85, 0.7])
    lip_color = np.clip(skin * np.array([0.85, 0.45, 0.45]), 0, 1)

    intensity = rng.uniform(d.min_intensity, 1.0)
    e = expression_at(EXPRESSIONS[label], intensity, rng)

    # Eyes and brows, mirrored left (side -1) and right (+1).
    for side in (-1, 1):
        ex = yaw + side * eye_dx
        ry = eye_rx * e.eye_open
        face.polygon(_ellipse(ex, eye_y, eye_rx, ry), (0.95, 0.95, 0.95))
        iris = min(eye_rx * 0.55, ry)
        face.polygon(_ellipse(ex, eye_y, iris, min(eye_rx * 0.55, ry * 0.98)), iris_color)
        face.polygon(_ellipse(ex, eye_y, iris * 0.45, min(iris * 0.45, ry * 0.6)), (0.02, 0.02, 0.02))
        face.line(_ellipse(ex, eye_y, eye_rx, ry, n=ELLIPSE_POINTS)[ELLIPSE_POINTS // 2:], shade, 0.008)  # upper lid
        u = np.linspace(0, 1, CURVE_POINTS)  # 0 = outer end, 1 = inner end
        bx = ex + side * brow_len * (0.55 - u)
        by = (eye_y - brow_gap - e.brow_raise - e.brow_tilt * u - e.brow_arch * 4 * u * (1 - u))
        face.line(np.stack([bx, by], 1), brow_color, BROW_WIDTH)

    # Nose, and wrinkles over it (disgust, anger).
    face.line(np.array([[yaw, eye_y + 0.02], [yaw + 0.012, 0.09], [yaw - 0.02, 0.1]]), shade, 0.01)
    if e.wrinkle > 0.35:
        for side in (-1, 1):
            face.line(np.array([[yaw + side * 0.025, eye_y + 0.02], [yaw + side * 0.045, eye_y + 0.055]]),
                      shade, 0.006 * min(e.wrinkle, 1.5))

    # Mouth: a centre line y(s) for s in [-1, 1], lips opening around it.
    s = np.linspace(-1, 1, CURVE_POINTS * 2)
    mx = yaw + mouth_rx * e.mouth_width * s
    centre_line = mouth_y - e.mouth_curve * s**2 - e.mouth_asym * np.clip(s, 0, None)
    gap = e.mouth_open * (1 - s**2)
    if e.mouth_open < 0.01:
        face.line(np.stack([mx, centre_line], 1), lip_color, LIP_WIDTH)
    else:
        upper = np.stack([mx, centre_line - 0.35 * gap], 1)
        lower = np.stack([mx, centre_line + 0.65 * gap], 1)[::-1]
        face.polygon(np.concatenate([upper, lower]), (0.25, 0.05, 0.05))
        if e.teeth > 0.05:
            teeth = np.stack([mx, centre_line - 0.35 * gap + min(e.teeth, 1) * 0.5 * gap], 1)[::-1]
            face.polygon(np.concatenate([upper, teeth]), (0.97, 0.97, 0.92))
        face.line(np.concatenate([upper, lower, upper[:1]]), lip_color, LIP_WIDTH * 0.6)

    # Occluder: a patch over part of the face (hand, hair, sunglasses…).
    if rng.uniform() < d.occlusion_prob:
        w, h = rng.uniform(*OCCLUDER_SIZE, 2)
        ox, oy = rng.uniform(-0.2, 0.2), rng.uniform(-0.15, 0.25)
        corners = np.array([[ox - w / 2, oy - h / 2], [ox + w / 2, oy - h / 2], [ox + w / 2, oy + h / 2], [ox - w / 2, oy + h / 2]])
        face.polygon(corners, rng.uniform(0, 1, 3))

    small = image.resize((size, size), Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float32) / 255 * rng.uniform(*BRIGHTNESS)
    pixels += rng.normal(0, d.noise_std, pixels.shape).astype(np.float32)
    return (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(2, 0, 1)


def generate_faces(*, num: int, size: int, seed: int, split: str, difficulty: Difficulty) -> tuple[np.ndarray, np.ndarray]:
    """``num`` faces: images uint8 (num, 3, size, size) and labels int64 (num,).

    Sample i shows expression i mod 7 (classes balanced; the loop shuffles) and is drawn from its
    own stream (seed, split, i): a larger ``num`` keeps the first samples unchanged.
    """
    labels = np.arange(num) % NUM_EXPRESSIONS
    images = np.empty((num, 3, size, size), dtype=np.uint8)
    for i, label in enumerate(labels):
        rng = np.random.default_rng([seed, SPLIT_STREAM[split], GENERATOR_VERSION, i])
        images[i] = draw_face(rng, int(label), size, difficulty)
    return images, labels.astype(np.int64)


def cached_faces(*, num: int, size: int, seed: int, split: str, difficulty: Difficulty,
                 use_cache: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``generate_faces``, stored in ``cache_dir()/synthetic_faces`` under a key of every argument."""
    spec = {"num": num, "size": size, "seed": seed, "split": split, "version": GENERATOR_VERSION, **asdict(difficulty)}
    key = json_digest(spec, length=CACHE_KEY_DIGITS)
    file = cache_dir() / "synthetic_faces" / f"{split}-{size}px-{num}-{key}.npz"
    if use_cache and file.is_file():
        with np.load(file) as stored:
            return stored["images"], stored["labels"]
    log.info("drawing %d synthetic %s faces at %d px", num, split, size)
    images, labels = generate_faces(num=num, size=size, seed=seed, split=split, difficulty=difficulty)
    if use_cache:  # atomic: a concurrent reader never sees half a file
        write_atomically(file, lambda f: np.savez(f, images=images, labels=labels))
    return images, labels


@register_dataset
def synthetic_faces(
    *,
    num_train: int = 7000,
    num_val: int = 1400,
    image_size: int = 112,
    seed: int = 0,
    pose_jitter: float = 1.0,
    scale_jitter: float = 0.12,
    noise_std: float = 0.05,
    occlusion_prob: float = 0.2,
    min_intensity: float = 0.5,
    clutter: int = 3,
    augment: bool = True,
    normalization: Literal["face", "imagenet"] = "face",
    use_cache: bool = True,
) -> DataSplits:
    """Procedurally drawn faces with RAF-DB's seven expressions (eyes, brows, mouth); no download.

    num_train / num_val: faces per split, classes balanced. image_size: height = width in pixels
    (the model is built for it). seed: the data seed (fixed across run seeds so runs see the same faces).
    Difficulty: pose_jitter (scales roll ±15°, sideways feature shift and position ±6%),
    scale_jitter (face size ± this fraction), noise_std (Gaussian pixel noise, 0-1 scale),
    occlusion_prob (chance of a random patch over the face), min_intensity (expressions drawn at
    a uniform intensity in [min_intensity, 1]; 0 = sometimes neutral-looking), clutter (up to
    this many background blobs).
    augment: random flip + resized crop on the train split. normalization: "face" (to [-1, 1]) or
    "imagenet". use_cache: keep generated arrays under the cache folder.
    """
    checks = [("num_train", num_train, num_train >= 1, "≥ 1"), ("num_val", num_val, num_val >= 1, "≥ 1"),
              ("image_size", image_size, 16 <= image_size <= 512, "16 … 512"),
              ("seed", seed, seed >= 0, "≥ 0"), ("pose_jitter", pose_jitter, pose_jitter >= 0, "≥ 0"),
              ("scale_jitter", scale_jitter, 0 <= scale_jitter < 0.5, "0 ≤ x < 0.5"),
              ("noise_std", noise_std, noise_std >= 0, "≥ 0"),
              ("occlusion_prob", occlusion_prob, 0 <= occlusion_prob <= 1, "0 … 1"),
              ("min_intensity", min_intensity, 0 <= min_intensity <= 1, "0 … 1"),
              ("clutter", clutter, clutter >= 0, "≥ 0")]
    for key, value, ok, expected in checks:
        if not ok:
            raise ConfigError(f"data 'synthetic_faces': {key} = {value!r}: expected {expected}")
    difficulty = Difficulty(pose_jitter=pose_jitter, scale_jitter=scale_jitter, noise_std=noise_std,
                            occlusion_prob=occlusion_prob, min_intensity=min_intensity, clutter=clutter)
    train_images, train_labels = cached_faces(num=num_train, size=image_size, seed=seed, split="train",
                                              difficulty=difficulty, use_cache=use_cache)
    val_images, val_labels = cached_faces(num=num_val, size=image_size, seed=seed, split="val",
                                          difficulty=difficulty, use_cache=use_cache)
    return expression_splits(
        train_images=train_images, train_targets=train_labels.tolist(), val_images=val_images,
        val_targets=val_labels.tolist(), augment=augment, normalization=normalization,
        info={"dataset": "synthetic_faces", "seed": seed, "difficulty": asdict(difficulty),
              "generator_version": GENERATOR_VERSION},
    )


@register_status("synthetic_faces", family="faces")
def synthetic_faces_status(spec: dict) -> DataStatus:
    """Always there: drawn on use; the fingerprint covers everything the faces depend on."""
    drawn = {k: v for k, v in spec.items() if k not in ("augment", "normalization", "use_cache")}
    return DataStatus(name="synthetic_faces", found=True, where="generated on use (no files)",
                      counts={"train_images": spec["num_train"], "val_images": spec["num_val"],
                              "classes": NUM_EXPRESSIONS},
                      fingerprint=short_hash([drawn, GENERATOR_VERSION]))
