"""The search spaces that ship with nas-neck, addressed by name (`fpn`, `pafpn-family`, ...).

They are package data (`nas_neck/search_spaces/*.yaml`; the repo's top-level `search_spaces/`
links there), read with `importlib.resources`, so a wheel install finds them from any folder.
A reference to a space is either a file path or a shipped name: an existing file wins.
"""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

_PACKAGE = "nas_neck.search_spaces"
_SUFFIX = ".yaml"


def shipped_spaces() -> dict[str, Traversable]:
    """Every shipped space file by name, sorted by name."""
    found = {
        f.name.removesuffix(_SUFFIX): f
        for f in files(_PACKAGE).iterdir()
        if f.name.endswith(_SUFFIX)
    }
    return dict(sorted(found.items()))


def shipped_names() -> list[str]:
    """Names of the shipped spaces, sorted."""
    return list(shipped_spaces())


def find_space(ref: str | Path) -> Path | Traversable:
    """The file behind `ref`: an existing path, else the shipped space of that name (with or
    without `.yaml`), else `ref` as a path (reading it then names the missing file)."""
    path = Path(ref)
    if path.exists():
        return path
    name = str(ref).removesuffix(_SUFFIX)
    shipped = shipped_spaces()
    return shipped[name] if name in shipped and "/" not in name else path


def space_ref(ref: str | Path) -> str:
    """A reference that any process finds: an existing file as an absolute path, a shipped name
    as the name, anything else unchanged."""
    path = Path(ref).expanduser()
    if path.exists():
        return str(path.resolve())
    return str(ref)
