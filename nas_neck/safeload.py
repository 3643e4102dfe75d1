"""Torch files read without running code from them, and checkpoint data kept loadable that way.

A torch file is a pickle, and unpickling one the default way runs whatever functions it names
(`os.system`, `builtins.exec`, `pathlib.Path.touch`). So every torch file nas-neck reads from a
user or from disk (checkpoints, backbone weights) goes through `load_torch_file`: torch's
weights-only unpickler, which builds tensors, containers and plain values only. A file that needs
more is refused before anything in it ran, with one `CheckpointError` line naming the file and
the globals it would have imported (read from its pickle opcodes, never by unpickling it).

What nas-neck writes is kept within that (`plain`): metadata as dicts, lists, tuples, str, int,
float, bool, None and tensors; the loaders rebuild their objects (architecture, `TrainConfig`)
from those.
"""

from __future__ import annotations

import _compat_pickle
import contextlib
import dataclasses
import enum
import io
import os
import pickle
import pickletools
import re
import secrets
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nas_neck.errors import (
    OUT_OF_SPACE,
    CheckpointError,
    WriteError,
    describe_os_error,
    os_error_of,
)

__all__ = ["REFUSED", "load_torch_file", "plain", "refusal", "refused_globals", "save_torch_file"]

REFUSED = "refused: loading it would run code from the file"

_SCAN_BYTES = 64 << 20  # of a file that is not a zip archive: its pickles come first
_SHOWN = 6  # globals named in the message, at most
# Globals an older version's metadata could hold (numpy scalars, paths, pydantic models, our own
# dataclasses), as opposed to functions called while loading (exec, os.system, getattr, ...).
_DATA_MODULES = ("numpy", "pathlib", "pydantic", "pydantic_core", "nas_neck", "collections",
                 "datetime", "decimal", "enum", "fractions", "uuid")  # fmt: skip
_MESSAGE_GLOBAL = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")


