"""Asynchronous successive halving over epochs, promoting by Pareto rank (MO-ASHA).

A multi-fidelity search trains every fresh candidate for the first rung's epochs. Whenever a
process is free it looks, from the top rung down, for a candidate in the best ``1/eta`` of a
rung's results that has not been promoted yet; if there is one it is promoted (continued from
its checkpoint to the next rung's epochs), else a fresh candidate is sampled. Nobody waits at a
barrier, as in ASHA (Li et al. 2020). "Best" is multi-objective, as in MO-ASHA (Schmucker et al.
2021): non-dominated sorting of (cost, accuracy), ties within a rank broken by crowding distance
so the promoted set spreads along the front (`nas_neck.pareto.front.rank_for_promotion`).

A promotion is its own Optuna trial, queued with user attrs saying which candidate it promotes
and which trial's checkpoint it continues (`nas_neck.fidelity`); the queue hands each to one
process. Before queueing, a process checks that no trial already claims that promotion; two
processes deciding in the same instant would queue it twice, and the later one then reuses the
earlier one's result (`duplicate_of`) instead of training again.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nas_neck.errors import NasNeckError
from nas_neck.fidelity import EPOCHS, PROMOTES, RESUMES, RUNG, is_candidate
from nas_neck.pareto.front import rank_for_promotion
from nas_neck.search.study import claimed_count, counted, finished_count

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rungs:
    """Epochs of each rung (strictly increasing) and the reduction factor `eta`."""

    epochs: tuple[int, ...]
    eta: int = 3

    def __post_init__(self) -> None:
        if not self.epochs or any(e < 1 for e in self.epochs):
            raise NasNeckError(f"--rungs: expected epochs >= 1, got {list(self.epochs)}")
        if any(b <= a for a, b in zip(self.epochs, self.epochs[1:], strict=False)):
            raise NasNeckError(
                f"--rungs: expected strictly increasing epochs (e.g. 1,3,9), got "
                f"{','.join(map(str, self.epochs))}"
            )
        if self.eta < 2:
            raise NasNeckError(f"--eta: expected an integer >= 2, got {self.eta}")

    @classmethod
    def parse(cls, text: str, eta: int = 3) -> Rungs:
        """From `--rungs 1,3,9`."""
        try:
            epochs = tuple(int(p) for p in text.split(",") if p.strip())
        except ValueError:
            raise NasNeckError(
                f"--rungs: expected comma-separated epochs such as 1,3,9, got {text!r}"
            ) from None
        return cls(epochs, eta)


@dataclass(frozen=True)
class Promotion:
    """Candidate `candidate` (its rung-0 trial number) to rung `rung`, continuing trial
    `resumes`' checkpoint."""

    candidate: int
    rung: int
    resumes: int
    epochs: int
    baseline: str | None = None

    def user_attrs(self) -> dict[str, object]:
        attrs: dict[str, object] = {
            PROMOTES: self.candidate,
            RUNG: self.rung,
            EPOCHS: self.epochs,
            RESUMES: self.resumes,
        }
        if self.baseline:
            attrs["baseline"] = self.baseline
        return attrs


def candidate_of(t: FrozenTrial) -> int:
    """The rung-0 trial number of the candidate a search trial belongs to."""
    return int(t.user_attrs.get(PROMOTES, t.number))


def rung_results(trials: Sequence[FrozenTrial], rung: int) -> list[FrozenTrial]:
    """The trained results at `rung`: complete, feasible, not a repeat of another trial."""
    return [
        t
        for t in trials
        if t.state == TrialState.COMPLETE
        and t.user_attrs.get(RUNG) == rung
        and "duplicate_of" not in t.user_attrs
        and not t.user_attrs.get("infeasible")
        and t.values is not None
    ]


def promotable(results: Sequence[FrozenTrial], eta: int) -> list[FrozenTrial]:
    """The best `len(results) // eta` of one rung's results, best first (MO-ASHA's rule):
    (cost, accuracy) from the trial values (accuracy, cost)."""
    keep = len(results) // eta
    if keep == 0:
        return []
    points = np.array([(t.values[1], t.values[0]) for t in results], dtype=float)
    return [results[i] for i in rank_for_promotion(points)[:keep]]


def next_promotion(study: optuna.Study, rungs: Rungs) -> Promotion | None:
    """The promotion a free process should run now, from the top rung down, or None."""
    trials = study.get_trials(deepcopy=False)
    claimed = {
        (int(t.user_attrs[PROMOTES]), int(t.user_attrs[RUNG]))
        for t in trials
        if PROMOTES in t.user_attrs
        and (t.state in (TrialState.WAITING, TrialState.RUNNING) or counted(t))
    }
    for rung in range(len(rungs.epochs) - 2, -1, -1):
        for t in promotable(rung_results(trials, rung), rungs.eta):
            cand = candidate_of(t)
            if (cand, rung + 1) not in claimed:
                return Promotion(
                    cand,
                    rung + 1,
                    t.number,
                    rungs.epochs[rung + 1],
                    t.user_attrs.get("baseline") or None,
                )
    return None


