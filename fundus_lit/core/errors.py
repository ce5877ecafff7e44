"""Errors about user input, phrased so the user can find the file, row or key at fault."""


class DataError(ValueError):
    """Bad or missing input data; the message names the file (and row/column where known)."""


class ConfigError(ValueError):
    """A configuration value the classes it configures refuse; the message names its key."""
