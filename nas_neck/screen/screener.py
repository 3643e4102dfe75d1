"""The screener the search calls: which of N proposed candidates to train, by a zero-cost proxy
or by the surrogate refit on the study's finished trials, within a latency budget if given."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nas_neck.dsl import Architecture
from nas_neck.errors import NasNeckError
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

    def proxies(self, arch: Architecture) -> dict[str, float]:
        """Every zero-cost proxy of `arch` (computed once per architecture)."""
        if arch.hash not in self._proxies:
            self._proxies[arch.hash] = self.zero_cost.score(arch)
        return self._proxies[arch.hash]

    def choose(
        self,
        archs: Sequence[Architecture],
        finished: Sequence[Finished] = (),
        *,
        max_latency_ms: float | None = None,
    ) -> int:
        """The index in `archs` of the candidate to train (see `screen`)."""
        return self.screen(archs, finished, max_latency_ms=max_latency_ms).index

    def screen(
        self,
        archs: Sequence[Architecture],
        finished: Sequence[Finished] = (),
        *,
        max_latency_ms: float | None = None,
    ) -> Screening:
        """Score `archs` and choose the best (ties: the first). With `max_latency_ms`, only
        candidates predicted within it compete; when none is, the fastest predicted is chosen.
        `finished`: (architecture, quick-budget mAP) of the study's finished trials, which the
        surrogate is refit on whenever they changed; non-finite mAPs are ignored."""
        if not archs:
            raise NasNeckError("screening needs at least one candidate")
        scores, signal = self._scores(archs, finished)
        latency = None
        candidates = range(len(archs))
        if max_latency_ms is not None:
            latency = self.latency.predict_many(archs)
            candidates = [i for i, ms in enumerate(latency) if ms <= max_latency_ms]
            if not candidates:
                index = int(np.argmin(latency))
                return Screening(index, scores, signal, latency)
        index = max(candidates, key=lambda i: (scores[i], -i))
        log.debug("screened %d candidates by %s: chose %d", len(archs), signal, index)
        return Screening(index, scores, signal, latency)

    def _scores(
        self, archs: Sequence[Architecture], finished: Sequence[Finished]
    ) -> tuple[list[float], str]:
        proxies = [self.proxies(a) for a in archs]
        if self.signal != "surrogate":
            return [p[self.signal] for p in proxies], self.signal
        done = [(a, float(m)) for a, m in finished if m is not None and math.isfinite(m)]
        if len(done) < self.min_trials:
            return [p[self.fallback] for p in proxies], self.fallback
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
