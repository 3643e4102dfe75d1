"""Parameter domains of the DSL: a plain value, `{choice: [...]}`, `{int: [lo, hi]}`, `{float: [lo, hi]}`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from nas_neck.dsl.sampling import Sampler

Check = Callable[[Any], str | None]
"""Validates one concrete value: returns what was expected, or None when the value is fine."""


@dataclass(frozen=True)
class Fixed:
    """A plain value: not a search parameter."""

    value: Any

    def sample(self, sampler: Sampler, name: str) -> Any:
        return self.value

    def describe(self) -> str:
        return repr(self.value)


@dataclass(frozen=True)
class Choice:
    """A categorical parameter."""

    options: tuple[Any, ...]

    def sample(self, sampler: Sampler, name: str) -> Any:
        return sampler.choice(name, self.options)

    def describe(self) -> str:
        return "{" + ", ".join(str(o) for o in self.options) + "}"


@dataclass(frozen=True)
class IntRange:
    """An integer parameter in `[low, high]` (inclusive) on a `step` grid."""

    low: int
    high: int
    step: int = 1

    def sample(self, sampler: Sampler, name: str) -> int:
        return sampler.int(name, self.low, self.high, self.step)

    def describe(self) -> str:
        step = f" step {self.step}" if self.step != 1 else ""
        return f"int [{self.low}, {self.high}]{step}"


@dataclass(frozen=True)
class FloatRange:
    """A real parameter in `[low, high]`, optionally log-uniform."""

    low: float
    high: float
    log: bool = False

    def sample(self, sampler: Sampler, name: str) -> float:
        return sampler.float(name, self.low, self.high, self.log)

    def describe(self) -> str:
        return f"float [{self.low}, {self.high}]{' log' if self.log else ''}"


Domain = Fixed | Choice | IntRange | FloatRange


def parse_domain(raw: Any, check: Check) -> Domain:
    """Parse a plain value or a domain mapping, validating every value it can take.

    Raises ValueError with a message saying what was expected.
    """
    if not isinstance(raw, dict):
        _require(raw, check)
        return Fixed(raw)
    kinds = [k for k in ("choice", "int", "float") if k in raw]
    if len(kinds) != 1:
        raise ValueError(
            f"expected a plain value or one of {{choice: [...]}}, {{int: [lo, hi]}}, "
            f"{{float: [lo, hi]}}; got keys {sorted(raw)}"
        )
    kind = kinds[0]
    allowed = {"choice": {"choice"}, "int": {"int", "step"}, "float": {"float", "log"}}[kind]
    if extra := set(raw) - allowed:
        raise ValueError(
            f"unknown key(s) {sorted(extra)} in a {kind} domain; expected {sorted(allowed)}"
        )
    body = raw[kind]
    if kind == "choice":
        if not isinstance(body, list) or not body:
            raise ValueError("expected a non-empty list of options in {choice: [...]}")
        for option in body:
            _require(option, check)
        if len(set(map(repr, body))) != len(body):
            raise ValueError(f"choice options must be distinct, got {body}")
        return Choice(tuple(body))
    if not (isinstance(body, list) and len(body) == 2):
        raise ValueError(f"expected {{{kind}: [low, high]}}, got {body!r}")
    low, high = body
    if kind == "int":
        step = raw.get("step", 1)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high, step)):
            raise ValueError(f"expected integers in {{int: [low, high]}}, got {body!r}")
        if low > high or step < 1:
            raise ValueError(f"expected low <= high and step >= 1, got [{low}, {high}] step {step}")
        for v in (low, high):
            _require(v, check)
        return IntRange(low, high, step)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high)):
        raise ValueError(f"expected numbers in {{float: [low, high]}}, got {body!r}")
    log = bool(raw.get("log", False))
    if low > high or (log and low <= 0):
        raise ValueError(f"expected low <= high (and low > 0 with log), got [{low}, {high}]")
    for v in (low, high):
        _require(v, check)
    return FloatRange(float(low), float(high), log)


def _require(value: Any, check: Check) -> None:
    if (expected := check(value)) is not None:
        raise ValueError(f"expected {expected}, got {value!r}")


def one_of(options: Sequence[Any]) -> Check:
    """Check: the value is one of `options`."""
    return lambda v: None if v in options else "one of " + ", ".join(map(str, options))


def int_in(low: int, high: int | None = None, what: str = "an integer") -> Check:
    """Check: an integer in `[low, high]` (no upper bound when `high` is None)."""

    def check(v: Any) -> str | None:
        ok = (
            isinstance(v, int)
            and not isinstance(v, bool)
            and v >= low
            and (high is None or v <= high)
        )
        if ok:
            return None
        return f"{what} in [{low}, {high}]" if high is not None else f"{what} >= {low}"

    return check
