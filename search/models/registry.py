"""Models are built by name from small registered builder functions (the timm pattern)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from search.errors import ConfigError

ModelBuilder = Callable[..., nn.Module]

_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(builder: ModelBuilder) -> ModelBuilder:
    """Register ``builder`` under its function name; a name already taken is refused (as objectives and compression
    steps are)."""
    if builder.__name__ in _BUILDERS:
        existing = _BUILDERS[builder.__name__]
        raise ValueError(f"model {builder.__name__!r} is already registered "
                         f"(by {existing.__module__}.{existing.__qualname__})")
    _BUILDERS[builder.__name__] = builder
    return builder


def list_models() -> list[str]:
    return sorted(_BUILDERS)


def model_options(name: str) -> list[str]:
    """The keyword arguments the builder ``name`` accepts."""
    return list(inspect.signature(_builder(name)).parameters)


def build_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model ``name``; unknown names and options raise :class:`ConfigError`."""
    builder = _builder(name)
    options = model_options(name)
    unknown = sorted(set(kwargs) - set(options))
    if unknown:
        raise ConfigError(
            f"{name} has no option {unknown[0]!r}; its options are: {', '.join(options)}"
        )
    return builder(**kwargs)


def _builder(name: str) -> ModelBuilder:
    try:
        return _BUILDERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown arch {name!r}; known archs: {', '.join(list_models())}"
        ) from None
