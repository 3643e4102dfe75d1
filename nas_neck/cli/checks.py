"""What each option accepts, declared once beside the option, and checked before a command does
any work; pydantic's `ValidationError` put in the same one-line form.

A check is metadata in the option's `Annotated` type (typer reads only its own `Option` there):

    trials: Annotated[int, like(SearchSettings, "trials")] = typer.Option(8, help=...)

`friendly` (`cli/console.py`) runs every check of a command on its arguments before calling it,
and turns a failure into one line: `error: --trials: expected an integer >= 1, got 0`. Bounds
that a pydantic model owns are read from its field (`like`), so the CLI and the model agree.
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError
from typer.models import ArgumentInfo, ParameterInfo

from nas_neck.config import DEFAULT_BACKBONE
from nas_neck.errors import NasNeckError


class OptionError(NasNeckError):
    """An option's value is not what it accepts: `--OPTION: expected WHAT, got VALUE`."""

    def __init__(self, option: str, expected: str, value: object) -> None:
        self.option, self.expected, self.value = option, expected, value
        super().__init__(f"{option}: expected {expected}, got {shown(value)}")


def shown(value: object) -> str:
    """A value as the user typed it: numbers bare (`-1`, `0.5`), text and paths quoted."""
    if isinstance(value, int):  # bools too
        return str(value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, Path):
        return repr(str(value))
    return repr(value)


# ---- checks ------------------------------------------------------------------------------------
class Check:
    """One rule of an option's value; `__call__` raises `NasNeckError` (an `OptionError`)."""

    def __call__(self, option: str, value: Any) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Range(Check):
    """A number within bounds; `integer` for whole numbers (typer has parsed the type already)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # low itself excluded
    high_open: bool = False
    integer: bool = True

    @property
    def expected(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_num(self.high)}"
        return kind

    def __call__(self, option: str, value: Any) -> None:
        ok = isinstance(value, int | float) and math.isfinite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.low_open else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.high_open else value <= self.high
        if not ok:
            raise OptionError(option, self.expected, value)


def at_least(low: int) -> Range:
    """An integer >= `low` (a count or budget)."""
    return Range(low=low)


POSITIVE = Range(low=0, low_open=True, integer=False)  # a number > 0 (a latency budget)
NON_NEGATIVE = Range(low=0, integer=False)  # a number >= 0 (GPUs per trial)
SEED = Range(low=0, high=2**32 - 1)  # what numpy and every sampler take


def like(model: type[BaseModel], field: str) -> Range:
    """The bounds of a pydantic model's field (`Field(ge=1)`), as the option that feeds it."""
    info = model.model_fields[field]
    bounds = {
        k: getattr(m, k) for m in info.metadata for k in ("ge", "gt", "le", "lt") if hasattr(m, k)
    }
    return Range(
        low=bounds.get("ge", bounds.get("gt")),
        high=bounds.get("le", bounds.get("lt")),
        low_open="gt" in bounds,
        high_open="lt" in bounds,
        integer=_is_int(info.annotation),
    )


@dataclass(frozen=True)
class OneOf(Check):
    """One of fixed names; `normalize` maps what the user typed first (lower case, aliases)."""

    choices: tuple[str, ...]
    normalize: Callable[[str], str] | None = None

    def __call__(self, option: str, value: Any) -> None:
        name = self.normalize(value) if self.normalize else value
        if name not in self.choices:
            raise OptionError(option, f"one of {', '.join(self.choices)}", value)


@dataclass(frozen=True)
class Rule(Check):
    """A check written as a function `(option, value) -> None` that raises `NasNeckError`."""

    fn: Callable[[str, Any], None]

    def __call__(self, option: str, value: Any) -> None:
        self.fn(option, value)


def _storage(option: str, value: str) -> None:
    from nas_neck.search.defaults import is_journal

    if not (is_journal(value) or "://" in value):
        raise OptionError(
            option,
            "a database URL (sqlite:///nas.db, postgresql://...) or a journal file (journal:PATH)",
            value,
        )


def _backbone(option: str, value: str) -> None:
    if value == DEFAULT_BACKBONE:  # a timm model (tests/test_startup.py): no need to load timm
        return
    import timm

    if value.startswith(("hf-hub:", "hf_hub:", "local-dir:")) or timm.is_model(value):
        return
    raise OptionError(option, "a timm model name (timm.list_models() lists them)", value)


def _backbone_weights(option: str, value: str) -> None:
    if value in ("auto", "random") or Path(value).is_file():
        return
    raise OptionError(option, "'auto', 'random' or an existing state-dict file", value)


STORAGE = Rule(_storage)
BACKBONE = Rule(_backbone)
BACKBONE_WEIGHTS = Rule(_backbone_weights)


def existing(option: str, path: Path | None, kind: str = "file or folder") -> None:
    """Refuse a path that does not exist (`kind`: "file", "folder" or "file or folder")."""
    if path is None:
        return
    p = Path(path)
    ok = {"file": p.is_file(), "folder": p.is_dir()}.get(kind, p.exists())
    if not ok:
        raise OptionError(option, f"an existing {kind}", p)


