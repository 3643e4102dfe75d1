"""A study's trials on the Pareto axes, and the picks made from them.

Rules, stated once so every number can be reproduced:

* **one fidelity**: a front only ever holds results of one `nas_neck.fidelity.Fidelity`. By
  default the report's: the confirmed results with the most epochs when there are any (one point
  per architecture: mean accuracy, with the sd over its seeds), else the search results with the
  most epochs that hold at least `MIN_FRONT_TRIALS` trained trials, else the fidelity with the
  most trials.
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
from nas_neck.fidelity import Fidelity, fidelity_of, study_epochs
from nas_neck.metrics import ACCURACY_METRICS, COST_METRICS, cost_attr, cost_of, finite
from nas_neck.pareto.front import front, hypervolume, knee

log = logging.getLogger(__name__)

MIN_FRONT_TRIALS = 3  # a search fidelity with fewer trained trials is not the default front


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
    fidelity: Fidelity | None = None  # None: the study records none (one fidelity throughout)
    sd: np.ndarray | None = None  # (n,) sd of the accuracy over seeds (confirmed results)
    seeds: np.ndarray | None = None  # (n,) how many seeds each confirmed point averages

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


def fidelities(study: optuna.Study) -> dict[Fidelity, int]:
    """Each fidelity of the study's complete trials, with how many trained (feasible, not
    repeated) trials it holds."""
    default = study_epochs(study.user_attrs)
    out: dict[Fidelity, int] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        f = fidelity_of(t.user_attrs, default)
        out[f] = out.get(f, 0) + (_feasible(t) and "duplicate_of" not in t.user_attrs)
    return out


def report_fidelity(study: optuna.Study) -> Fidelity | None:
    """The fidelity a study's front is drawn at by default (module docstring); None without
    complete trials."""
    counts = fidelities(study)
    confirmed = [f for f in counts if f.confirmed]
    if confirmed:
        return max(confirmed)
    enough = [f for f, n in counts.items() if n >= MIN_FRONT_TRIALS]
    if enough:
        return max(enough)
    return max(counts, key=lambda f: (counts[f], f)) if counts else None


def gather(study: optuna.Study, x: str, y: str, fidelity: Fidelity | None = None) -> TrialSet:
    """The study's complete trials at one fidelity (default `report_fidelity`) with both values
    on the axes (x cost, y accuracy); confirmed results become one point per architecture."""
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
    have = fidelities(study)
    fidelity = fidelity or report_fidelity(study)
    if fidelity not in have:
        raise NasNeckError(
            f"study {study.study_name!r} has no results at {fidelity.key}; it has "
            f"{', '.join(f.key for f in sorted(have))}"
        )
    default = study_epochs(study.user_attrs)
    complete = [t for t in complete if fidelity_of(t.user_attrs, default) == fidelity]
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
    points = np.asarray(xy, dtype=float).reshape(-1, 2)
    sd = seeds = None
    if fidelity.confirmed:
        kept, points, sd, seeds = _by_architecture(kept, points)
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
        fidelity=fidelity if len(have) > 1 or fidelity.confirmed else None,
        sd=sd,
        seeds=seeds,
    )


def _by_architecture(
    trials: list[FrozenTrial], points: np.ndarray
) -> tuple[list[FrozenTrial], np.ndarray, np.ndarray, np.ndarray]:
    """Confirmation runs grouped by architecture: its lowest-numbered run stands for it (its
    checkpoint is what an export takes), at the mean of its runs, with the sd of the accuracy
    (0 for one run) and the number of runs."""
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(trials):
        if "duplicate_of" not in t.user_attrs:
            groups.setdefault(str(t.user_attrs.get("arch_hash", t.number)), []).append(i)
    rows = sorted(groups.values(), key=lambda idx: trials[idx[0]].number)
    kept = [trials[idx[0]] for idx in rows]
    mean = np.array([points[idx].mean(axis=0) for idx in rows]).reshape(-1, 2)
    sd = np.array([points[idx, 1].std(ddof=1) if len(idx) > 1 else 0.0 for idx in rows])
    return kept, mean, sd, np.array([len(idx) for idx in rows])


def front_trials(
    study: optuna.Study,
    x: str | None = None,
    y: str | None = None,
    fidelity: Fidelity | None = None,
) -> list[FrozenTrial]:
    """The study's Pareto front over (x cost, y accuracy) at one fidelity (default: the
    report's), cheapest first; x and y default to the study's own objectives."""
    data = gather(study, *resolve_axes(study, x, y), fidelity)
    return [data.trials[i] for i in data.front]


def knee_trial(
    study: optuna.Study,
    x: str | None = None,
    y: str | None = None,
    fidelity: Fidelity | None = None,
) -> FrozenTrial:
    """The knee of the study's front (see the module docstring for the rule)."""
    data = gather(study, *resolve_axes(study, x, y), fidelity)
    i = data.knee_index()
    if i is None:
        raise NasNeckError(f"study {data.name!r} has no feasible complete trial, so no front")
    return data.trials[i]


def best_under(
    study: optuna.Study,
    max_latency_ms: float,
    y: str | None = None,
    fidelity: Fidelity | None = None,
) -> FrozenTrial | None:
    """The most accurate feasible trial whose neck latency is at most `max_latency_ms`, or None."""
    data = gather(study, *resolve_axes(study, "latency", y), fidelity)
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
