"""From a destination's configuration to the object that exports to it.

Each destination module registers its class for its configuration model with
:func:`register`, so a new destination type is a configuration model and a module,
and this factory never changes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from pacsflow.config import DestinationConfig
from pacsflow.errors import ConfigError
from pacsflow.export.protocol import Destination

_BUILDERS: dict[type, Callable[[Any], Destination]] = {}

_Class = TypeVar("_Class", bound=type)


def register(config_type: type) -> Callable[[_Class], _Class]:
    """Class decorator: ``config_type`` instances are exported by the decorated class."""

    def decorate(cls: _Class) -> _Class:
        _BUILDERS[config_type] = cls
        return cls

    return decorate


def make_destination(config: DestinationConfig) -> Destination:
    """The destination described by ``config`` (its ``type:`` picks the class)."""
    try:
        build = _BUILDERS[type(config)]
    except KeyError:
        known = ", ".join(sorted(t.__name__ for t in _BUILDERS))
        raise ConfigError(
            f"no destination is registered for {type(config).__name__}; known: {known}"
        ) from None
    return build(config)
