"""Errors nas-neck reports to users: one clear message, no traceback at the CLI."""

from __future__ import annotations

import errno


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


class WriteError(NasNeckError):
    """A file or folder cannot be written (disk full, over quota, no permission): names it, says why."""


class CheckpointError(NasNeckError):
    """A checkpoint is unreadable, damaged or not nas-neck's: names the file and what is wrong."""


OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def os_error_of(e: BaseException) -> OSError | None:
    """The `OSError` behind `e`: `e` itself, or one it was raised from or while handling (torch
    re-raises a failed write as a RuntimeError, so the errno is only on the chain)."""
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def describe_os_error(e: OSError) -> str:
    """``no space left on device (ENOSPC)``: the error's text and errno name, for a one-line message."""
    name = errno.errorcode.get(e.errno, "") if e.errno is not None else ""
    text = e.strerror.lower() if e.strerror else str(e) or type(e).__name__
    return f"{text} ({name})" if name else text
