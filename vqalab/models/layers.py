"""Blocks shared by every model family: defined once, composed by the model files."""

from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, dropout: float = 0.0, act: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear → activation → dropout → linear: the classifier head of every VQA model."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), act(), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim))
