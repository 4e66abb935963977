"""Image and question encoders shared by the VQA models.

Image encoders return a feature map (B, D, h, w); ``out_dim`` is D and ``frozen`` says whether
their weights stay fixed. Models pool the map to a vector or attend over its h·w regions.
Question encoders return ``QuestionFeatures``: a question vector (B, D), per-token states
(B, T, D) and the token mask (B, T), so models can use the vector or attend over the tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from vqalab.models import weight_files_on
from vqalab.paths import resolve_data
from vqalab.text import PAD_INDEX

RESNET_OUT_DIM = {"resnet18": 512, "resnet34": 512, "resnet50": 2048, "resnet101": 2048, "resnet152": 2048}
# "precomputed": the data yields features (frozen_features cache or feature files), no encoder runs.
PRECOMPUTED = "precomputed"
IMAGE_ENCODERS = ("small_cnn", *RESNET_OUT_DIM, PRECOMPUTED)
QUESTION_ENCODERS = ("mean", "lstm", "gru")


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

    def __init__(self, *, arch: str, weights_path: str | None = None):
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None)
        if weights_path:
            load_state_file(net, weights_path)
        self.body = nn.Sequential(*list(net.children())[:-2])
        self.out_dim = RESNET_OUT_DIM[arch]

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.body(image)


class PooledEncoder(nn.Module):
    """An image encoder followed by global average pooling: (B, 3, H, W) → (B, D, 1, 1)."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.out_dim = encoder.out_dim

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.encoder(image).mean(dim=(2, 3), keepdim=True)


class PrecomputedFeatures(nn.Module):
    """No encoder: the data already holds the (B, D, h, w) features. dim: their size D."""

    def __init__(self, *, dim: int):
        super().__init__()
        self.out_dim = dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if features.ndim != 4 or features.shape[1] != self.out_dim:
            raise ValueError(f"expected precomputed image features (B, {self.out_dim}, h, w), "
                             f"got {tuple(features.shape)}")
        return features


