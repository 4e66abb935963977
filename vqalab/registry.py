"""A name → builder registry with keyword checking, shared by models and data sets.

Builders are plain functions with keyword-only arguments (timm's ``@register_model``). Their
signatures are the documentation and the schema: ``check_kwargs`` validates a params-file section
against them before any compute starts.
"""

from __future__ import annotations

import difflib
import inspect
import re
import reprlib
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError


class ConfigError(ValueError):
    """Bad user input: the message names the file, key and value and what was expected."""


# Longest value echoed back in an error message.
MAX_ECHO_CHARS = 200
_echo = reprlib.Repr()
_echo.maxlevel, _echo.maxlist, _echo.maxtuple, _echo.maxdict = 3, 8, 8, 8
_echo.maxstring = _echo.maxother = _echo.maxlong = MAX_ECHO_CHARS // 2


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-3}}`` → ``{"optim.lr": 1e-3}`` (dotted keys, as in ``--set``)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def short_repr(value: Any) -> str:
    """``repr`` of a user value, cut to a readable size (nested and long values are elided)."""
    text = _echo.repr(value)
    return text if len(text) <= MAX_ECHO_CHARS else text[:MAX_ECHO_CHARS - 3] + "..."


# The password of ``scheme://user:password@host``: never printed or logged.
URL_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^@\s]*@")


def mask_secrets(text: Any) -> str:
    """``text`` with the password of every storage URL in it replaced by ``***``."""
    return URL_PASSWORD.sub(r"\1***@", str(text))


def nearest(name: str, choices) -> str | None:
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return match[0] if match else None


def did_you_mean(name: str, choices) -> str:
    hint = nearest(name, choices)
    return f"did you mean '{hint}'?" if hint else f"valid: {', '.join(sorted(choices))}"


_ADAPTERS: dict[Any, TypeAdapter] = {}


def type_adapter(annotation: Any) -> TypeAdapter:
    """A pydantic ``TypeAdapter`` per annotation, built once (building one costs far more than using it)."""
    try:
        adapter = _ADAPTERS.get(annotation)
    except TypeError:  # an unhashable annotation
        return TypeAdapter(annotation)
    if adapter is None:
        adapter = _ADAPTERS[annotation] = TypeAdapter(annotation)
    return adapter


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._builders: dict[str, Callable[..., Any]] = {}
        self._aliases: dict[str, str] = {}  # former name → registered name
        self._signatures: dict[Callable[..., Any], Any] = {}  # builder → its parameters

    def register(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        if fn.__name__ in self._builders:
            raise ValueError(f"{self.kind} '{fn.__name__}' registered twice")
        self._builders[fn.__name__] = fn
        return fn

    def alias(self, former: str, name: str) -> None:
        """Keep accepting ``former`` for the builder registered as ``name`` (a renamed builder)."""
        if name not in self._builders or former in self._builders or former in self._aliases:
            raise ValueError(f"{self.kind} alias '{former}' → '{name}': the target must be registered, "
                             "the alias new")
        self._aliases[former] = name

    def names(self) -> list[str]:
        """The registered names (aliases left out: each builder once)."""
        return sorted(self._builders)

    def canonical(self, name: str) -> str:
        """The registered name of ``name`` (itself, or the builder an alias stands for)."""
        return self._aliases.get(name, name)

    def get(self, name: str) -> Callable[..., Any]:
        name = self.canonical(name)
        if name not in self._builders:
            raise ConfigError(f"unknown {self.kind} '{name}': {did_you_mean(name, [*self._builders, *self._aliases])}")
        return self._builders[name]

    def parameters(self, name: str) -> dict[str, inspect.Parameter]:
        builder = self.get(name)
        if builder not in self._signatures:  # read once: a sweep checks thousands of points
            self._signatures[builder] = inspect.signature(builder, eval_str=True).parameters
        return dict(self._signatures[builder])

    def check_kwargs(self, name: str, kwargs: dict, where: str, provided: tuple[str, ...] = ()) -> dict:
        """Validate ``kwargs`` against the builder's signature; return them coerced to its types.

        ``provided`` names arguments filled in by the program (e.g. ``vocab_size`` from the data)
        which the user may not set. ``where`` prefixes messages (``params/x.yaml: model``).
        """
        params = self.parameters(name)
        checked = {}
        for key, value in kwargs.items():
            if key in provided:
                raise ConfigError(f"{where}.{key}: set from the data, remove it from the params")
            if key not in params:
                raise ConfigError(
                    f"{where}: unknown key '{key}' for {self.kind} '{name}': "
                    f"{did_you_mean(key, [p for p in params if p not in provided])}"
                )
            annotation = params[key].annotation
            if annotation is inspect.Parameter.empty:
                checked[key] = value
                continue
            try:
                checked[key] = type_adapter(annotation).validate_python(value)
            except ValidationError as err:
                expected = annotation.__name__ if isinstance(annotation, type) else str(annotation).replace("typing.", "")
                reason = err.errors()[0]["msg"]
                raise ConfigError(
                    f"{where}.{key} = {short_repr(value)}: expected {expected} ({reason})"
                ) from None
        return checked

    def describe(self, name: str) -> str:
        return inspect.getdoc(self.get(name)) or ""
