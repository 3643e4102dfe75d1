"""A study's trials on the Pareto axes, and the picks made from them.

Rules, stated once so every number can be reproduced:

* **front of a study**: COMPLETE trials that are feasible (no positive constraint, not flagged
  `infeasible`) and are not `duplicate_of` an earlier trial (the original stands for them).
* **values**: each from the trial's user attrs, else from the matching objective; an infeasible
  trial was never trained, so its accuracy is 0.
* **knee**: see `nas_neck.pareto.front.knee`, applied to the study's front.
* **best under a budget**: the most accurate feasible trial whose neck latency is at most the
  budget (ties: cheaper, then earlier).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nas_neck.errors import NasNeckError
from nas_neck.metrics import ACCURACY_METRICS, COST_METRICS, cost_attr, cost_of, finite
from nas_neck.pareto.front import front, hypervolume, knee

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialSet:
    """The complete trials of one study placed on the chosen axes."""

    name: str
    trials: list[FrozenTrial]
    xy: np.ndarray  # (n, 2): cost, accuracy
    feasible: np.ndarray  # (n,) bool
    duplicate: np.ndarray  # (n,) bool
    baseline: list[str]  # baseline name, "" for searched trials
    front: np.ndarray  # indices into `trials`, x ascending
    failed: int

    @property
    def candidates(self) -> np.ndarray:
        """Trials that may sit on the front: feasible, not repeats."""
        return np.flatnonzero(self.feasible & ~self.duplicate)

    @property
    def is_baseline(self) -> np.ndarray:
        return np.array([bool(b) for b in self.baseline], dtype=bool)

    @property
    def front_numbers(self) -> list[int]:
        return [self.trials[i].number for i in self.front]

    def number(self, i: int | None) -> int | None:
        """Trial number at index `i` (None stays None)."""
        return None if i is None else self.trials[i].number

    def hypervolume(self, ref: tuple[float, float]) -> float:
        """Hypervolume of the candidates against `ref` (0 without a finite reference)."""
        return hypervolume(self.xy[self.candidates], ref) if np.isfinite(ref[0]) else 0.0

    def knee_index(self) -> int | None:
        """Index of the front's knee, None without a front."""
        return int(self.front[knee(self.xy[self.front])]) if self.front.size else None

    def best_under_index(self, max_latency_ms: float) -> int | None:
        """Index of the most accurate candidate at most `max_latency_ms` slow (ties: cheaper, then
        earlier), or None."""
        latency = {i: finite(self.trials[i].user_attrs.get("latency_ms")) for i in self.candidates}
        fast = [i for i, lat in latency.items() if lat is not None and lat <= max_latency_ms]
        if not fast:
            return None
        return int(min(fast, key=lambda i: (-self.xy[i, 1], latency[i], self.trials[i].number)))

    def baselines(self) -> tuple[list[str], list[str], list[str]]:
        """(dominated, feasible, infeasible) baseline names; a feasible baseline is dominated when
        a searched feasible trial is at least as good on both axes and better on one."""
        searched = self.xy[self.feasible & ~self.is_baseline]
        sx, sy = searched.T if len(searched) else (np.zeros(0), np.zeros(0))
        seen: set[str] = set()
        dominated, feasible, infeasible = [], [], []
        for i, name in enumerate(self.baseline):
            if not name or name in seen:
                continue
            seen.add(name)
            if not self.feasible[i]:
                infeasible.append(name)
                continue
            feasible.append(name)
            bx, by = self.xy[i]
            if np.any((sx <= bx) & (sy >= by) & ((sx < bx) | (sy > by))):
                dominated.append(name)
        return dominated, feasible, infeasible


def axes_of(study: optuna.Study) -> tuple[str, str]:
    """The study's own (cost, accuracy) objectives, e.g. `("latency", "map")`."""
    names = study.metric_names or ["map", "latency_ms"]
    return cost_of(names[1]) or "latency", names[0] if names[0] in ACCURACY_METRICS else "map"


