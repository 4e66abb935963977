"""VQA models: image + question in, answer logits out.

Every model splits ``forward_features`` (encode image, encode question, fuse) from ``head``, so
feature caching and benchmarks reuse the parts. Questions that share an image within a batch
(``image_id``) pay for the image encoder once.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from vqalab.models import register_model
from vqalab.models.encoders import MeanEmbedding, build_image_encoder
from vqalab.models.layers import mlp


class VQAModel(nn.Module):
    """Base class: owns the image encoder and the image de-duplication."""

    def __init__(self, *, image_encoder: str, image_weights: Optional[str], freeze_image: bool,
                 cnn_channels: tuple[int, ...]):
        super().__init__()
        self.image_encoder = build_image_encoder(
            image_encoder, weights_path=image_weights, frozen=freeze_image, cnn_channels=cnn_channels
        )

    def train(self, mode: bool = True) -> "VQAModel":
        super().train(mode)
        if self.image_encoder.frozen:
            self.image_encoder.eval()  # frozen BatchNorm statistics stay as loaded
        return self

    def encode_image(self, image: torch.Tensor, image_id: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(B, 3, H, W) → (B, D, h, w); with ``image_id`` each distinct image is encoded once."""
        if image_id is None:
            return self.image_encoder(image)
        unique_ids, inverse = torch.unique(image_id, return_inverse=True)
        if len(unique_ids) == len(image_id):
            return self.image_encoder(image)
        first = torch.zeros(len(unique_ids), dtype=torch.long, device=image_id.device)
        first.scatter_(0, inverse, torch.arange(len(image_id), device=image_id.device))
        return self.image_encoder(image[first])[inverse]  # (U, D, h, w) gathered back to (B, D, h, w)

    def forward_features(self, image, question, question_len, image_id=None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, image: torch.Tensor, question: torch.Tensor, question_len: torch.Tensor,
                image_id: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.head(self.forward_features(image, question, question_len, image_id))


class MeanEmbeddingMLP(VQAModel):
    """The lab's model 1: pooled image vector ⊕ mean word embedding → MLP."""

    def __init__(self, *, vocab_size: int, num_answers: int, embed_dim: int, hidden_dim: int,
                 dropout: float, **image_kwargs):
        super().__init__(**image_kwargs)
        self.question_encoder = MeanEmbedding(vocab_size=vocab_size, embed_dim=embed_dim)
        self.head = mlp(self.image_encoder.out_dim + embed_dim, hidden_dim, num_answers, dropout)

    def forward_features(self, image, question, question_len, image_id=None):
        v = self.encode_image(image, image_id).mean(dim=(2, 3))  # (B, D)
        q = self.question_encoder(question, question_len)  # (B, embed_dim)
        return torch.cat([v, q], dim=1)


@register_model
def vqa_mean_mlp(
    *,
    vocab_size: int,
    num_answers: int,
    image_encoder: str = "small_cnn",
    image_weights: Optional[str] = None,
    freeze_image: bool = False,
    cnn_channels: tuple[int, ...] = (32, 64, 128),
    embed_dim: int = 128,
    hidden_dim: int = 256,
    dropout: float = 0.0,
) -> VQAModel:
    """Model 1: image vector ⊕ mean of word embeddings → MLP classifier.

    image_encoder: small_cnn (for 64×64 inputs) or resnet18/34/50/101/152 (torchvision, random init).
    image_weights: local state-dict file for the ResNet (None: random init).
    freeze_image: keep the image encoder's weights fixed.
    cnn_channels: small_cnn channels per stage.
    embed_dim: word embedding size. hidden_dim: MLP hidden size. dropout: before the last layer.
    """
    return MeanEmbeddingMLP(
        vocab_size=vocab_size, num_answers=num_answers, embed_dim=embed_dim, hidden_dim=hidden_dim,
        dropout=dropout, image_encoder=image_encoder, image_weights=image_weights,
        freeze_image=freeze_image, cnn_channels=cnn_channels,
    )
