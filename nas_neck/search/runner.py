"""Run a search locally: open or resume the study, enqueue baselines, optimize until N trials
count, then tag the Pareto front in MLflow (`nas_neck.search.session` does each step)."""

from __future__ import annotations

import optuna

from nas_neck.dsl import SearchSpace
from nas_neck.proxy import ProxyTask
from nas_neck.search.objective import Hooks, Objective
from nas_neck.search.screening import screen_for
from nas_neck.search.session import TrialEnd, prepare_study, trial_function
from nas_neck.search.settings import SearchSettings
from nas_neck.search.study import finished_count


def run_search(
    settings: SearchSettings,
    proxy: ProxyTask,
    hooks: Hooks | None = None,
    on_trial_end: TrialEnd | None = None,
) -> optuna.Study:
    """Optimize until `settings.trials` candidates count (complete, or failed with a reason),
    nothing is left to promote, or `settings.budget_minutes` would be overrun; then confirm the
    top of the front when `settings.confirm` asks, and write the report.

    Other processes (`nas-neck worker`) may work on the same study: their running trials count
    toward N, and the search waits for them before writing the report.
    """
    space = SearchSpace.load(settings.space)
    session = prepare_study(settings, proxy.config)
    objective = Objective.for_search(settings, space, proxy, session.tracker, session.parent, hooks)
    # A resumed study starts where it stopped.
    objective.hooks.search_start(finished_count(session.study))
    run = trial_function(objective)
    fresh = screen_for(settings, space, proxy)
    with session.interruptible():
        session.optimize(run, settings.trials, on_trial_end=on_trial_end, fresh=fresh)
        if settings.confirm:
            session.confirm(lambda: session.drain(run, on_trial_end))
    session.finish(ended=True)
    return session.study
