"""One small interface for drawing parameter values: Optuna trials, seeded random, fixed dicts.

The same search space thus serves the Optuna study, Ray Tune (which drives an Optuna trial) and
hand-written architectures. Every sampler records what it drew in `params`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from nas_neck.errors import SpaceError


class Sampler(Protocol):
    """Draws one value per named parameter."""

    params: dict[str, Any]

    def choice(self, name: str, options: Sequence[Any]) -> Any: ...

    def int(self, name: str, low: int, high: int, step: int = 1) -> int: ...

    def float(self, name: str, low: float, high: float, log: bool = False) -> float: ...


class RandomSampler:
    """Uniform random draws from a seeded generator (log-uniform for log floats)."""

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)
        self.params: dict[str, Any] = {}

    def choice(self, name: str, options: Sequence[Any]) -> Any:
        self.params[name] = value = self._rng.choice(list(options))
        return value

    def int(self, name: str, low: int, high: int, step: int = 1) -> int:
        self.params[name] = value = low + step * self._rng.randint(0, (high - low) // step)
        return value

    def float(self, name: str, low: float, high: float, log: bool = False) -> float:
        if log:
            value = math.exp(self._rng.uniform(math.log(low), math.log(high)))
        else:
            value = self._rng.uniform(low, high)
        self.params[name] = value
        return value


class FixedSampler:
    """Takes every value from a mapping (e.g. an Optuna trial's params); checks each is in its domain."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = dict(values)
        self.params: dict[str, Any] = {}

    def _get(self, name: str) -> Any:
        if name not in self._values:
            raise SpaceError(f"no value given for parameter {name!r}", path=name)
        self.params[name] = value = self._values[name]
        return value

    def choice(self, name: str, options: Sequence[Any]) -> Any:
        value = self._get(name)
        if value not in options:
            raise SpaceError(f"expected one of {list(options)}, got {value!r}", path=name)
        return value

    def int(self, name: str, low: int, high: int, step: int = 1) -> int:
        value = self._get(name)
        if not isinstance(value, int) or not low <= value <= high or (value - low) % step:
            raise SpaceError(
                f"expected an integer in [{low}, {high}] step {step}, got {value!r}", path=name
            )
        return value

    def float(self, name: str, low: float, high: float, log: bool = False) -> float:
        value = self._get(name)
        if not isinstance(value, int | float) or not low <= value <= high:
            raise SpaceError(f"expected a number in [{low}, {high}], got {value!r}", path=name)
        return float(value)


class OptunaSampler:
    """Adapter from an `optuna.Trial` (define-by-run) to `Sampler`."""

    def __init__(self, trial: Any) -> None:
        self._trial = trial
        self.params: dict[str, Any] = {}

    def choice(self, name: str, options: Sequence[Any]) -> Any:
        self.params[name] = value = self._trial.suggest_categorical(name, list(options))
        return value

    def int(self, name: str, low: int, high: int, step: int = 1) -> int:
        self.params[name] = value = self._trial.suggest_int(name, low, high, step=step)
        return value

    def float(self, name: str, low: float, high: float, log: bool = False) -> float:
        self.params[name] = value = self._trial.suggest_float(name, low, high, log=log)
        return value
