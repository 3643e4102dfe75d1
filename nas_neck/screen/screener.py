"""The screener the search calls: which of N proposed candidates to train, by a zero-cost proxy
or by the surrogate refit on the study's finished trials, within a latency budget if given, and
Pareto-aware when given the study's front (the largest predicted hypervolume gain)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nas_neck.dsl import Architecture
from nas_neck.errors import NasNeckError
from nas_neck.pareto.front import front as nondominated
from nas_neck.pareto.front import hypervolume, reference_point
from nas_neck.proxy import ProxyTask
from nas_neck.screen.latency_table import LatencyTable
from nas_neck.screen.surrogate import Surrogate
from nas_neck.screen.zero_cost import PROXIES, ZeroCost

__all__ = ["Finished", "Screener", "Screening", "signals"]

log = logging.getLogger(__name__)

Finished = tuple[Architecture, float]  # a finished trial: its architecture and quick-budget mAP


def signals() -> tuple[str, ...]:
    """What ``--screen-signal`` may name: one zero-cost proxy, or ``surrogate``."""
    return (*PROXIES, "surrogate")


@dataclass(frozen=True)
class Screening:
    """One screening: the chosen index, every candidate's score (higher is better) and, when a
    latency budget was given, every candidate's predicted latency in ms."""

    index: int
    scores: list[float]
    signal: str  # the signal the scores are: `Screener.signal`, or its fallback
    latency_ms: list[float] | None = None
    # Pareto-aware screening: each candidate's predicted accuracy and hypervolume gain.
    predicted: list[float] | None = None
    gains: list[float] | None = None