# ---- reachability --------------------------------------------------------------------------------
# ---- running the checks --------------------------------------------------------------------------
@dataclass(frozen=True)
class Declared:
    """A command parameter as the user names it, and its checks."""

    option: str  # "--trials", or the argument's metavar ("SPACE")
    checks: tuple[Check, ...]


def declared(fn: Callable[..., Any]) -> dict[str, Declared]:
    """Every parameter of a typer command: its option name and the checks in its `Annotated`."""
    hints = typing.get_type_hints(fn, include_extras=True)
    out: dict[str, Declared] = {}
    for name, param in inspect.signature(fn).parameters.items():
        hint = hints.get(name)
        meta = typing.get_args(hint)[1:] if typing.get_origin(hint) is Annotated else ()
        infos = [m for m in (*meta, param.default) if isinstance(m, ParameterInfo)]
        checks = tuple(m for m in meta if isinstance(m, Check))
        out[name] = Declared(_option_name(name, infos[0] if infos else None), checks)
    return out


def _option_name(name: str, info: ParameterInfo | None) -> str:
    if isinstance(info, ArgumentInfo):
        return name.upper()
    decls = [d for d in getattr(info, "param_decls", None) or () if str(d).startswith("--")]
    return decls[0] if decls else "--" + name.replace("_", "-")


def run_checks(params: Mapping[str, Declared], values: Mapping[str, Any]) -> None:
    """Check each given value (None: not given) in the command's order; the first bad one raises."""
    for name, d in params.items():
        value = values.get(name)
        if value is None or not d.checks:
            continue
        for item in value if isinstance(value, list | tuple) else (value,):
            for check in d.checks:
                check(d.option, item)


# ---- pydantic ------------------------------------------------------------------------------------
# Model fields whose option is not `--` + the field name with dashes.
FIELD_OPTIONS = {
    "train.epochs": "--epochs",
    "train.batch_size": "--batch-size",
    "train.seed": "--seed",
    "latency_threads": "--threads",
    "cache_root": "--cache-dir",
    "out_dir": "--out",
    "accuracy": "--objectives",
    "cost": "--objectives",
}


def from_validation_error(e: ValidationError, options: Collection[str] | None = None) -> str:
    """One line for a pydantic error, naming the option behind each field (`options`: those of
    the command; a field none of them feeds is named `Model.field`)."""
    parts = []
    for err in e.errors(include_url=False):
        name = option_of(err["loc"], e.title, options)
        parts.append(f"{name}: {expectation(err)}")
    return "; ".join(parts)


def option_of(loc: Iterable[object], title: str, options: Collection[str] | None = None) -> str:
    """The option a field (`("train", "epochs")`; `("baselines", 0)` for a list item) comes
    from: `--epochs`; None of `options` (those of the command) feeds it: `Model.train.lr`."""
    fields = [str(p) for p in loc if not isinstance(p, int)]
    path = ".".join(fields)
    option = FIELD_OPTIONS.get(path) or "--" + (fields[-1] if fields else "").replace("_", "-")
    if fields and (options is None or option in options):
        return option
    return ".".join([title, *(str(p) for p in loc)])


def expectation(err: Mapping[str, Any]) -> str:
    """What one pydantic error (`ValidationError.errors()` item) expected and got: `expected an
    integer >= 1, got 0`."""
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    integer = isinstance(value, int) and not isinstance(value, bool)
    bounds = {
        "greater_than_equal": ("ge", "low", False),
        "greater_than": ("gt", "low", True),
        "less_than_equal": ("le", "high", False),
        "less_than": ("lt", "high", True),
    }
    if kind in bounds:
        key, side, open_ = bounds[kind]
        bound = ctx[key]
        integer = integer and isinstance(bound, int)
        rng = (
            Range(low=bound, low_open=open_, integer=integer)
            if side == "low"
            else Range(high=bound, high_open=open_, integer=integer)
        )
        return f"expected {rng.expected}, got {shown(value)}"
    if kind == "missing":
        return "a value is required"
    if kind == "extra_forbidden":
        return f"not a setting (got {shown(value)})"
    if kind == "literal_error":
        return f"expected {ctx.get('expected')}, got {shown(value)}"
    plain = {
        "int_parsing": "an integer",
        "int_type": "an integer",
        "int_from_float": "an integer",
        "float_parsing": "a number",
        "float_type": "a number",
        "bool_parsing": "true or false",
        "bool_type": "true or false",
        "string_type": "text",
        "path_type": "a path",
    }
    if kind in plain:
        return f"expected {plain[kind]}, got {shown(value)}"
    msg = str(err.get("msg", kind))
    return f"{msg[:1].lower()}{msg[1:]}, got {shown(value)}"


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def _is_int(annotation: object) -> bool:
    args = typing.get_args(annotation)
    return annotation is int or (bool(args) and all(a in (int, type(None)) for a in args))
