"""Errors nas-neck reports to users: one clear message, no traceback at the CLI."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path


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


def is_out_of_space(e: BaseException) -> bool:
    """Whether `e` is a full disk or an exhausted quota: an `OSError` with ENOSPC / EDQUOT on its
    chain, or SQLite's "database or disk is full" (Optuna's or MLflow's store on that disk)."""
    error = os_error_of(e)
    if error is not None and error.errno in OUT_OF_SPACE:
        return True
    seen: set[int] = set()
    current: BaseException | None = e
    while current is not None and id(current) not in seen:
        if "database or disk is full" in str(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def human_bytes(n: float) -> str:
    """Bytes as ``12.3 MB`` (decimal units, like `df -H`)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def check_room(path: str | Path, nbytes: int, what: str) -> None:
    """Refuse, before the work whose result it is, a file of about `nbytes` that could not be
    written at `path`: the folder is created, and `nbytes` are reserved there in a temporary file
    (`posix_fallocate`: a full disk or an exhausted quota fails at once) and released.

    A `WriteError` names the folder, `what` was to be written there and why; for a full disk, how
    much to free: ``<folder>: no room for <what>: no space left on device (ENOSPC); it needs
    about 6.1 MB there, 1.2 MB free: free at least 4.9 MB``.
    """
    folder = Path(path).parent
    probe = folder / f".{Path(path).name}.{os.getpid()}-room.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _reserve(fd, folder, nbytes)
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as e:
        raise _room_error(folder, what, nbytes, e) from None


def _room_error(folder: Path, what: str, nbytes: int, e: OSError) -> WriteError:
    """`check_room`'s one line: for a full disk, how much to free."""
    if e.errno not in OUT_OF_SPACE:  # no permission, a file in the folder's place, ...
        return WriteError(f"{folder}: cannot write {what} there: {describe_os_error(e)}")
    message = f"{folder}: no room for {what}: {describe_os_error(e)}"
    message += f"; it needs about {human_bytes(nbytes)} there"
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = nbytes
    if free < nbytes:
        return WriteError(
            f"{message}, {human_bytes(free)} free: free at least {human_bytes(nbytes - free)}"
        )
    return WriteError(f"{message}: free some space")


def _reserve(fd: int, folder: Path, nbytes: int) -> None:
    """Allocate `nbytes` in the open file `fd`; where the file system cannot preallocate (or on
    macOS), compare the free space with `nbytes` and write one byte instead."""
    allocate = getattr(os, "posix_fallocate", None)
    if allocate is not None:
        try:
            allocate(fd, 0, max(nbytes, 1))
            return
        except OSError as e:
            if e.errno in OUT_OF_SPACE:
                raise
    if shutil.disk_usage(folder).free < nbytes:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))
    os.write(fd, b"\0")
