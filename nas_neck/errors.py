"""Errors nas-neck reports to users: one clear message, no traceback at the CLI."""

from __future__ import annotations


class NasNeckError(Exception):
    """Base of every error nas-neck reports to a user (the CLI prints it without a traceback)."""


class SpaceError(NasNeckError):
    """A search space or architecture file is invalid: names the file, the key path and what was expected."""

    def __init__(self, message: str, *, source: str | None = None, path: str | None = None) -> None:
        self.source = source
        self.path = path
        where = ": ".join(p for p in (source, path) if p)
        super().__init__(f"{where}: {message}" if where else message)


class DataError(NasNeckError):
    """A dataset is unusable: names the file (and annotation or image id) and what is wrong."""


class BackboneError(NasNeckError):
    """A backbone cannot be built or its weights cannot be loaded: says what to pass instead."""