def resolve_axes(study: optuna.Study, x: str | None, y: str | None) -> tuple[str, str]:
    """(cost, accuracy) axes from `--x`/`--y` (a cost by name or stored attribute), defaulting to
    the study's own objectives."""
    own_x, own_y = axes_of(study)
    x = (cost_of(x.lower()) or x.lower()) if x else own_x
    y = y.lower() if y else own_y
    if x not in COST_METRICS:
        raise NasNeckError(f"--x: expected one of {', '.join(COST_METRICS)}, got {x!r}")
    if y not in ACCURACY_METRICS:
        raise NasNeckError(f"--y: expected one of {', '.join(ACCURACY_METRICS)}, got {y!r}")
    return x, y


def gather(study: optuna.Study, x: str, y: str) -> TrialSet:
    """The study's complete trials with both values on the axes (x cost, y accuracy)."""
    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE]
    if not complete:
        states = ", ".join(
            f"{sum(t.state == s for t in all_trials)} {s.name.lower()}"
            for s in TrialState
            if any(t.state == s for t in all_trials)
        )
        raise NasNeckError(
            f"study {study.study_name!r} has no complete trials yet ({states or 'no trials'})"
        )
    names = list(study.metric_names or [])
    x_attr = cost_attr(x)
    missing = [m for m in (y, x_attr) if all(_value(t, m, names) is None for t in complete)]
    if missing:
        recorded = sorted(
            {k for t in complete for k, v in t.user_attrs.items() if finite(v) is not None}
        )
        raise NasNeckError(
            f"study {study.study_name!r} records no value of {' or '.join(missing)}; "
            f"its trials record {', '.join(recorded) or 'no metrics'}"
        )
    kept, xy = [], []
    for t in complete:
        xv, yv = _value(t, x_attr, names), _value(t, y, names)
        if yv is None and not _feasible(t):
            yv = 0.0
        if xv is None or yv is None:
            log.debug(
                "trial %d of %s lacks %s or %s; left out", t.number, study.study_name, x_attr, y
            )
            continue
        kept.append(t)
        xy.append((xv, yv))
    points = np.asarray(xy, dtype=float)
    feasible = np.array([_feasible(t) for t in kept], dtype=bool)
    duplicate = np.array(["duplicate_of" in t.user_attrs for t in kept], dtype=bool)
    cand = np.flatnonzero(feasible & ~duplicate)
    return TrialSet(
        name=study.study_name,
        trials=kept,
        xy=points,
        feasible=feasible,
        duplicate=duplicate,
        baseline=[str(t.user_attrs.get("baseline") or "") for t in kept],
        front=cand[front(points[cand])] if cand.size else np.zeros(0, dtype=int),
        failed=sum(t.state == TrialState.FAIL for t in all_trials),
    )


def front_trials(
    study: optuna.Study, x: str | None = None, y: str | None = None
) -> list[FrozenTrial]:
    """The study's Pareto front over (x cost, y accuracy), cheapest first; x and y default to the
    study's own objectives."""
    data = gather(study, *resolve_axes(study, x, y))
    return [data.trials[i] for i in data.front]


def knee_trial(study: optuna.Study, x: str | None = None, y: str | None = None) -> FrozenTrial:
    """The knee of the study's front (see the module docstring for the rule)."""
    data = gather(study, *resolve_axes(study, x, y))
    i = data.knee_index()
    if i is None:
        raise NasNeckError(f"study {data.name!r} has no feasible complete trial, so no front")
    return data.trials[i]


def best_under(
    study: optuna.Study, max_latency_ms: float, y: str | None = None
) -> FrozenTrial | None:
    """The most accurate feasible trial whose neck latency is at most `max_latency_ms`, or None."""
    data = gather(study, *resolve_axes(study, "latency", y))
    i = data.best_under_index(max_latency_ms)
    return None if i is None else data.trials[i]


def _feasible(t: FrozenTrial) -> bool:
    return all(v <= 0 for v in (t.constraints or {}).values()) and not t.user_attrs.get(
        "infeasible"
    )


def _value(t: FrozenTrial, key: str, metric_names: list[str]) -> float | None:
    v = finite(t.user_attrs.get(key))
    if v is None and key in metric_names and t.values is not None:
        v = finite(t.values[metric_names.index(key)])
    return v
