"""Recorded constructor calls and registry look-ups, shared by every family of ops.

The factories (`make_block`, `make_fusion`, `Resample`) build each module that a neck
holds directly through `build`, which records the constructor call on the module. The
exporter writes that call back as code (`Bottleneck(64, 32)`) and copies the class's
source, so a new op needs no exporter code. `DEPLOYED` says which class a module is
written as once `reparameterize()` has fused it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from torch import nn

__all__ = ["DEPLOYED", "Call", "build", "call_of", "deployed", "lookup"]

M = TypeVar("M", bound=nn.Module)
V = TypeVar("V")


@dataclass(frozen=True)
class Call:
    """`cls(*args, **kwargs)`: how a module was built, or is written in exported code.

    `renames` maps state-dict prefixes of the module onto those of a `cls` instance
    where they differ (a fused RepConv holds `fused`, the `ConvAct` it is written as
    holds `conv`).
    """

    cls: type[nn.Module]
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    renames: Mapping[str, str] = field(default_factory=dict)


def build(cls: type[M], /, *args: Any, **kwargs: Any) -> M:
    """`cls(*args, **kwargs)`, with the call recorded on the module for the exporter."""
    module = cls(*args, **kwargs)
    module._nas_call = Call(cls, args, kwargs)
    return module


def call_of(module: nn.Module) -> Call | None:
    """The call `build` recorded on `module`; None for a module built otherwise."""
    return module.__dict__.get("_nas_call")


DEPLOYED: dict[type[nn.Module], Call] = {}
"""What a re-parameterized instance of each class is written as: `Call(cls, args,
kwargs, renames)` means `cls(*recorded_args, *args, **recorded_kwargs, **kwargs)`, its
weights renamed by `renames`. A bare `Call(cls)` (same arguments, same weight names)
also stands for the class wherever copied source builds it."""


def deployed(call: Call) -> Call:
    """`call` as written for a re-parameterized module (itself when nothing changes)."""
    form = DEPLOYED.get(call.cls)
    if form is None:
        return call
    kwargs = {**call.kwargs, **form.kwargs}
    return Call(form.cls, call.args + form.args, kwargs, form.renames)


def lookup(registry: Mapping[str, V], kind: str, name: str) -> V:
    """`registry[name]`, or a ValueError naming `kind` and the registered names."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        names = ", ".join(registry)
        raise ValueError(f"unknown {kind} {name!r}; expected one of {names}") from None
