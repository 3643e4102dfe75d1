"""Screening in the search (`--screen N`): the sampler proposes N candidates and the best by the
screening signal (`nas_neck.screen`) is the one trained. With latency as the cost the choice is
Pareto-aware: the proposal whose predicted (latency, accuracy) adds the most hypervolume to the
study's trained candidates (`Screener.screen`'s `front`), so screening does not simply favour the
largest necks the way an accuracy proxy alone would.

Proposals: a scratch in-memory copy of the study's candidates is asked N times by a sampler of
the search's kind, seeded by the search seed and the number of candidates so far, and each asked
trial is decoded through the search space as a real trial is; so the proposals are what the
sampler would have drawn, and the same seed proposes the same. The chosen one is queued on the
real study with its parameters (`enqueue_trial`), so its trial records them with their
distributions and the sampler learns from it like from any other. The N - 1 screened out are
not trials (they would flood the dashboard with trials that never trained): the chosen trial's
user attr `screened` holds the signal and every proposal's hash, score and, with a latency
budget, predicted latency.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState

from nas_neck.dsl import Architecture, OptunaSampler, SearchSpace
from nas_neck.fidelity import is_candidate
from nas_neck.metrics import finite
from nas_neck.search.settings import SearchSettings
from nas_neck.search.study import make_sampler

if TYPE_CHECKING:
    from nas_neck.proxy import ProxyTask
    from nas_neck.screen import Screener

log = logging.getLogger(__name__)

SCREENED = "screened"


def propose(
    study: optuna.Study, space: SearchSpace, sampler: str, seed: int, n: int
) -> list[tuple[dict[str, object], Architecture]]:
    """`n` (parameters, architecture) the sampler would draw next from the study's candidates."""
    scratch = optuna.create_study(directions=study.directions, sampler=make_sampler(sampler, seed))
    scratch.add_trials(
        [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if is_candidate(t.user_attrs)
        ]
    )
    out = []
    for _ in range(n):
        trial = scratch.ask()
        arch = space.sample(OptunaSampler(trial))
        out.append((dict(trial.params), arch))
        scratch.tell(trial, state=TrialState.FAIL)  # not a result: the next draw ignores it
    return out


@dataclass
class Screen:
    """Queues the next fresh candidate of a search, chosen among `n` proposals by `screener`."""

    n: int
    screener: Screener
    space: SearchSpace
    settings: SearchSettings

    def __call__(self, study: optuna.Study) -> None:
        trials = study.get_trials(deepcopy=False)
        done = sum(is_candidate(t.user_attrs) for t in trials)
        seed = self.settings.seed * 1_000_003 + done
        proposals = propose(study, self.space, self.settings.sampler, seed, self.n)
        seen = {t.user_attrs.get("arch_hash") for t in trials}
        novel = [i for i, (_, a) in enumerate(proposals) if a.hash not in seen]
        pool = novel or list(range(len(proposals)))  # all seen: let the dedupe reuse one
        archs = [proposals[i][1] for i in pool]
        finished = _finished(_trained(trials, self.settings.accuracy))
        result = self.screener.screen(
            archs,
            finished,
            max_latency_ms=self.settings.max_latency_ms,
            front=self._front(finished),
        )
        chosen = pool[result.index]
        params = proposals[chosen][0]
        record = {
            "signal": result.signal,
            "proposed": self.n,
            "chosen": archs[result.index].hash,
            "hashes": [a.hash for a in archs],
            "scores": [float(s) for s in result.scores],
        }
        if result.latency_ms is not None:
            record["predicted_latency_ms"] = [float(v) for v in result.latency_ms]
        if result.predicted is not None:
            record["predicted_accuracy"] = [float(v) for v in result.predicted]
            record["hypervolume_gain"] = [float(v) for v in result.gains]
        study.enqueue_trial(params, user_attrs={SCREENED: record})
        log.info(
            "screened %d proposals by %s: training %s",
            len(archs),
            result.signal,
            archs[result.index].hash,
        )

    def _front(
        self, finished: list[tuple[Architecture, float]]
    ) -> list[tuple[float, float]] | None:
        """(latency ms, accuracy) of the trained candidates, what a proposal must add to; None
        when the study's cost is not latency (the table predicts latency only). Latency is the
        table's prediction, as for the proposals, not the trials' measurements: the two sides
        compare on one scale, and the same seed and results give the same choice whatever the
        timing noise of the machine (measured latencies vary from run to run)."""
        if self.settings.cost != "latency":
            return None
        if not finished:
            return []
        predicted = self.screener.latency.predict_many([a for a, _ in finished])
        return [(float(ms), value) for ms, (_, value) in zip(predicted, finished, strict=True)]


def screen_for(
    settings: SearchSettings, space: SearchSpace, proxy: ProxyTask
) -> Callable[[optuna.Study], None] | None:
    """The search's screening step (`Session.optimize`'s `fresh`), None without `--screen`."""
    if settings.screen <= 1:
        return None
    from nas_neck.screen import Screener

    screener = Screener(settings.screen_signal, proxy, seed=settings.seed)
    return Screen(settings.screen, screener, space, settings)


def _trained(
    trials: list[optuna.trial.FrozenTrial], accuracy: str
) -> list[tuple[optuna.trial.FrozenTrial, float]]:
    """The trained candidates with a finite accuracy, and that accuracy."""
    out = []
    for t in trials:
        a = t.user_attrs
        value = finite(a.get(accuracy))
        if (
            t.state == TrialState.COMPLETE
            and is_candidate(a)
            and "duplicate_of" not in a
            and not a.get("infeasible")
            and value is not None
            and "arch" in a
        ):
            out.append((t, value))
    return out


def _finished(
    trained: list[tuple[optuna.trial.FrozenTrial, float]],
) -> list[tuple[Architecture, float]]:
    """(architecture, accuracy) of the trained candidates: what the surrogate is fit on."""
    return [
        (SearchSpace.from_dict(t.user_attrs["arch"], source=f"trial {t.number}").sample(), value)
        for t, value in trained
    ]
