"""Facial-expression models: an IR face-recognition backbone followed by transformer blocks.

Lab note 002 compares two members of one family on RAF-DB, both on an IR-50 backbone:

- ``ir_vit`` ("Baseline"): IR backbone → 512×7×7 map → 49 tokens + a class token + a learned position
  embedding → ``depth`` ViT blocks (self-attention and MLP over all tokens) → class token → linear.
- ``ir_cls`` ("CLSFER"): the same, with CaiT class-attention blocks: only the class token is
  updated (query from the class token, keys and values from all tokens, MLP on the class token);
  the patch tokens pass through unchanged. Its blocks have the same parameter shapes as the ViT
  blocks, so both models have the same parameter count.

The backbone is the "IR" topology of face.evoLVe / InsightFace (3×3 stem conv + BN + PReLU, no
max-pool, ``bottleneck_IR`` units, stride 2 in the first unit of each stage, optional SE). Its
module names match face.evoLVe's ``Backbone`` so a face-recognition checkpoint loads directly
(``backbone_weights``). ``backbone_depth`` picks IR-18, 34, 50 or 100; smaller members for the CPU
also take ``width`` < 1 and a smaller ``img_size``. ``ir50_vit`` and ``ir50_cls``, the names of
earlier versions, still build the same models.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from vqalab.models import MODELS, register_model, weight_files_on
from vqalab.models.layers import (
    LAYER_NORM_EPS,
    VIT_INIT_STD,
    ClassAttentionBlock,
    TransformerBlock,
    init_vit_weights,
)
from vqalab.paths import resolve_data
from vqalab.registry import ConfigError

log = logging.getLogger(__name__)

# Units per stage: IR-50/100 from face.evoLVe ``get_blocks``; IR-18/34 use ResNet-18/34's counts
# (InsightFace ``iresnet18/34``).
IR_UNITS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 14, 3), 100: (3, 13, 30, 3)}
IR_CHANNELS = (64, 128, 256, 512)  # per stage at width 1; the stem has IR_CHANNELS[0]
SE_REDUCTION = 16  # face.evoLVe SEModule(depth, 16)
IR_DOWNSAMPLE = 2 ** len(IR_CHANNELS)  # one stride-2 unit per stage: 112 → 7
DEFAULT_HEAD_DIM = 64  # ViT-B's 768 / 12; IR-50's 512 channels → 8 heads
BACKBONE_PREFIX = "backbone."
# Keys of a face.evoLVe checkpoint that are not part of the trunk (its embedding layer).
IGNORED_CHECKPOINT_PREFIXES = ("output_layer.",)


class SEModule(nn.Module):
    """Squeeze-and-excitation on a (B, C, H, W) map; names as face.evoLVe (fc1, fc2 1×1 convs).

    channels: C. reduction: C / hidden size (hidden at least 1, for narrow CPU members).
    """

    def __init__(self, *, channels: int, reduction: int = SE_REDUCTION):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))  # (B, C, 1, 1)
        return x * gate


class BottleneckIR(nn.Module):
    """face.evoLVe ``bottleneck_IR``: BN → 3×3 conv → PReLU → 3×3 conv (stride) → BN [→ SE], plus a
    shortcut (identity via a 1×1 max-pool with the stride, or 1×1 conv + BN when channels change).

    in_channels / out_channels: channels of the unit's input and output. stride: 1 or 2 (applied
    by the second conv and by the shortcut). se: append a squeeze-and-excitation module.
    """

    def __init__(self, *, in_channels: int, out_channels: int, stride: int, se: bool):
        super().__init__()
        if in_channels == out_channels:
            self.shortcut_layer = nn.MaxPool2d(1, stride)  # parameter-free subsampling
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels))
        layers = [
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, 3, 1, 1, bias=False),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        if se:
            layers.append(SEModule(channels=out_channels))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


def ir_channels(width: float) -> tuple[int, ...]:
    """Stage channels scaled by ``width`` (64/128/256/512 at width 1)."""
    return tuple(max(1, round(c * width)) for c in IR_CHANNELS)


class IRBackbone(nn.Module):
    """The IR trunk without face.evoLVe's embedding layer: (B, 3, H, W) → (B, C, H/16, W/16).

    depth: 18, 34, 50 or 100 (units per stage from ``IR_UNITS``). width: channel multiplier.
    se: squeeze-and-excitation in every unit (IR-SE).
    """

    def __init__(self, *, depth: int, width: float = 1.0, se: bool = False):
        super().__init__()
        channels = ir_channels(width)
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 1, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.PReLU(channels[0]))
        units, in_ch = [], channels[0]
        for num_units, out_ch in zip(IR_UNITS[depth], channels):
            for i in range(num_units):
                units.append(BottleneckIR(in_channels=in_ch, out_channels=out_ch, stride=2 if i == 0 else 1, se=se))
                in_ch = out_ch
        self.body = nn.Sequential(*units)  # flat, as face.evoLVe: checkpoint keys body.<i>.*
        self.out_dim = in_ch

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(self.input_layer(image))


class FERTransformer(nn.Module):
    """IR backbone → tokens + class token + position embedding → transformer blocks → linear head.

    ``forward_features(image)`` returns the normalised class token (B, dim); ``head`` maps it to
    the logits (B, num_classes).
    """

    def __init__(self, *, block: Literal["vit", "cls"], depth: int, num_classes: int, img_size: int,
                 backbone_depth: int, width: float, se: bool, num_heads: int, mlp_ratio: float,
                 attn_drop: float, drop_path: float):
        super().__init__()
        self.img_size = img_size
        self.backbone = IRBackbone(depth=backbone_depth, width=width, se=se)
        dim = self.backbone.out_dim
        grid = img_size // IR_DOWNSAMPLE
        self.num_tokens = grid * grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.num_tokens, dim))
        block_class = TransformerBlock if block == "vit" else ClassAttentionBlock
        # Stochastic depth rate grows linearly with depth (DeiT / timm).
        # On the CPU explicitly: read back as floats, so the builder also works under
        # `with torch.device("meta")` (FLOPs counted without memory or compute).
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist() if depth else []
        self.blocks = nn.Sequential(*[
            block_class(dim=dim, num_heads=num_heads, mlp_ratio=mlp_ratio, attn_drop=attn_drop, drop_path=rate)
            for rate in rates
        ])
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.head = nn.Linear(dim, num_classes)
        # ViT initialisation for the transformer part; the backbone keeps PyTorch's conv defaults.
        nn.init.trunc_normal_(self.cls_token, std=VIT_INIT_STD)
        nn.init.trunc_normal_(self.pos_embed, std=VIT_INIT_STD)
        self.blocks.apply(init_vit_weights)
        self.head.apply(init_vit_weights)

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"model built for img_size {self.img_size} got {tuple(image.shape[-2:])} images: "
                             f"set model.img_size to the data's image_size")
        x = self.backbone(image)  # (B, D, h, w)
        x = x.flatten(2).transpose(1, 2)  # (B, N, D), N = h*w tokens in row-major order
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], dim=1) + self.pos_embed  # (B, 1+N, D)
        x = self.blocks(x)
        return self.norm(x[:, 0])  # (B, D): the class token

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(image))

    def load_backbone(self, path: str) -> None:
        load_backbone_weights(self.backbone, path)


def load_backbone_weights(backbone: IRBackbone, path: str) -> None:
    """Load an IR trunk from a local face-recognition checkpoint (face.evoLVe ``Backbone`` keys).

    Keys may carry a ``backbone.`` or ``module.`` prefix; face.evoLVe's ``output_layer`` is ignored.
    Every trunk tensor must be present with the right shape, else the error names the differences.
    Inside ``weight_files_off`` (a checkpoint's weights come next) nothing is read.
    """
    if not weight_files_on():
        return
    file = resolve_data(path)
    if not Path(file).is_file():
        raise FileNotFoundError(f"backbone_weights: file not found: {file}")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    cleaned = {}
    for key, value in state.items():
        for prefix in ("module.", BACKBONE_PREFIX):
            key = key.removeprefix(prefix)
        if not key.startswith(IGNORED_CHECKPOINT_PREFIXES):
            cleaned[key] = value
    expected = backbone.state_dict()
    missing = sorted(set(expected) - set(cleaned))
    unexpected = sorted(set(cleaned) - set(expected))
    wrong = sorted(k for k in set(expected) & set(cleaned) if expected[k].shape != cleaned[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{file}: weights do not match the IR backbone: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
    backbone.load_state_dict(cleaned)
    log.info("loaded IR backbone weights from %s", file)


def _create_fer_transformer(*, block: Literal["vit", "cls"], name: str, depth: int, num_classes: int,
                            img_size: int, backbone_depth: int, width: float, se: bool,
                            num_heads: int | None, mlp_ratio: float, attn_drop: float, drop_path: float,
                            backbone_weights: str | None) -> FERTransformer:
    if backbone_depth not in IR_UNITS:
        raise ConfigError(f"model '{name}': backbone_depth = {backbone_depth}: expected one of {sorted(IR_UNITS)}")
    if img_size < IR_DOWNSAMPLE or img_size % IR_DOWNSAMPLE:
        raise ConfigError(f"model '{name}': img_size = {img_size}: expected a multiple of {IR_DOWNSAMPLE} "
                          f"(the backbone halves the size {len(IR_CHANNELS)} times), e.g. 64 or 112")
    if width <= 0:
        raise ConfigError(f"model '{name}': width = {width}: expected > 0")
    if depth < 0:
        raise ConfigError(f"model '{name}': depth = {depth}: expected ≥ 0 transformer blocks")
    for key, value in (("attn_drop", attn_drop), ("drop_path", drop_path)):
        if not 0 <= value < 1:
            raise ConfigError(f"model '{name}': {key} = {value}: expected 0 ≤ {key} < 1")
    dim = ir_channels(width)[-1]
    if num_heads is None:
        num_heads = max(1, dim // DEFAULT_HEAD_DIM)
    if num_heads < 1 or dim % num_heads:
        raise ConfigError(f"model '{name}': num_heads = {num_heads} does not divide the token dim {dim} "
                          f"(width {width} × {IR_CHANNELS[-1]})")
    model = FERTransformer(block=block, depth=depth, num_classes=num_classes, img_size=img_size,
                           backbone_depth=backbone_depth, width=width, se=se, num_heads=num_heads,
                           mlp_ratio=mlp_ratio, attn_drop=attn_drop, drop_path=drop_path)
    if backbone_weights:
        model.load_backbone(backbone_weights)
    return model


@register_model
def ir_vit(
    *,
    num_classes: int = 7,
    depth: int = 8,
    img_size: int = 112,
    backbone_depth: int = 50,
    width: float = 1.0,
    se: bool = False,
    num_heads: int | None = None,
    mlp_ratio: float = 4.0,
    attn_drop: float = 0.0,
    drop_path: float = 0.0,
    backbone_weights: str | None = None,
) -> FERTransformer:
    """Lab note 002's "Baseline": IR backbone + ``depth`` pre-norm ViT blocks over all tokens.

    num_classes: expressions (set from the data). depth: transformer blocks (lab note 002: 2, 4, 6, 8).
    img_size: input height = width, a multiple of 16 (112 → 7×7 = 49 tokens).
    backbone_depth: IR-18, 34, 50 or 100. width: channel multiplier (1 → 64/128/256/512; the token
    dim is the last stage's channels). se: squeeze-and-excitation units (IR-SE).
    num_heads: attention heads (None: token dim / 64, i.e. 8 at dim 512). mlp_ratio: MLP hidden
    size / dim. attn_drop: dropout on attention weights. drop_path: stochastic-depth rate of the
    last block (rising linearly from 0). backbone_weights: local face.evoLVe IR checkpoint (None:
    random init).
    """
    return _create_fer_transformer(
        block="vit", name="ir_vit", depth=depth, num_classes=num_classes, img_size=img_size,
        backbone_depth=backbone_depth, width=width, se=se, num_heads=num_heads, mlp_ratio=mlp_ratio,
        attn_drop=attn_drop, drop_path=drop_path, backbone_weights=backbone_weights)


@register_model
def ir_cls(
    *,
    num_classes: int = 7,
    depth: int = 8,
    img_size: int = 112,
    backbone_depth: int = 50,
    width: float = 1.0,
    se: bool = False,
    num_heads: int | None = None,
    mlp_ratio: float = 4.0,
    attn_drop: float = 0.0,
    drop_path: float = 0.0,
    backbone_weights: str | None = None,
) -> FERTransformer:
    """Lab note 002's "CLSFER": IR backbone + ``depth`` CaiT class-attention blocks.

    Only the class token is updated (query from it, keys/values from all tokens, MLP on it); the
    patch tokens pass through unchanged. Same parameter shapes as ``ir_vit``.
    Arguments as ``ir_vit``.
    """
    return _create_fer_transformer(
        block="cls", name="ir_cls", depth=depth, num_classes=num_classes, img_size=img_size,
        backbone_depth=backbone_depth, width=width, se=se, num_heads=num_heads, mlp_ratio=mlp_ratio,
        attn_drop=attn_drop, drop_path=drop_path, backbone_weights=backbone_weights)


# Former names: the backbone depth is a parameter, not part of the model (IR-50 is its default).
MODELS.alias("ir50_vit", "ir_vit")
MODELS.alias("ir50_cls", "ir_cls")


class PixelLinear(nn.Module):
    """Logistic regression on raw (normalised) pixels: the floor a learned model must clear."""

    def __init__(self, *, num_classes: int, img_size: int):
        super().__init__()
        self.img_size = img_size
        self.head = nn.Linear(3 * img_size * img_size, num_classes)

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"model built for img_size {self.img_size} got {tuple(image.shape[-2:])} images: "
                             f"set model.img_size to the data's image_size")
        return image.flatten(1)  # (B, 3*H*W)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(image))


@register_model
def fer_pixel_linear(*, num_classes: int = 7, img_size: int = 112) -> PixelLinear:
    """A linear classifier on raw pixels: the baseline that shows whether a FER data set needs a
    learned representation. num_classes: from the data. img_size: input height = width."""
    return PixelLinear(num_classes=num_classes, img_size=img_size)
