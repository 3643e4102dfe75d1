"""Ray Tune launcher: the same `Objective` run as Ray tasks on any node of a Ray cluster.

Ray Tune's `OptunaSearch` drives the study itself, on the driver, with the study's storage, name,
sampler and objectives: `study.ask()` pops the queued baselines first, and a define-by-run function
samples the architecture there (`trial_architecture`), so Optuna records the parameters and the
`arch_hash` at once. The trainable, wherever Ray places it, reopens that RUNNING trial from storage
(`optuna.trial.Trial(study, trial_id)`: its `suggest_*` calls return the recorded parameters, its
user attrs and constraints go to storage) and calls the very `Objective` of a local search on it.
It reports the objective values to Tune, which tells them to Optuna: NaN and `fail_reason` on
failure, which `_StudySearch` tells as FAIL.

The driver beats (`Heartbeat`) for every trial it asked until Tune reports it, so if the driver
dies its trials go stale and the next run fails and re-queues them; a trial whose Ray task dies is
restarted by Tune once (`FailureConfig(max_failures=1)`) on the same Optuna trial.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import optuna
import ray
import torch
from optuna.trial import TrialState
from ray import tune
from ray.exceptions import AuthenticationError
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from nas_neck.config import ProxyConfig
from nas_neck.device import available_cpus
from nas_neck.dsl import SearchSpace
from nas_neck.errors import NasNeckError, WriteError, is_out_of_space
from nas_neck.metrics import finite
from nas_neck.proxy import ProxyTask
from nas_neck.search.objective import Objective, trial_architecture
from nas_neck.search.probe import check_ray_address
from nas_neck.search.rungs import Budget, Step, next_step
from nas_neck.search.screening import screen_for
from nas_neck.search.session import prepare_study, queue_step, stop_error
from nas_neck.search.settings import SearchSettings, shared
from nas_neck.search.study import Heartbeat, make_sampler, make_storage
from nas_neck.search.tracking import Tracker

log = logging.getLogger(__name__)

_TRIAL_ID = "optuna_trial_id"
_TRIAL_NUMBER = "optuna_trial_number"
_NOT_REPORTED = ("heartbeat", "duplicate_of", "retry_of")
_proxies: dict[str, ProxyTask] = {}  # per Ray worker process: data and backbone loaded once


def run_ray_search(
    settings: SearchSettings,
    proxy_config: ProxyConfig,
    ray_address: str | None = None,
    cpus_per_trial: int = 1,
    gpus_per_trial: float = 0.0,
    max_concurrent: int | None = None,
    on_trial_end: Callable[[optuna.Study], None] | None = None,
) -> optuna.Study:
    """Run the search as Ray Tune trials until `settings.trials` count; returns the study.

    Without `ray_address`, starts a local Ray instance on this machine's CPUs and shuts it down
    afterwards. `max_concurrent` defaults to the trials the cluster fits at once.
    `on_trial_end(study)` is called on the driver after each trial.
    """
    if cpus_per_trial < 1 or gpus_per_trial < 0:
        raise NasNeckError(
            f"--cpus-per-trial must be >= 1 and --gpus-per-trial >= 0, got {cpus_per_trial}, {gpus_per_trial}"
        )
    settings, proxy_config = shared(settings, proxy_config)
    if proxy_config.latency_threads > cpus_per_trial:
        log.warning(
            "latency measured with %d threads in trials of %d CPUs: timings will be noisy",
            proxy_config.latency_threads,
            cpus_per_trial,
        )
    session = prepare_study(settings, proxy_config)
    sampler = make_sampler(settings.sampler, settings.seed)  # one for all rounds: no repeated draws
    started = _connect(ray_address)
    try:
        with session.interruptible():
            concurrency = max_concurrent or _slots(
                ray.cluster_resources(), cpus_per_trial, gpus_per_trial
            )
            job = {
                "settings": settings.model_dump(mode="json"),
                "proxy": proxy_config.model_dump(mode="json"),
                "space": SearchSpace.load(settings.space),
                "parent": session.parent,
                "threads": cpus_per_trial,
            }
            # Screening chooses each fresh candidate on the driver, from proposals the sampler
            # draws there (`nas_neck.search.screening`), as a local search does.
            fresh = None
            if settings.screen > 1:
                fresh = screen_for(settings, job["space"], ProxyTask(proxy_config))

            def run(samples: int, decide: Callable[[], Step] | None = None) -> None:
                _tune(
                    session.study,
                    sampler,
                    job,
                    samples,
                    cpus_per_trial,
                    gpus_per_trial,
                    concurrency,
                    session.tracker,
                    on_trial_end,
                    decide,
                )

            if settings.rungs or settings.budget_minutes is not None or fresh is not None:
                # One open-ended `Tuner.fit()`: before each Tune trial the searcher decides, as a
                # local search does, between a queued trial, a promotion and a fresh candidate.
                budget = Budget(settings.budget_minutes)
                run(
                    -1,
                    lambda: next_step(
                        session.study, settings.schedule, settings.trials, budget, fresh
                    ),
                )
            else:
                # One `Tuner.fit()` a round, of the trials still to claim (at most 3 rounds:
                # trials that fail without a reason run again); the session waits for workers'.
                for todo in session.slots(settings.trials, rounds=3):
                    run(todo)
            if settings.confirm:
                # The confirmation runs are queued trials: Tune trials until none waits.
                session.confirm(lambda: run(-1, lambda: queue_step(session.study)))
    finally:
        if started:
            ray.shutdown()
    session.finish(ended=True)
    return session.study


# ---- driver --------------------------------------------------------------------------------------
class _StudySearch(OptunaSearch):
    """`OptunaSearch` that tells a failed trial FAIL and keeps no checkpoint of its own.

    OptunaSearch tells any reported result as COMPLETE; Optuna refuses NaN values for that and the
    trial would stay RUNNING. The study in storage is the search state, so Tune's searcher
    checkpoint (a pickle of the storage and the define-by-run closure) is not written.

    A trial that could not write (`write_failure`) stops the search: no trial is started after
    it (those running finish), and `stopped` holds its number and reason.
    """

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        failed = bool(result) and (
            "fail_reason" in result
            or not all(finite(result.get(m)) is not None for m in self._metric)
        )
        if result and write_failure(result):
            if self.stopped is None:
                self.stopped = (int(result[_TRIAL_NUMBER]), str(result["fail_reason"]))
            else:  # ran at the same time, and failed the same way
                self.also_failed.append(int(result[_TRIAL_NUMBER]))
        super().on_trial_complete(trial_id, None if failed else result, error=error or failed)

    def __init__(self, *args: Any, decide: Callable[[], Step] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._decide = decide
        self.stopped: tuple[int, str] | None = None
        self.also_failed: list[int] = []

    def suggest(self, trial_id: str) -> dict | None:
        """FINISHED once a trial could not write; with a `decide` (multi-fidelity or budgeted
        search): FINISHED when it says `done`, nothing yet (Tune asks again) when it says `wait`,
        else the next trial, which a queued promotion is when `decide` queued one."""
        if self.stopped is not None:
            return Searcher.FINISHED
        if self._decide is not None:
            step = self._decide()
            if step == "done":
                return Searcher.FINISHED
            if step == "wait":
                return None
        return super().suggest(trial_id)

    def save(self, checkpoint_path: str) -> None:
        pass


def _tune(
    study: optuna.Study,
    sampler: optuna.samplers.BaseSampler,
    job: dict[str, Any],
    samples: int,
    cpus: int,
    gpus: float,
    concurrency: int,
    tracker: Tracker,
    on_trial_end: Callable[[optuna.Study], None] | None,
    decide: Callable[[], Step] | None = None,
) -> None:
    """One `Tuner.fit()` of `samples` trials (-1: until `decide` says `done`)."""
    settings = SearchSettings(**job["settings"])
    ask = _Ask(job["space"])
    searcher = _StudySearch(
        space=ask,
        metric=settings.objectives.names,
        mode=["max", "min"],
        sampler=sampler,
        study_name=study.study_name,
        storage=make_storage(settings.storage),
        decide=decide,
    )
    callbacks = [_TrialEnd(lambda: on_trial_end(study))] if on_trial_end else []
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(_trainable, job=job), {"cpu": cpus, "gpu": gpus}),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=samples,
            max_concurrent_trials=concurrency,
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=f"{study.study_name}-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str(settings.out_dir / "ray"),
            failure_config=tune.FailureConfig(max_failures=1),
            callbacks=callbacks,
            verbose=0,
        ),
    )
    try:
        # Ctrl-C raises here, as in a local search; the old, quiet output engine honours verbose=0.
        with _env(TUNE_DISABLE_SIGINT_HANDLER="1", RAY_AIR_NEW_OUTPUT="0"), ask.heartbeat:
            tuner.fit()
    except KeyboardInterrupt:
        _abandon(study, ask.asked, tracker)
        raise
    if searcher.stopped is not None:  # a trial could not write: every later one would fail too
        number, reason = searcher.stopped
        error = WriteError(reason.removeprefix("WriteError: "))
        raise stop_error(study, number, error, tuple(searcher.also_failed))


def write_failure(result: dict[str, Any]) -> bool:
    """Whether a Tune result is a trial that failed for want of disk space or a writable folder
    (the trainable reports the trial's `fail_reason` and `write_failed`)."""
    return bool(result.get("write_failed")) or str(result.get("fail_reason", "")).startswith(
        "WriteError:"
    )


class _Ask:
    """The define-by-run function of `OptunaSearch`: samples the trial's architecture on the
    driver, records its `arch_hash` (so the dedupe sees it before any task runs) and beats for it."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space
        self.heartbeat = Heartbeat()
        self.asked: set[int] = set()

    def __call__(self, trial: Any) -> dict[str, Any]:
        arch = trial_architecture(self.space, trial)
        trial.set_user_attr("arch_hash", arch.hash)
        self.heartbeat.add(trial)
        self.asked.add(trial.number)
        return {_TRIAL_ID: trial._trial_id, _TRIAL_NUMBER: trial.number}

    def __reduce__(self) -> tuple:  # Tune pickles its config; the heartbeat thread stays here
        return _Ask, (self.space,)


def _abandon(study: optuna.Study, asked: set[int], tracker: Tracker) -> None:
    """Fail the asked trials still running (without a reason: they run again on resume) and mark
    their MLflow runs KILLED, as an interrupted local search does."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.number in asked:
            with contextlib.suppress(Exception):
                study.tell(t.number, state=TrialState.FAIL)
                if "mlflow_run_id" in t.user_attrs:
                    tracker.end(t.user_attrs["mlflow_run_id"], "KILLED")


def _connect(address: str | None) -> bool:
    """Connect to the cluster at `address`, or start a local Ray; whether we must shut it down."""
    if ray.is_initialized():
        return False
    if address:
        check_ray_address(address)  # ray.init retries a dead address for minutes
        try:
            ray.init(address=address)
        except (ConnectionError, AuthenticationError) as e:
            raise NasNeckError(
                f"--ray-address {address}: {e}. Is `ray start --head` running there? With token "
                "authentication on (Ray >= 2.59), set RAY_AUTH_MODE=token and give the cluster's "
                "token (~/.ray/auth_token or RAY_AUTH_TOKEN): see docs/cluster.md"
            ) from None
    else:
        # "local": a new instance even if `ray start` runs here (`--ray-address auto` joins that).
        ray.init(address="local", num_cpus=available_cpus(), include_dashboard=False)
    return True


def _slots(resources: dict[str, float], cpus: int, gpus: float) -> int:
    """How many trials of `cpus` CPUs and `gpus` GPUs the cluster runs at once."""
    fits = int(resources.get("CPU", 0) // cpus)
    if gpus > 0:
        fits = min(fits, int(resources.get("GPU", 0) // gpus))
    if fits < 1:
        raise NasNeckError(
            f"the Ray cluster has {resources.get('CPU', 0):g} CPUs and {resources.get('GPU', 0):g} GPUs: "
            f"no room for a trial of {cpus} CPUs and {gpus:g} GPUs (or pass --max-concurrent)"
        )
    return fits


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _trial_name(trial: tune.experiment.Trial) -> str:
    return f"trial-{trial.config[_TRIAL_NUMBER]:04d}"


class _TrialEnd(tune.Callback):
    """Calls `fn()` on the driver after each trial (completed or errored)."""

    def __init__(self, fn: Callable[[], None]) -> None:
        self.fn = fn

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.fn()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.fn()

    def __reduce__(self) -> tuple:  # Tune pickles its run config (for a restore not used here)
        return _TrialEnd, (_nothing,)


def _nothing() -> None:
    pass


# ---- trial (runs as a Ray task, on any node) -----------------------------------------------------
def _trainable(config: dict[str, Any], job: dict[str, Any]) -> None:
    """One Tune trial: reopen the Optuna trial the driver asked, run `Objective` on it, report."""
    torch.set_num_threads(job["threads"])  # Ray sets OMP_NUM_THREADS=1 in tasks; never inherit it
    settings = SearchSettings(**job["settings"])
    study = optuna.load_study(
        study_name=settings.study_name,
        storage=make_storage(settings.storage),
        sampler=optuna.samplers.RandomSampler(),  # never consulted: the driver sampled
    )
    trial = optuna.trial.Trial(study, config[_TRIAL_ID])
    tracker = Tracker(settings.tracking_uri, study.study_name, settings.artifacts)
    previous = trial.user_attrs.get("mlflow_run_id")
    if previous:  # Tune restarted this trial after its task died
        tracker.end(previous, "KILLED")
    trial.set_user_attr("worker", f"ray:{ray.util.get_node_ip_address()}:{os.getpid()}")
    objective = Objective.for_search(
        settings,
        job["space"],
        _proxy(job["proxy"]),
        tracker,
        job["parent"],
    )
    names = settings.objectives.names
    try:
        result: dict[str, Any] = dict(zip(names, objective(trial), strict=True))
    except Exception as e:  # recorded by the objective; Tune still gets the metrics, as NaN
        reason = trial.user_attrs.get("fail_reason") or f"{type(e).__name__}: {e}"
        result = {**dict.fromkeys(names, math.nan), "fail_reason": reason}
        if isinstance(e, WriteError) or is_out_of_space(e):  # the driver stops the search
            result["write_failed"] = True
            with contextlib.suppress(Exception):
                trial.set_user_attr("retried", True)  # queued again by the driver: its retry counts
    attrs = {
        k: v
        for k, v in trial.user_attrs.items()
        if k not in _NOT_REPORTED and isinstance(v, int | float) and not isinstance(v, bool)
    }
    tune.report({**attrs, **result, _TRIAL_NUMBER: trial.number})


def _proxy(config: dict[str, Any]) -> ProxyTask:
    """This process's `ProxyTask` for `config` (reused across trials when Tune reuses the actor)."""
    key = json.dumps(config, sort_keys=True)
    if key not in _proxies:
        _proxies[key] = ProxyTask(ProxyConfig(**config))
    return _proxies[key]
