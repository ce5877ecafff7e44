"""The user-input errors, kept importable from the data layer where most of them are raised."""

from fundus_lit.core.errors import ConfigError, DataError

__all__ = ["ConfigError", "DataError"]
