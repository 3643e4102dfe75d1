"""Confirmation: the top of a search's final front and the baselines retrained from scratch,
longer and with several seeds, so the front one acts on is not one seed's luck at one short
budget.

Each run is an Optuna trial of the same study (user attrs ``role: confirm``, ``confirm_of``,
``seed``, ``epochs``; `nas_neck.fidelity`), queued up front, so any process working on the
study helps, a rerun skips what finished, and a killed run is retried like any trial. The
report then draws the confirmed front (mean ± sd per architecture) by default, and
`export --knee` / `--max-latency-ms` pick from it.

Which candidates: each candidate stands at its most-trained result (the highest rung it
reached); candidates that reached more epochs come first, and within one fidelity they are
ranked by non-dominated sorting with crowding distance, as promotions are
(`nas_neck.pareto.front.rank_for_promotion`). Baselines are confirmed apart from the top K.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from nas_neck.fidelity import (
    CONFIRM,
    CONFIRM_OF,
    EPOCHS,
    ROLE,
    SEED,
    Fidelity,
    fidelity_of,
    is_candidate,
    study_epochs,
)
from nas_neck.pareto.front import rank_for_promotion
from nas_neck.pareto.trials import gather, resolve_axes
from nas_neck.search.rungs import candidate_of
from nas_neck.search.study import counted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Confirmed:
    """One architecture's confirmation: mean and sd of the accuracy over its seeds."""

    trial: int  # the trial that stands for it (its first confirmation run)
    source: int  # the search trial it confirms
    arch_hash: str
    baseline: str
    cost: float
    mean: float
    sd: float
    seeds: int
    summary: str


def choose(study: optuna.Study, top: int) -> list[FrozenTrial]:
    """The `top` searched candidates to confirm, best first (module docstring), each as its
    most-trained trial."""
    default = study_epochs(study.user_attrs)
    best: dict[int, FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs
        if (
            a.get(ROLE) == CONFIRM
            or a.get("baseline")
            or a.get("infeasible")
            or "duplicate_of" in a
            or t.values is None
        ):
            continue
        cand = candidate_of(t)
        held = best.get(cand)
        if held is None or fidelity_of(a, default) > fidelity_of(held.user_attrs, default):
            best[cand] = t
    by_fidelity: dict[Fidelity, list[FrozenTrial]] = {}
    for t in best.values():
        by_fidelity.setdefault(fidelity_of(t.user_attrs, default), []).append(t)
    ranked: list[FrozenTrial] = []
    for f in sorted(by_fidelity, reverse=True):
        group = sorted(by_fidelity[f], key=lambda t: t.number)
        points = np.array([(t.values[1], t.values[0]) for t in group], dtype=float)
        ranked += [group[i] for i in rank_for_promotion(points)]
    return ranked[:top]


def baseline_sources(study: optuna.Study, names: Sequence[str]) -> list[FrozenTrial]:
    """Each named baseline's first complete, trained candidate trial (a baseline over the latency
    budget was never trained and is not confirmed)."""
    out = []
    for name in names:
        found = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.user_attrs.get("baseline") == name
            and is_candidate(t.user_attrs)
            and not t.user_attrs.get("infeasible")
            and "duplicate_of" not in t.user_attrs
        ]
        if found:
            out.append(min(found, key=lambda t: t.number))
        else:
            log.info(
                "baseline %s has no trained trial in %s: not confirmed", name, study.study_name
            )
    return out


def enqueue_confirmations(
    study: optuna.Study, sources: Sequence[FrozenTrial], epochs: int, seeds: Sequence[int]
) -> int:
    """Queue a confirmation run of each source for each seed, skipping those already queued,
    running or counted (a rerun resumes); returns how many were queued."""
    have = {
        (str(t.user_attrs.get("arch_hash")), int(t.user_attrs[SEED]), int(t.user_attrs[EPOCHS]))
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get(ROLE) == CONFIRM
        and (t.state in (TrialState.WAITING, TrialState.RUNNING) or counted(t))
        and "arch_hash" in t.user_attrs
    }
    waiting = {
        (int(t.user_attrs[CONFIRM_OF]), int(t.user_attrs[SEED]), int(t.user_attrs[EPOCHS]))
        for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if t.user_attrs.get(ROLE) == CONFIRM
    }
    queued = 0
    for s in sources:
        for seed in seeds:
            if (str(s.user_attrs.get("arch_hash")), seed, epochs) in have:
                continue
            if (s.number, seed, epochs) in waiting:
                continue
            attrs: dict[str, object] = {
                ROLE: CONFIRM,
                CONFIRM_OF: s.number,
                SEED: seed,
                EPOCHS: epochs,
            }
            if s.user_attrs.get("baseline"):
                attrs["baseline"] = s.user_attrs["baseline"]
            study.enqueue_trial({}, user_attrs=attrs)
            queued += 1
    return queued


def confirmed(study: optuna.Study, epochs: int | None = None) -> list[Confirmed]:
    """The study's confirmed architectures (at `epochs`, default the most confirmed), cheapest
    first; empty when nothing is confirmed."""
    fids = [
        f
        for f in {fidelity_of(t.user_attrs, 0) for t in study.get_trials(deepcopy=False)}
        if f.confirmed and (epochs is None or f.epochs == epochs)
    ]
    complete = any(
        t.user_attrs.get(ROLE) == CONFIRM and t.state == TrialState.COMPLETE
        for t in study.get_trials(deepcopy=False)
    )
    if not fids or not complete:
        return []
    x, y = resolve_axes(study, None, None)
    data = gather(study, x, y, max(fids))
    assert data.sd is not None and data.seeds is not None
    rows = []
    for i in np.argsort(data.xy[:, 0], kind="stable"):
        t = data.trials[i]
        rows.append(
            Confirmed(
                trial=t.number,
                source=int(t.user_attrs[CONFIRM_OF]),
                arch_hash=str(t.user_attrs.get("arch_hash", "")),
                baseline=data.baseline[i],
                cost=float(data.xy[i, 0]),
                mean=float(data.xy[i, 1]),
                sd=float(data.sd[i]),
                seeds=int(data.seeds[i]),
                summary=str(t.user_attrs.get("summary", "")),
            )
        )
    return rows
