"""A run's configuration, validated: defaults → params file → ``--set`` overrides, then the
``model`` and ``data`` sections checked against the signature of the registered builder they name.

Everything is checked before any compute starts; errors name the file, the key, the value and what
was expected. The sections, the YAML loader and the overrides are ``vqalab.params`` (no torch); the
checks here need the data and model registries.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vqalab.data import DATASETS, PROVIDED_BY_DATA, declared_targets
from vqalab.models import MODELS
from vqalab.params import MAX_INT, RunConfig, merge, parse_overrides, read_yaml, validation_message
from vqalab.registry import ConfigError, short_repr


def build_config(values: dict | None = None, source: str = "<params>") -> RunConfig:
    """Validate a (partial) config tree against the defaults and the model/data builders."""
    values = values or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of keys to values, got {type(values).__name__}")
    defaults = RunConfig().to_dict()
    tree = merge(defaults, values)
    try:
        cfg = RunConfig.model_validate(tree)
    except ValidationError as err:
        raise ConfigError(validation_message(err, source)) from None
    check_builders(cfg, source)
    check_settings(cfg, source)
    return cfg


def check_settings(cfg: RunConfig, source: str) -> None:
    """Settings that would be ignored or fail at the first step, refused before any data is read:
    bce on a data set without soft answer scores, cross-entropy on segmentation masks, label
    smoothing with bce (the data set's declared ``targets``, ``vqalab.data.TARGETS``)."""
    name, targets = cfg.data.get("name"), declared_targets(cfg.data)
    if cfg.train.loss != "bce" and targets == "mask":
        raise ConfigError(f"{source}: train.loss = {cfg.train.loss!r}: data '{name}' is a segmentation data set "
                          "(binary cross-entropy on its masks): set train.loss to 'bce'")
    if cfg.train.loss == "bce" and targets == "class":
        raise ConfigError(f"{source}: train.loss = 'bce': bce trains on soft answer scores and data set "
                          f"'{name}' has none (one class per item): set train.loss to 'ce', or use a data "
                          "set with soft scores (vqa_v2)")
    if cfg.train.loss == "bce" and cfg.train.label_smoothing > 0:
        raise ConfigError(f"{source}: train.label_smoothing = {cfg.train.label_smoothing}: label smoothing "
                          "applies to cross-entropy (train.loss 'ce'), not to bce: set it to 0")


def check_builders(cfg: RunConfig, source: str) -> None:
    for section, registry in (("model", MODELS), ("data", DATASETS)):
        spec = dict(getattr(cfg, section))
        if "name" not in spec:
            raise ConfigError(f"{source}: {section}.name missing: one of {', '.join(registry.names())}")
        name = spec.pop("name")
        try:
            registry.get(name)
        except ConfigError as err:
            raise ConfigError(f"{source}: {section}.name: {err}") from None
        provided = PROVIDED_BY_DATA if section == "model" else ()
        checked = registry.check_kwargs(name, spec, where=f"{source}: {section}", provided=provided)
        for key, value in checked.items():
            check_builder_value(f"{source}: {section}.{key}", key, value)
        getattr(cfg, section).update(checked)


def check_builder_value(where: str, key: str, value: Any) -> None:
    """Rules every model / data builder keyword follows, checked before any data is read:
    numbers finite and int64-sized, ``max_*_samples`` at least 1, ``*channels`` lists positive."""
    numbers = value if isinstance(value, (list, tuple)) else [value]
    for number in numbers:
        if isinstance(number, float) and not math.isfinite(number):
            raise ConfigError(f"{where} = {short_repr(value)}: expected a finite number")
        if isinstance(number, int) and not isinstance(number, bool) and abs(number) > MAX_INT:
            raise ConfigError(f"{where} = {short_repr(value)}: too large (at most {MAX_INT})")
    if re.fullmatch(r"max_\w*samples", key) and value is not None and value < 1:
        raise ConfigError(f"{where} = {short_repr(value)}: expected at least 1, or null for all samples")
    if key.endswith("channels") and isinstance(value, (list, tuple)) and not all(
            isinstance(c, int) and c >= 1 for c in value):
        raise ConfigError(f"{where} = {short_repr(value)}: expected a list of channel counts, each at least 1")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """defaults → params file → ``--set`` overrides, validated."""
    values: dict = {}
    source = "<defaults>"
    if path is not None:
        values = read_yaml(path)
        source = str(path)
        if values is None and not overrides:
            # Most likely a file saved empty by mistake; a full default run is hours of compute.
            raise ConfigError(f"{source}: the params file is empty: write the keys that differ from the "
                              "defaults, or give at least one --set to train the defaults on purpose")
        values = values if values is not None else {}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: expected a mapping of keys to values at the top level")
    if overrides:
        values = merge(values, parse_overrides(overrides))
        source += " + --set"
    return build_config(values, source=source)
