"""Worker processes: join a study through its storage and run its trials until N are claimed.

`nas-neck search` stores in the study what a worker needs (settings, proxy config, the MLflow
parent run: see `prepare_study`), so a worker needs only the study name and a storage that many
processes can write: a journal file on a shared disk (`journal:PATH`) or PostgreSQL. Any number of
workers, on any machines that see the same paths, share one study: N counts trials across all of
them, the dedupe by architecture hash holds across them, and the trial of a worker that died is
failed as stale and run again once.
"""

from __future__ import annotations

import logging
import random

import optuna
from optuna.trial import TrialState

from nas_neck.dsl import SearchSpace
from nas_neck.proxy import ProxyTask
from nas_neck.search.objective import Hooks, Objective
from nas_neck.search.screening import screen_for
from nas_neck.search.session import TrialEnd, join_study, process_name, trial_function
from nas_neck.search.study import finished_count

log = logging.getLogger(__name__)


def run_worker(
    study_name: str,
    storage: str,
    trials: int | None = None,
    tracking_uri: str | None = None,
    hooks: Hooks | None = None,
    on_trial_end: TrialEnd | None = None,
    artifacts: str | None = None,
) -> optuna.Study:
    """Run trials of a stored study until finished + running trials (all workers) reach `trials`
    (default: the study's own N). The worker that sees the last one finish writes the report.
    `tracking_uri` and `artifacts` (for an experiment not yet in that store) default to the
    study's.

    A trial that cannot write (a full disk) stops the worker with a `WriteError`, its trial
    queued again (`Session.optimize`).

    Workers that take the last slots within the same few milliseconds can each start one, so N
    may be exceeded by at most one trial per extra worker.
    """
    # Workers sample on their own: one seed each, or they would all draw the same architectures.
    seed = random.SystemRandom().randrange(2**31)
    session, proxy_config = join_study(study_name, storage, tracking_uri, seed, artifacts)
    settings, study = session.settings, session.study
    target = trials if trials is not None else settings.trials
    space, proxy = SearchSpace.load(settings.space), ProxyTask(proxy_config)
    objective = Objective.for_search(settings, space, proxy, session.tracker, session.parent, hooks)
    name = process_name()
    log.info(
        "worker %s joins study %s (sampler seed %d), target %d trials",
        name,
        study_name,
        seed,
        target,
    )
    run = trial_function(objective, worker=name)
    session.optimize(
        run, target, wait=False, on_trial_end=on_trial_end, fresh=screen_for(settings, space, proxy)
    )
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if finished_count(study) >= target and not running:
        session.finish(target)
    return study