def save_torch_file(path: Path, payload: Any, what: str = "the checkpoint") -> Path:
    """`torch.save` to a temporary file beside `path`, synced and renamed into place, so `path`
    is never partial and an older file there stays intact; a failure to write is a `WriteError`
    naming `path` and `what` (with what to do on a full disk), the temporary file removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if (error := os_error_of(e)) is None:
            raise
        hint = "; free some space and run again" if error.errno in OUT_OF_SPACE else ""
        raise WriteError(f"{path}: cannot save {what}: {describe_os_error(error)}{hint}") from None
    return path


def load_torch_file(path: str | Path) -> Any:
    """`torch.load(path)` on the CPU with ``weights_only=True``.

    A file that needs arbitrary unpickling (a crafted one, or one holding objects other than
    tensors, containers and plain values) is a `CheckpointError` naming it and the globals it
    holds; nothing in it ran. Any other failure (missing, truncated, not a torch file) is torch's
    own exception, for the caller to word.
    """
    with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the refusal says more
        warnings.simplefilter("ignore", UserWarning)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            names = refused_globals(path, e)
            if not names:
                raise
    raise CheckpointError(refusal(path, names)) from None


def refusal(path: str | Path, names: list[str]) -> str:
    """The one line that refuses `path`, which holds the unsafe globals `names`."""
    shown = ", ".join(names[:_SHOWN]) + (
        f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    )
    message = (
        f"{path}: {REFUSED} (it holds {shown}); nas-neck checkpoints hold only weights and plain "
        "metadata"
    )
    if all(_data_like(n) for n in names):  # what an older nas-neck or another tool's meta held
        message += (
            "; if an older nas-neck wrote it, retrain it (`nas-neck train`, or the search) or, "
            "if you trust the file, re-save it with plain metadata"
        )
    return message


def refused_globals(path: str | Path, error: BaseException | None = None) -> list[str]:
    """The globals in the pickle of `path` that torch's weights-only loader refuses, sorted
    (``builtins.exec``, ``posix.system``); read from its opcodes, nothing is unpickled. The
    global named in `error` (torch's refusal) is always among them."""
    allowed = _allowed_globals()
    names = {n for n in _pickle_globals(path) if allowed and n not in allowed}
    if error is not None:
        for name in _MESSAGE_GLOBAL.findall(str(error)):
            names.add(name if "." in name else f"builtins.{name}")  # torch drops "builtins."
    return sorted(names)


def plain(value: Any, where: str = "value") -> Any:
    """`value` as data `torch.load(weights_only=True)` reads back: dicts, lists, tuples, str,
    int, float, bool, None, bytes and tensors. Numpy scalars and arrays, paths, enums,
    dataclasses, named tuples, pydantic models and sets are converted; anything else is a
    `TypeError` naming where it is (`where`, e.g. ``meta.metrics.map``)."""
    if value is None or type(value) in (bool, int, float, str, bytes):
        return value
    if isinstance(value, torch.Tensor):
        if type(value) in (torch.Tensor, torch.nn.Parameter):
            return value
        return value.as_subclass(torch.Tensor)
    if isinstance(value, enum.Enum):
        return plain(value.value, where)
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return plain(value.tolist(), where)
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return plain(value.item(), where)
    for kind in (bool, int, float, str, bytes):  # subclasses pickle as their own class
        if isinstance(value, kind):
            return kind(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, where)
    if callable(getattr(value, "model_dump", None)) and not isinstance(value, type):  # pydantic
        return plain(value.model_dump(), where)
    if isinstance(value, Mapping):
        return {plain(k, where): plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, tuple) and callable(getattr(value, "_asdict", None)):  # named tuple
        return plain(value._asdict(), where)
    if isinstance(value, tuple):
        return tuple(plain(v, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(value, list):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, set | frozenset):
        items = [plain(v, where) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    raise TypeError(
        f"{where}: a {type(value).__module__}.{type(value).__qualname__} is not plain data "
        "(a checkpoint holds dicts, lists, str, int, float, bool, None and tensors)"
    )


def _data_like(name: str) -> bool:
    """Whether global `name` is a kind of value rather than a function run while loading:
    numpy's scalars, dtypes and array rebuilding, or a class of a data module."""
    module, last = name.split(".", 1)[0], name.rsplit(".", 1)[-1]
    if module == "numpy" and last in ("_reconstruct", "scalar", "dtype", "ndarray"):
        return True
    return module in _DATA_MODULES and last[:1].isupper()


def _allowed_globals() -> set[str]:
    """What torch's weights-only unpickler accepts (its defaults and `add_safe_globals`)."""
    try:
        from torch import _weights_only_unpickler as wo

        return set(wo._get_allowed_globals()) | set(wo._get_user_allowed_globals())
    except Exception:  # a torch without these private helpers: torch's refusal names one
        return set()


def _pickle_globals(path: str | Path) -> set[str]:
    """Every global (``module.name``) the pickles of `path` import: those of ``data.pkl`` in a
    `torch.save` zip archive, else those at the start of the file (a raw pickle, or the pickles
    of torch's legacy format). A read error leaves what was found so far."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                records = [n for n in archive.namelist() if n.rsplit("/", 1)[-1] == "data.pkl"]
                if not records:
                    return set()
                data = archive.read(min(records, key=len))
        else:
            with open(path, "rb") as fh:
                data = fh.read(_SCAN_BYTES)
    except (OSError, zipfile.BadZipFile, ValueError, RuntimeError):
        return set()
    found: set[str] = set()
    stream = io.BytesIO(data)
    for _ in range(8):  # torch's legacy format is a few pickles in a row
        if stream.tell() >= len(data) or not _scan(stream, found):
            break
    return found


def _global_name(module: str, name: str) -> str:
    """``module.name`` as Python 3 (and torch) resolve it: protocol 2 writes ``__builtin__``."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}"


def _scan(stream: io.BytesIO, found: set[str]) -> bool:
    """Add the globals of the pickle at `stream`'s position to `found`; whether it ended well."""
    memo: dict[int, Any] = {}
    strings: list[str] = []  # the strings pushed last (STACK_GLOBAL pops module and name)
    top: Any = None
    try:
        for op, arg, _ in pickletools.genops(stream):
            name = op.name
            if name in ("GLOBAL", "INST"):
                found.add(_global_name(*str(arg).partition(" ")[::2]))
                top = None
            elif name == "STACK_GLOBAL":
                if len(strings) >= 2:
                    found.add(_global_name(strings[-2], strings[-1]))
                strings, top = [], None
            elif isinstance(arg, str) and ("UNICODE" in name or "STRING" in name):
                top = arg
                strings.append(arg)
            elif name == "MEMOIZE":
                memo[len(memo)] = top
            elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = top
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                top = memo.get(int(arg))
                if isinstance(top, str):
                    strings.append(top)
            elif name not in ("FRAME", "PROTO", "MARK"):
                top = None
    except Exception:  # damaged, or not a pickle past this point
        return False
    return True
