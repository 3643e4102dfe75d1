"""The YAML schema of search spaces (pydantic), with errors that name the file, key and expectation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from nas_neck.dsl.domain import Check, Domain, Fixed, int_in, one_of, parse_domain
from nas_neck.dsl.opnames import op_names
from nas_neck.dsl.shipped import find_space, shipped_names
from nas_neck.errors import SpaceError

MIN_LEVEL, MAX_LEVEL = 2, 7
BACKBONE_LEVELS = (2, 3, 4, 5)


def _registered(registry: str) -> Check:
    """Check: a name in an op registry (`nas_neck.ops.BLOCKS`, ...), read when validating (ops
    can be added at runtime), without importing torch until then (`nas_neck.dsl.opnames`)."""
    return lambda v: one_of(op_names(registry))(v)


CHECKS: dict[str, Check] = {
    "level": int_in(MIN_LEVEL, MAX_LEVEL, "a pyramid level"),
    "fuse": _registered("FUSE_OPS"),
    "block": _registered("BLOCKS"),
    "depth": int_in(1, 8, "a block depth"),
    "width": int_in(1, None, "a positive integer width"),
    "upsample": _registered("UPSAMPLE_MODES"),
    "downsample": _registered("DOWNSAMPLE_MODES"),
    "repeat": int_in(1, 16, "a repeat count"),
    "nodes": int_in(0, 64, "a node count"),
    "fan_in": int_in(1, 8, "a fan-in"),
}
NODE_FIELDS = ("fuse", "block", "depth", "width", "upsample", "downsample")


def _domain_validator(*fields: str, check: str | None = None):
    def validate(cls, value: Any, info) -> Domain | None:
        if value is None:
            return None
        return parse_domain(value, CHECKS[check or info.field_name])

    return field_validator(*fields, mode="before")(validate)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, validate_default=True)


class DefaultsSpec(_Strict):
    """Node fields applied to every node that does not set them; sampled per node."""

    fuse: Any = None
    block: Any = None
    depth: Any = None
    width: Any = None
    upsample: Any = None
    downsample: Any = None

    check_node_fields = _domain_validator(*NODE_FIELDS)


class NodeSpec(DefaultsSpec):
    """One node of a fixed-graph space."""

    level: Any
    inputs: list[str]
    output: bool = False

    check_level = _domain_validator("level")

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("expected at least one input")
        if dup := sorted({v for v in value if value.count(v) > 1}):
            raise ValueError(f"input(s) {dup} listed more than once")
        return value


class FreeSpec(_Strict):
    """A free-form (NAS-FPN style) space: the graph itself is sampled."""

    nodes: Any
    fan_in: Any = 2
    levels: Any = [3, 4, 5]

    check_counts = _domain_validator("nodes", "fan_in")

    @field_validator("levels", mode="before")
    @classmethod
    def _levels(cls, value: Any) -> Domain:
        if isinstance(value, list):
            value = {"choice": value}
        return parse_domain(value, CHECKS["level"])


class SpaceSpec(_Strict):
    """A whole search space file (an architecture file is one with no domains)."""

    name: str
    description: str = ""
    inputs: list[str]
    outputs: list[int] | None = None
    extra_levels: list[int] = []
    extra_downsample: Any = "conv"
    width: Any = 64
    depth: Any = None
    repeat: Any = 1
    defaults: DefaultsSpec = DefaultsSpec()
    nodes: dict[str, NodeSpec] | None = None
    free: FreeSpec | None = None

    check_globals = _domain_validator("width", "depth", "repeat")
    check_extra = _domain_validator("extra_downsample", check="downsample")

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: list[str]) -> list[str]:
        allowed = [f"P{lvl}" for lvl in BACKBONE_LEVELS]
        for v in value:
            if v not in allowed:
                raise ValueError(f"expected backbone levels among {', '.join(allowed)}, got {v!r}")
        if not value:
            raise ValueError("expected at least one backbone level")
        return sorted(set(value), key=lambda s: int(s[1:]))

    @field_validator("outputs", "extra_levels")
    @classmethod
    def _levels(cls, value: list[int] | None) -> list[int] | None:
        for v in value or []:
            if (msg := CHECKS["level"](v)) is not None:
                raise ValueError(f"expected {msg}, got {v!r}")
        return sorted(set(value)) if value is not None else None


def read_spec(ref: str | Path) -> SpaceSpec:
    """Read and validate a space file or shipped space (`find_space`); any problem raises one
    `SpaceError` naming file and key."""
    path = find_space(ref)
    try:
        text = path.read_text()
    except FileNotFoundError:
        shipped = ", ".join(shipped_names())
        raise SpaceError(
            f"cannot read the file (no such file), nor is it a shipped space ({shipped})",
            source=str(path),
        ) from None
    except OSError as e:
        raise SpaceError(f"cannot read the file ({e.strerror})", source=str(path)) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        problem = getattr(e, "problem", None) or str(e)
        raise SpaceError(f"invalid YAML: {problem}", source=str(path), path=where) from None
    return parse_spec(raw, source=str(path))


def parse_spec(raw: Any, source: str | None = None) -> SpaceSpec:
    """Validate an already-parsed mapping (see `read_spec`)."""
    if not isinstance(raw, dict):
        raise SpaceError(
            f"expected a mapping at the top level, got {type(raw).__name__}", source=source
        )
    try:
        return SpaceSpec.model_validate(raw)
    except ValidationError as e:
        raise _to_space_error(e, source) from None


def _to_space_error(error: ValidationError, source: str | None) -> SpaceError:
    err = error.errors()[0]
    loc = [str(p) for p in err["loc"]]
    path = ".".join(loc)
    if err["type"] == "extra_forbidden":
        model = _model_at(loc[:-1])
        expected = ", ".join(model.model_fields)
        return SpaceError(
            f"unknown key {loc[-1]!r}; expected one of: {expected}", source=source, path=path
        )
    if err["type"] == "missing":
        return SpaceError("missing required key", source=source, path=path)
    msg = err["msg"].removeprefix("Value error, ")
    return SpaceError(msg, source=source, path=path)


def _model_at(loc: list[str]) -> type[BaseModel]:
    if loc[:1] == ["nodes"] and len(loc) == 2:
        return NodeSpec
    if loc[:1] == ["defaults"]:
        return DefaultsSpec
    if loc[:1] == ["free"]:
        return FreeSpec
    return SpaceSpec


def is_fixed(domain: Any) -> bool:
    return domain is None or isinstance(domain, Fixed)
