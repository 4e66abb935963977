"""Model registry: one way to build any model, ``create_model(name, **kwargs)``.

Each model family lives in one file and registers plain builder functions (timm's
``@register_model``); shared blocks live in ``layers.py`` and ``encoders.py``.
"""

from __future__ import annotations

from torch import nn

from vqalab.registry import Registry

MODELS = Registry("model")
register_model = MODELS.register


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; unknown or mistyped keywords fail with a clear message."""
    checked = MODELS.check_kwargs(name, kwargs, where=f"model '{name}'")
    return MODELS.get(name)(**checked)


def list_models() -> list[str]:
    return MODELS.names()


# Families register themselves on import.
from vqalab.models import cvt, fer, vqa, vqa_graph  # noqa: E402,F401
