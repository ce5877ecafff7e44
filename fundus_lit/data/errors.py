"""Errors about user data, phrased so the user can find the file, row or key at fault."""


class DataError(ValueError):
    """Bad or missing input data; the message names the file (and row/column where known)."""
