"""Model registry: one way to build any model, ``create_model(name, **kwargs)``.

Each model family lives in one file and registers plain builder functions (timm's
``@register_model``); shared blocks live in ``layers.py`` and ``encoders.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from torch import nn

from vqalab.registry import Registry

MODELS = Registry("model")
register_model = MODELS.register

# Builder keywords naming a local weights file the model loads (a path under the data root). Their
# content digest enters the config hash (``runs.config_hash``); a checkpoint rebuilds the model
# without reading them (``weight_files_off``), as timm's ``pretrained=False``: it holds every weight.
WEIGHT_FILE_KEYS = ("backbone_weights", "image_weights", "embedding_weights")

_WEIGHT_FILES_ON: ContextVar[bool] = ContextVar("weight_files_on", default=True)


@contextmanager
def weight_files_off() -> Iterator[None]:
    """Within the block, builders read no weights file: the weights come from a checkpoint next.
    The keywords stay as recorded, so the model has the same structure and frozen parts."""
    token = _WEIGHT_FILES_ON.set(False)
    try:
        yield
    finally:
        _WEIGHT_FILES_ON.reset(token)


def weight_files_on() -> bool:
    """False inside ``weight_files_off``: weight-file loaders return without reading the file."""
    return _WEIGHT_FILES_ON.get()


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; unknown or mistyped keywords fail with a clear message."""
    checked = MODELS.check_kwargs(name, kwargs, where=f"model '{name}'")
    return MODELS.get(name)(**checked)


def list_models() -> list[str]:
    return MODELS.names()


# Families register themselves on import.
from vqalab.models import cvt, fer, vqa, vqa_graph  # noqa: F401
