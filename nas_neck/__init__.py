"""nas-neck: neural architecture search over detection necks for small, dense objects."""

__version__ = "0.1.0"