def load_state_file(module: nn.Module, path: str) -> None:
    """Load weights from a local ``.pth`` state dict (never from a hub); the classifier may differ.
    Inside ``weight_files_off`` (a checkpoint's weights come next) nothing is read."""
    if not weight_files_on():
        return
    file = resolve_data(path)
    if not Path(file).is_file():
        raise FileNotFoundError(f"weights file not found: {file}")
    state = torch.load(file, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    missing, unexpected = module.load_state_dict(state, strict=False)
    allowed = {k for k in missing if k.startswith("fc.")}
    if set(missing) - allowed or unexpected:
        raise ValueError(f"{file}: weights do not match the model: missing {sorted(set(missing) - allowed)[:5]}, "
                         f"unexpected {sorted(unexpected)[:5]}")


def build_image_encoder(kind: str, *, weights_path: str | None = None, frozen: bool = False,
                        cnn_channels: tuple[int, ...] = (32, 64, 128), pooled: bool = False,
                        feature_dim: int | None = None) -> nn.Module:
    """An image encoder by name (``IMAGE_ENCODERS``).

    weights_path: local state-dict file for a ResNet (None: random init).
    frozen: fix the weights (no gradients; BatchNorm statistics as loaded).
    cnn_channels: small_cnn channels per stage.
    pooled: average-pool the map to one region, (B, D, 1, 1).
    feature_dim: size D of precomputed features (kind "precomputed" only).
    """
    if kind == PRECOMPUTED:
        if feature_dim is None:
            raise ValueError("image_encoder 'precomputed' needs the feature size from the data")
        encoder = PrecomputedFeatures(dim=feature_dim)
        frozen = True  # nothing to train
    elif kind == "small_cnn":
        if weights_path:
            raise ValueError("small_cnn has no pretrained weights; leave weights_path empty")
        encoder = SmallCNN(channels=cnn_channels)
    elif kind in RESNET_OUT_DIM:
        encoder = ResNetTrunk(arch=kind, weights_path=weights_path)
    else:
        raise ValueError(f"image_encoder '{kind}': expected one of {', '.join(IMAGE_ENCODERS)}")
    if pooled and kind != PRECOMPUTED:
        encoder = PooledEncoder(encoder)
    if frozen:
        encoder.requires_grad_(False)
        encoder.eval()
    encoder.frozen = frozen
    return encoder


# --- Question encoders ---------------------------------------------------------------------------


class QuestionFeatures(NamedTuple):
    vector: torch.Tensor  # (B, D) one vector per question
    states: torch.Tensor  # (B, T, D) one vector per token (padding positions included)
    mask: torch.Tensor  # (B, T) bool, True at real tokens


def token_mask(question_len: torch.Tensor, length: int) -> torch.Tensor:
    """(B,) lengths → (B, T) bool mask of the real tokens."""
    return torch.arange(length, device=question_len.device)[None, :] < question_len[:, None]


def load_embedding_file(embed: nn.Embedding, path: str) -> None:
    """Copy a (vocab_size, embed_dim) matrix from a local file into ``embed``.

    The file holds a tensor (``.pt``/``.pth``, or a dict with key ``weight``) or a NumPy array
    (``.npy``) whose row i is the vector of the data's token i (``DataSplits.vocab`` order);
    ``embedding_matrix_from_text`` builds one from a word-vector text file. Inside
    ``weight_files_off`` (a checkpoint's weights come next) nothing is read.
    """
    if not weight_files_on():
        return
    file = resolve_data(path)
    if not file.is_file():
        raise FileNotFoundError(f"embedding weights file not found: {file}")
    if file.suffix == ".npy":
        matrix = torch.from_numpy(np.load(file))
    else:
        matrix = torch.load(file, map_location="cpu", weights_only=True)
        if isinstance(matrix, dict):
            if "weight" not in matrix:
                raise ValueError(f"{file}: expected a tensor or a dict with key 'weight', got keys {sorted(matrix)[:5]}")
            matrix = matrix["weight"]
    expected = tuple(embed.weight.shape)
    if tuple(matrix.shape) != expected:
        raise ValueError(f"{file}: embedding matrix has shape {tuple(matrix.shape)}, expected {expected} "
                         f"(vocab_size, embed_dim): rows must follow the data's vocabulary")
    with torch.no_grad():
        embed.weight.copy_(matrix.float())


def embedding_matrix_from_text(tokens: list[str], path: str, embed_dim: int) -> tuple[torch.Tensor, int]:
    """(len(tokens), embed_dim) matrix from a word-vector text file (GloVe layout: ``word v1 … vD``).

    Tokens missing from the file get zero rows (they are learned if the embedding is trainable).
    Returns the matrix (save it with ``torch.save`` for ``embedding_weights``) and the number found.
    """
    file = resolve_data(path)
    if not file.is_file():
        raise FileNotFoundError(f"word-vector file not found: {file}")
    index = {t: i for i, t in enumerate(tokens)}
    matrix = torch.zeros(len(tokens), embed_dim)
    found = 0
    with open(file, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            word, *values = line.rstrip().split(" ")
            if word not in index:
                continue
            if len(values) != embed_dim:
                raise ValueError(f"{file}:{line_no}: '{word}' has {len(values)} values, expected {embed_dim}")
            matrix[index[word]] = torch.tensor([float(v) for v in values])
            found += 1
    return matrix, found


class WordEmbedding(nn.Embedding):
    """Token embedding (padding index embeds to zero), optionally loaded from a local file.

    vocab_size: number of tokens. embed_dim: vector size. weights_path: matrix file
    (``load_embedding_file``). frozen: keep the loaded vectors fixed.
    """

    def __init__(self, *, vocab_size: int, embed_dim: int, weights_path: str | None = None, frozen: bool = False):
        super().__init__(vocab_size, embed_dim, padding_idx=PAD_INDEX)
        if weights_path:
            load_embedding_file(self, weights_path)
        if frozen:
            if not weights_path:
                raise ValueError("freeze_embedding needs embedding_weights: a frozen random embedding learns nothing")
            self.weight.requires_grad_(False)


class MeanEmbedding(nn.Module):
    """Mean of the question's word embeddings, padding excluded: (B, T) → (B, embed_dim)."""

    def __init__(self, *, vocab_size: int, embed_dim: int, weights_path: str | None = None, frozen: bool = False):
        super().__init__()
        self.embed = WordEmbedding(vocab_size=vocab_size, embed_dim=embed_dim, weights_path=weights_path, frozen=frozen)
        self.out_dim = embed_dim

    def forward(self, question: torch.Tensor, question_len: torch.Tensor) -> QuestionFeatures:
        states = self.embed(question)  # (B, T, E); padding embeds to zero
        vector = states.sum(dim=1) / question_len.clamp(min=1).unsqueeze(1).to(states.dtype)
        return QuestionFeatures(vector, states, token_mask(question_len, question.shape[1]))


class RecurrentEncoder(nn.Module):
    """Word embedding → one-layer LSTM or GRU; the vector is the state after the last real token.

    kind: lstm or gru. vocab_size, embed_dim, weights_path, frozen: as ``WordEmbedding``.
    hidden_dim: recurrent state size (the question vector size).
    """

    def __init__(self, *, kind: str, vocab_size: int, embed_dim: int, hidden_dim: int,
                 weights_path: str | None = None, frozen: bool = False):
        super().__init__()
        self.embed = WordEmbedding(vocab_size=vocab_size, embed_dim=embed_dim, weights_path=weights_path, frozen=frozen)
        rnn = nn.LSTM if kind == "lstm" else nn.GRU
        self.rnn = rnn(input_size=embed_dim, hidden_size=hidden_dim, batch_first=True)
        self.out_dim = hidden_dim

    def forward(self, question: torch.Tensor, question_len: torch.Tensor) -> QuestionFeatures:
        length = question.shape[1]
        # Packing stops the recurrence at each question's end, so padding never enters the state.
        packed = pack_padded_sequence(self.embed(question), question_len.clamp(min=1).cpu(),
                                      batch_first=True, enforce_sorted=False)
        out, last = self.rnn(packed)
        states, _ = pad_packed_sequence(out, batch_first=True, total_length=length)  # (B, T, H)
        h_n = last[0] if isinstance(last, tuple) else last  # LSTM returns (h_n, c_n); (1, B, H)
        return QuestionFeatures(h_n[-1], states, token_mask(question_len, length))


def build_question_encoder(kind: str, *, vocab_size: int, embed_dim: int, hidden_dim: int,
                           weights_path: str | None = None, frozen: bool = False) -> nn.Module:
    """A question encoder by name (``QUESTION_ENCODERS``); ``out_dim`` is embed_dim for mean,
    hidden_dim for lstm/gru."""
    if kind == "mean":
        return MeanEmbedding(vocab_size=vocab_size, embed_dim=embed_dim, weights_path=weights_path, frozen=frozen)
    if kind in ("lstm", "gru"):
        return RecurrentEncoder(kind=kind, vocab_size=vocab_size, embed_dim=embed_dim, hidden_dim=hidden_dim,
                                weights_path=weights_path, frozen=frozen)
    raise ValueError(f"question_encoder '{kind}': expected one of {', '.join(QUESTION_ENCODERS)}")