def enqueue(study: optuna.Study, promotion: Promotion) -> None:
    """Queue `promotion` as a trial (no parameters: it is not the sampler's to learn from)."""
    study.enqueue_trial({}, user_attrs=promotion.user_attrs())
    log.info(
        "promoting trial %d (candidate %d) to rung %d: %d epochs",
        promotion.resumes,
        promotion.candidate,
        promotion.rung,
        promotion.epochs,
    )


Step = Literal["run", "wait", "done"]


def next_step(
    study: optuna.Study,
    rungs: Rungs | None,
    target: int,
    budget: Budget,
    fresh: Callable[[optuna.Study], None] | None = None,
) -> Step:
    """What a free process does next (queueing a promotion when that is it): `run` (a trial is
    queued, or a promotion or a fresh candidate fits the budget), `wait` (trials run elsewhere
    whose results may open a promotion, or are needed for N) or `done`. `fresh`, when given,
    queues the fresh candidate itself (screening, `nas_neck.search.screening`).

    Shared by every launcher: `Session.optimize` (local search, workers) and the Ray driver.
    """
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return "run"
    costs = Costs.of(study)
    promotion = next_promotion(study, rungs) if rungs is not None else None
    if promotion is not None and budget.fits(costs.promotion_s(promotion, study)):
        enqueue(study, promotion)
        return "run"
    if claimed_count(study) < target:
        if budget.fits(costs.candidate_s):
            if fresh is not None:
                fresh(study)
            return "run"
        log.info(
            "budget: %.0f s left, a candidate takes about %.0f s", budget.left_s, costs.candidate_s
        )
    running = any(t.state == TrialState.RUNNING for t in trials)
    needed = rungs is not None or finished_count(study) < target
    return "wait" if running and needed else "done"


@dataclass
class Budget:
    """A wall-clock budget for launching work (`--budget-minutes`), counted from its creation."""

    minutes: float | None
    start: float = field(default_factory=time.monotonic)

    @property
    def left_s(self) -> float:
        if self.minutes is None:
            return float("inf")
        return self.minutes * 60.0 - (time.monotonic() - self.start)

    def fits(self, seconds: float) -> bool:
        """Whether work expected to take `seconds` ends within the budget."""
        return seconds <= self.left_s


@dataclass(frozen=True)
class Costs:
    """What work has cost so far in a study, for deciding whether more fits a budget."""

    candidate_s: float  # a fresh candidate, all in (measure, train, evaluate, record)
    epoch_s: float  # one training epoch
    overhead_s: float  # what a promotion pays besides its epochs (evaluate, save, record)

    @classmethod
    def of(cls, study: optuna.Study) -> Costs:
        """Medians over the study's trained trials (0 before there are any: the first try runs)."""
        trials = study.get_trials(deepcopy=False)
        trained = [
            t
            for t in trials
            if t.state == TrialState.COMPLETE
            and "train_s" in t.user_attrs
            and "duplicate_of" not in t.user_attrs
        ]
        fresh = [_duration(t) for t in trained if is_candidate(t.user_attrs)]
        per_epoch, overhead = [], []
        for t in trained:
            epochs = _segment_epochs(t, trials)
            if epochs:
                per_epoch.append(float(t.user_attrs["train_s"]) / epochs)
                overhead.append(max(0.0, _duration(t) - float(t.user_attrs["train_s"])))
        return cls(_median(fresh), _median(per_epoch), _median(overhead))

    def promotion_s(self, promotion: Promotion, study: optuna.Study) -> float:
        """Expected seconds of `promotion`: the epochs it adds, plus the usual overhead."""
        below = study.get_trials(deepcopy=False)[promotion.resumes].user_attrs.get(EPOCHS, 0)
        return (promotion.epochs - int(below)) * self.epoch_s + self.overhead_s


def _segment_epochs(t: FrozenTrial, trials: Sequence[FrozenTrial]) -> int:
    """Epochs trial `t` itself trained (a promotion: those above the trial it resumed)."""
    total = int(t.user_attrs.get(EPOCHS, 0))
    if RESUMES in t.user_attrs:
        total -= int(trials[int(t.user_attrs[RESUMES])].user_attrs.get(EPOCHS, 0))
    return total


def _duration(t: FrozenTrial) -> float:
    if t.datetime_start is None or t.datetime_complete is None:
        return 0.0
    return (t.datetime_complete - t.datetime_start).total_seconds()


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else 0.0
