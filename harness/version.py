"""The harness's version, recorded in every checkpoint (and read by pyproject.toml)."""

__version__ = "0.1.0"