class Screener:
    """Picks the candidate to train from N proposals by a zero-cost proxy or the surrogate.

    Args:
        signal: one of `signals()`.
        proxy_task: the proxy task the candidates are trained on (its cached features).
        seed: seeds the proxies (initial weights, batches); the same seed gives the same choice.
        min_trials: finished trials the surrogate needs before it is used; until then it ranks
            by `fallback`.
        fallback: the proxy the surrogate signal ranks by with too few finished trials.
        latency: the latency table `choose`'s ``max_latency_ms`` reads (built on first use).
        zero_cost: the proxies' settings (default `ZeroCost(proxy_task, seed=seed)`).
    """

    def __init__(
        self,
        signal: str,
        proxy_task: ProxyTask,
        *,
        seed: int = 0,
        min_trials: int = 8,
        fallback: str = "params",
        latency: LatencyTable | None = None,
        zero_cost: ZeroCost | None = None,
    ) -> None:
        if signal not in signals():
            raise NasNeckError(
                f"screening signal {signal!r}: expected one of {', '.join(signals())}"
            )
        if fallback not in PROXIES:
            raise NasNeckError(f"fallback {fallback!r}: expected one of {', '.join(PROXIES)}")
        self.signal = signal
        self.proxy_task = proxy_task
        self.min_trials = max(2, min_trials)
        self.fallback = fallback
        self.zero_cost = zero_cost or ZeroCost(proxy_task, seed=seed)
        self._latency = latency
        self._proxies: dict[str, dict[str, float]] = {}  # by architecture hash
        self._fitted: tuple[tuple[str, float], ...] | None = None
        self._surrogate: Surrogate | None = None

    @property
    def latency(self) -> LatencyTable:
        if self._latency is None:
            self._latency = LatencyTable(self.proxy_task)
        return self._latency

    def proxies(self, arch: Architecture, names: Sequence[str] = PROXIES) -> dict[str, float]:
        """The zero-cost proxies `names` of `arch` (each computed once per architecture)."""
        have = self._proxies.setdefault(arch.hash, {})
        missing = [n for n in names if n not in have]
        if missing:
            have.update(self.zero_cost.score(arch, missing))
        return {n: have[n] for n in names}

    def choose(
        self,
        archs: Sequence[Architecture],
        finished: Sequence[Finished] = (),
        *,
        max_latency_ms: float | None = None,
        front: Sequence[tuple[float, float]] | None = None,
    ) -> int:
        """The index in `archs` of the candidate to train (see `screen`)."""
        return self.screen(archs, finished, max_latency_ms=max_latency_ms, front=front).index

    def screen(
        self,
        archs: Sequence[Architecture],
        finished: Sequence[Finished] = (),
        *,
        max_latency_ms: float | None = None,
        front: Sequence[tuple[float, float]] | None = None,
    ) -> Screening:
        """Score `archs` and choose the best (ties: the first). With `max_latency_ms`, only
        candidates predicted within it compete; when none is, the fastest predicted is chosen.
        `finished`: (architecture, quick-budget mAP) of the study's finished trials, which the
        surrogate is refit on whenever they changed; non-finite mAPs are ignored.

        `front`: the (latency ms, accuracy) of the study's trained candidates. With it the choice
        is Pareto-aware: a candidate's accuracy is predicted (the surrogate, or the signal fitted
        linearly to the finished trials' accuracies) and its latency by the table, and the one
        whose predicted point adds the most hypervolume to `front` is chosen (none adds any: the
        one predicted closest above the front at its latency). Until a prediction exists (fewer
        than 3 finished trials, or a signal constant over them), the sampler's first proposal
        that no other beats on both predicted latency and score."""
        if not archs:
            raise NasNeckError("screening needs at least one candidate")
        scores, signal = self._scores(archs, finished)
        latency = None
        candidates = list(range(len(archs)))
        if max_latency_ms is not None or front is not None:
            latency = self.latency.predict_many(archs)
        if max_latency_ms is not None:
            candidates = [i for i, ms in enumerate(latency) if ms <= max_latency_ms]
            if not candidates:
                index = int(np.argmin(latency))
                return Screening(index, scores, signal, latency)
        if front is None:
            index = max(candidates, key=lambda i: (scores[i], -i))
            log.debug("screened %d candidates by %s: chose %d", len(archs), signal, index)
            return Screening(index, scores, signal, latency)
        predicted = self._predicted(scores, signal, archs, finished)
        if predicted is None:
            points = np.column_stack([latency, scores])[candidates]
            index = min(candidates[k] for k in nondominated(points))  # the sampler's order
            log.debug("screened %d candidates by %s: chose %d", len(archs), signal, index)
            return Screening(index, scores, signal, latency)
        gains, gaps = _gains(front, latency, predicted)
        index = max(candidates, key=lambda i: (gains[i], gaps[i], -i))
        log.debug(
            "screened %d candidates by %s against a front of %d: chose %d (gain %.4g)",
            len(archs),
            signal,
            len(front),
            index,
            gains[index],
        )
        return Screening(index, scores, signal, latency, predicted, gains)

    def _predicted(
        self,
        scores: list[float],
        signal: str,
        archs: Sequence[Architecture],
        finished: Sequence[Finished],
    ) -> list[float] | None:
        """Each candidate's predicted accuracy: the surrogate's, or `signal` mapped by a line
        fitted on the finished trials; None while no fit is possible."""
        if signal == "surrogate":
            return list(scores)
        done = _valid(finished)
        if len(done) < 3:
            return None
        x = np.array([self.proxies(a, [signal])[signal] for a, _ in done], dtype=float)
        if np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())):
            return None
        slope, intercept = np.polyfit(x, [m for _, m in done], 1)
        return [float(slope * v + intercept) for v in scores]

    def _scores(
        self, archs: Sequence[Architecture], finished: Sequence[Finished]
    ) -> tuple[list[float], str]:
        if self.signal != "surrogate":
            return [self.proxies(a, [self.signal])[self.signal] for a in archs], self.signal
        done = _valid(finished)
        if len(done) < self.min_trials:
            return [self.proxies(a, [self.fallback])[self.fallback] for a in archs], self.fallback
        proxies = [self.proxies(a) for a in archs]
        key = tuple(sorted((a.hash, m) for a, m in done))
        if key != self._fitted:
            self._surrogate = Surrogate().fit(
                [a for a, _ in done], [self.proxies(a) for a, _ in done], [m for _, m in done]
            )
            self._fitted = key
            log.info(
                "surrogate refit on %d trials (ridge alpha %g)", len(done), self._surrogate.alpha
            )
        return [float(v) for v in self._surrogate.predict(archs, proxies)], "surrogate"


def _valid(finished: Sequence[Finished]) -> list[Finished]:
    """The finished trials with a finite accuracy."""
    return [(a, float(m)) for a, m in finished if m is not None and math.isfinite(m)]


def _gains(
    front: Sequence[tuple[float, float]], latency: list[float], predicted: list[float]
) -> tuple[list[float], list[float]]:
    """Each predicted (latency, accuracy) point's hypervolume gain over `front`, and its margin
    above the front's best accuracy at no more latency (negative when it is dominated)."""
    f = np.array([p for p in front if all(map(math.isfinite, p))], dtype=float).reshape(-1, 2)
    cand = np.column_stack([latency, predicted]).astype(float)
    ref = reference_point(np.concatenate([f, cand]), y_ref=min(0.0, float(cand[:, 1].min())))
    base = hypervolume(f, ref)
    gains, gaps = [], []
    for lat, acc in cand:
        gains.append(hypervolume(np.vstack([f, (lat, acc)]), ref) - base)
        better = f[f[:, 0] <= lat, 1]
        gaps.append(float(acc - (better.max() if len(better) else ref[1])))
    return gains, gaps
