"""The package version, importable without loading the package (the root package imports the
training module and every layer under it)."""

__version__ = "0.1.0"
