"""Config dataclasses from what a config file or a checkpoint holds."""

from __future__ import annotations

from dataclasses import fields
from typing import Any


def as_dataclass(cls: type, value: Any) -> Any:
    """``value`` as a ``cls`` instance: a dict (checkpoint hyper-parameters, YAML) becomes one, an
    instance passes through."""
    return cls(**value) if isinstance(value, dict) else value


def known_fields(cls: type, values: Any) -> dict:
    """The keys of ``values`` that ``cls`` has: a config written by a later fundus-lit with a new,
    defaulted setting still loads."""
    if not isinstance(values, dict):
        raise TypeError(f"{cls.__name__} must be a mapping, got {type(values).__name__}")
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}
