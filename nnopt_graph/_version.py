"""The package version, defined once (pyproject.toml reads it as a dynamic version)."""

__version__ = "0.1.0"
