"""Image and question encoders shared by the VQA models.

Image encoders return a feature map (B, D, h, w); ``out_dim`` is D. Models pool it to a vector or
attend over it. Question encoders return (B, D) and, for recurrent ones, the per-token states.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torchvision
from torch import nn

from vqalab.data.text import PAD_INDEX
from vqalab.paths import resolve

RESNET_OUT_DIM = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}
IMAGE_ENCODERS = ("small_cnn", *RESNET_OUT_DIM)


class SmallCNN(nn.Module):
    """Three conv-BN-ReLU-maxpool stages: 64×64 → (channels[-1], 8, 8). Suited to easy-VQA."""

    def __init__(self, *, channels: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers, in_ch = [], 3
        for out_ch in channels:
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_ch = out_ch
        self.body = nn.Sequential(*layers)
        self.out_dim = in_ch

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image)


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its pooling and classifier: (B, 3, H, W) → (B, D, H/32, W/32)."""

    def __init__(self, *, arch: str, weights_path: Optional[str] = None):
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None)
        if weights_path:
            load_state_file(net, weights_path)
        self.body = nn.Sequential(*list(net.children())[:-2])
        self.out_dim = RESNET_OUT_DIM[arch]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image)


def load_state_file(module: nn.Module, path: str) -> None:
    """Load weights from a local ``.pth`` state dict (never from a hub); the classifier may differ."""
    file = resolve(path)
    if not Path(file).is_file():
        raise FileNotFoundError(f"weights file not found: {file}")
    state = torch.load(file, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    missing, unexpected = module.load_state_dict(state, strict=False)
    allowed = {k for k in missing if k.startswith("fc.")}
    if set(missing) - allowed or unexpected:
        raise ValueError(f"{file}: weights do not match the model: missing {sorted(set(missing) - allowed)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")


def build_image_encoder(kind: str, *, weights_path: Optional[str] = None, frozen: bool = False,
                        cnn_channels: tuple[int, ...] = (32, 64, 128)) -> nn.Module:
    if kind == "small_cnn":
        if weights_path:
            raise ValueError("small_cnn has no pretrained weights; leave weights_path empty")
        encoder = SmallCNN(channels=cnn_channels)
    elif kind in RESNET_OUT_DIM:
        encoder = ResNetTrunk(arch=kind, weights_path=weights_path)
    else:
        raise ValueError(f"image_encoder '{kind}': expected one of {', '.join(IMAGE_ENCODERS)}")
    if frozen:
        encoder.requires_grad_(False)
        encoder.eval()
    encoder.frozen = frozen
    return encoder


class MeanEmbedding(nn.Module):
    """Mean of the question's word embeddings, padding excluded: (B, T) → (B, embed_dim)."""

    def __init__(self, *, vocab_size: int, embed_dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_INDEX)
        self.out_dim = embed_dim

    def forward(self, question: torch.Tensor, question_len: torch.Tensor) -> torch.Tensor:
        summed = self.embed(question).sum(dim=1)  # padding embeds to zero
        return summed / question_len.clamp(min=1).unsqueeze(1).to(summed.dtype)
