"""An open search, shared by every launcher (local runner, `nas-neck worker`, Ray Tune).

`prepare_study` opens or resumes the study and its MLflow parent run, queues the baselines and
stores in the study what other processes need to join it (`join_study`). A `Session` then runs
trials: `optimize` one at a time, deciding before each what to run (a queued trial, a
promotion of a multi-fidelity search, a fresh candidate) within a wall-clock budget; `slots`
hands a batch launcher (Ray Tune) how many to start; `confirm` retrains the top of the front
with seeds; `finish` writes the report: front trials tagged in MLflow, the Pareto plots written
and logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from nas_neck.config import ProxyConfig
from nas_neck.dsl import find_space
from nas_neck.errors import NasNeckError, WriteError, is_out_of_space
from nas_neck.pareto import ParetoReport, log_to_mlflow, write_report
from nas_neck.search.confirm import (
    Confirmed,
    baseline_sources,
    choose,
    confirmed,
    enqueue_confirmations,
)
from nas_neck.search.objective import Objective
from nas_neck.search.rungs import Budget, Step, next_step
from nas_neck.search.settings import SearchSettings, check_baselines, parent_params, shared
from nas_neck.search.study import (
    Heartbeat,
    claimed_count,
    counted,
    fail_stale_trials,
    finished_count,
    load_existing_study,
    open_study,
    requeue,
)
from nas_neck.search.tracking import Tracker

log = logging.getLogger(__name__)

TrialEnd = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]
TrialFunc = Callable[[optuna.Trial], tuple[float, float]]
_WAIT_POLL_S = 2.0  # while the last trials run in other processes


@dataclass(frozen=True)
class Session:
    """A study being searched, with its MLflow tracker and parent run."""

    settings: SearchSettings
    study: optuna.Study
    tracker: Tracker
    parent: str  # MLflow parent run id

    def slots(self, target: int, rounds: int, wait: bool = True) -> Iterator[int]:
        """The run-until-N loop: yields how many trials to start next, until `target` trials
        count or `rounds` rounds ran; stale trials are failed (and re-queued) before each look.

        Trials running in other processes count as claimed: with `wait`, sleep until they finish
        (the search writes the report after them); else stop (a worker leaves them to others).
        """
        done = 0
        while done < rounds:
            fail_stale_trials(self.study, self.tracker.end_stale)
            if finished_count(self.study) >= target:
                return
            todo = target - claimed_count(self.study)
            if todo <= 0:
                if not wait:
                    return
                time.sleep(_WAIT_POLL_S)
                continue
            done += 1
            yield todo

    def optimize(
        self,
        func: TrialFunc,
        target: int,
        wait: bool = True,
        on_trial_end: TrialEnd | None = None,
        budget: Budget | None = None,
        fresh: Callable[[optuna.Study], None] | None = None,
    ) -> None:
        """Run `func` one trial at a time until `target` candidates count, nothing is left to
        promote (with rungs), or the next piece of work would not fit the `budget` (default: the
        settings' `budget_minutes` from now).

        Before each trial it picks what to run (`nas_neck.search.rungs.next_step`): a queued trial (a baseline, a retry, a
        promotion or confirmation queued by any process), a promotion, or a fresh candidate.
        At most `target` + 3 trials that add nothing (failed without a reason) are tried. A trial
        that cannot write (a full disk) ends it with a `WriteError` (see `_run_one`).
        """
        budget = budget or Budget(self.settings.budget_minutes)
        misses = 0
        while misses < target + 3:
            fail_stale_trials(self.study, self.tracker.end_stale)
            step = next_step(self.study, self.settings.schedule, target, budget, fresh)
            if step == "done":
                return
            if step == "wait":
                if not wait:
                    return
                time.sleep(_WAIT_POLL_S)
                continue
            misses += not self._run_one(func, on_trial_end)

    def _run_one(self, func: TrialFunc, on_trial_end: TrialEnd | None) -> bool:
        """One trial (a queued one first); whether it added a trial that counts.

        A trial that cannot write (a `WriteError`, a full disk) stops the search: the trial is
        FAILED with its reason and queued again (so a rerun, after space is freed, resumes with
        it), and a `WriteError` saying so is raised: every later trial would fail the same way,
        maybe after training."""
        before = _progress(self.study)
        stopped: list[tuple[int, Exception]] = []

        def guarded(trial: optuna.Trial) -> tuple[float, float]:
            try:
                return func(trial)
            except Exception as e:
                if isinstance(e, WriteError) or is_out_of_space(e):
                    stopped.append((trial.number, e))
                    with contextlib.suppress(Exception):  # the study may share the full disk
                        trial.set_user_attr("retried", True)  # its retry counts, not it
                raise

        optuna_log = logging.getLogger("optuna.study._optimize")
        optuna_log.addFilter(_no_traceback)
        try:
            self.study.optimize(
                guarded,
                n_trials=1,
                catch=(Exception,),
                callbacks=[on_trial_end] if on_trial_end else None,
            )
        except UpdateFinishedTrialError as e:  # failed as stale meanwhile (a long stall)
            log.warning("this process's trial was failed by another process: %s", e)
        except Exception:
            if not stopped:  # else the study could not record the failure (the same full disk)
                raise
        finally:
            optuna_log.removeFilter(_no_traceback)
        if stopped:
            raise stop_error(self.study, *stopped[0])
        return _progress(self.study) > before

    def confirm(
        self,
        drain: Callable[[], None],
        top: int | None = None,
        epochs: int | None = None,
        seeds: int | None = None,
    ) -> list[Confirmed]:
        """Retrain the `top` candidates of the final front and the baselines from scratch for
        `epochs` with training seeds 0 .. `seeds` - 1, the same for every study so confirmed
        results compare across studies (defaults: the settings' confirm, confirm_epochs and
        confirm_seeds), run the queue dry (other processes may help), and record the mean and sd
        of each architecture on the MLflow parent run; returns them, cheapest first.

        `drain()` runs the queue dry: `Session.drain` in this process, or Tune trials on the Ray
        driver."""
        s = self.settings
        top, epochs, seeds = (
            s.confirm if top is None else top,
            s.confirm_epochs if epochs is None else epochs,
            s.confirm_seeds if seeds is None else seeds,
        )
        sources = [*choose(self.study, top), *baseline_sources(self.study, s.baselines)]
        queued = enqueue_confirmations(self.study, sources, epochs, list(range(seeds)))
        log.info("confirming %d architectures: %d runs queued", len(sources), queued)
        drain()
        rows = confirmed(self.study, epochs)
        metrics: dict[str, float] = {}
        for r in rows:
            name = f"confirmed.trial{r.source}" + (f".{r.baseline}" if r.baseline else "")
            metrics |= {f"{name}.{s.accuracy}_mean": r.mean, f"{name}.{s.accuracy}_sd": r.sd}
        self.tracker.log_metrics(self.parent, metrics)
        return rows

    def drain(self, func: TrialFunc, on_trial_end: TrialEnd | None = None) -> None:
        """Run the queued trials of the study until none waits and none runs elsewhere."""
        misses = 0
        while misses < 3:
            fail_stale_trials(self.study, self.tracker.end_stale)
            step = queue_step(self.study)
            if step == "done":
                return
            if step == "wait":
                time.sleep(_WAIT_POLL_S)
                continue
            misses += not self._run_one(func, on_trial_end)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """On Ctrl-C, mark the parent run KILLED, on a search stopped by a `WriteError` FAILED (a
        rerun resumes it), and re-raise."""
        try:
            yield
        except KeyboardInterrupt:
            self.tracker.end(self.parent, "KILLED")
            raise
        except WriteError:
            with contextlib.suppress(Exception):  # MLflow's store may be on the full disk too
                self.tracker.end(self.parent, "FAILED")
            raise

    def finish(self, target: int | None = None, ended: bool = False) -> ParetoReport | None:
        """Tag front trials in MLflow, record the front on the parent run, write and log the
        plots; end the parent run once `target` (default: the settings' N) trials count, or when
        the search `ended` (its budget spent, nothing left to promote). Returns the report (None
        without a front, e.g. when every trial failed)."""
        study, tracker, parent = self.study, self.tracker, self.parent
        tracker.log_metrics(parent, {"trials_finished": finished_count(study)})
        report: ParetoReport | None = None
        try:
            report = write_report(
                study,
                self.settings.out_dir / study.study_name,
                max_latency_ms=self.settings.max_latency_ms,
            )
        except NasNeckError as e:
            log.warning("no Pareto front: %s", e)
        else:
            front = set(report.front)
            for t in study.get_trials(deepcopy=False):
                run = t.user_attrs.get("mlflow_run_id")
                if run and counted(t):
                    tracker.set_tags(run, {"pareto": str(t.number in front).lower()})
            tracker.set_tags(parent, {"pareto_trials": ",".join(map(str, sorted(front)))})
            tracker.log_metrics(parent, {"front_size": len(front)})
            log_to_mlflow(study, report, tracker.uri)
            log.info("Pareto plots: %s, %s", report.png, report.html)
        if ended or finished_count(study) >= (self.settings.trials if target is None else target):
            tracker.end(parent)
        return report


def _no_traceback(record: logging.LogRecord) -> bool:
    """Optuna logs a failed trial with its traceback: none for a `NasNeckError`, a reason the
    user can act on (recorded as the trial's `fail_reason`, and printed as one line)."""
    if record.exc_info and isinstance(record.exc_info[1], NasNeckError):
        record.exc_info = None
        record.exc_text = None
    return True


def stop_error(
    study: optuna.Study, number: int, error: BaseException, others: tuple[int, ...] = ()
) -> WriteError:
    """The `WriteError` that stops a search at trial `number`, which failed with `error` (a
    `WriteError`, or a full disk met elsewhere): the trial (and `others` that failed so at the
    same time) is queued again, unless the storage cannot take it, and the message says what was
    kept and how to resume."""
    queued = _requeue_failed(study, number)
    for other in others:
        _requeue_failed(study, other)
    why = str(error) if isinstance(error, WriteError) else f"{type(error).__name__}: {error}"
    why = why.splitlines()[0] if why else type(error).__name__
    try:
        kept = f"the {finished_count(study)} finished trial(s) are kept"
    except Exception:
        kept = "the finished trials are kept"
    again = ", and queued again" if queued else ""
    log.warning("trial %d cannot write: stopping the search", number)
    return WriteError(
        f"{why}. The search stopped at trial {number} (failed{again}; {kept}): rerun the same "
        "command when there is room, and it resumes"
    )


def _requeue_failed(study: optuna.Study, number: int) -> bool:
    """Queue trial `number` again if it failed to be retried (user attr `retried`)."""
    with contextlib.suppress(Exception):
        trial = study.get_trials(deepcopy=False)[number]
        if trial.state == TrialState.FAIL and trial.user_attrs.get("retried"):
            requeue(study, trial)
            return True
    return False


def queue_step(study: optuna.Study) -> Step:
    """Draining the queue: `run` while a trial waits in it, `wait` while one runs, then `done`."""
    states = {t.state for t in study.get_trials(deepcopy=False)}
    if TrialState.WAITING in states:
        return "run"
    return "wait" if TrialState.RUNNING in states else "done"


def prepare_study(settings: SearchSettings, proxy_config: ProxyConfig) -> Session:
    """Open or resume the study and its MLflow parent run, queue the baselines, and store what a
    worker needs to join (user attrs `settings`, `proxy`, with absolute paths)."""
    check_baselines(settings.baselines)
    study = open_study(
        settings.study_name, settings.storage, settings.objectives, settings.sampler, settings.seed
    )
    study.set_user_attr("space", str(settings.space))
    shared_settings, shared_proxy = shared(settings, proxy_config)
    study.set_user_attr("settings", shared_settings.model_dump(mode="json"))
    study.set_user_attr("proxy", shared_proxy.model_dump(mode="json"))
    tracker = Tracker(settings.tracking_uri, study.study_name, settings.artifacts)
    parent = tracker.parent_run(parent_params(settings, proxy_config))
    study.set_user_attr("mlflow_parent_run_id", parent)
    space = find_space(settings.space)  # a file, or a shipped space: `space/<its file name>`
    tracker.log_text(parent, space.read_text(), f"space/{space.name}")
    _enqueue_baselines(study, settings.baselines)
    return Session(settings, study, tracker, parent)


def join_study(
    study_name: str,
    storage: str,
    tracking_uri: str | None = None,
    seed: int = 0,
    artifacts: str | None = None,
) -> tuple[Session, ProxyConfig]:
    """Join a study `nas-neck search` prepared: its settings and proxy config as stored there, the
    study opened with its sampler seeded by `seed`, MLflow at `tracking_uri` (default: the
    study's), a new MLflow experiment's artifacts under `artifacts` (default: the study's)."""
    attrs = load_existing_study(study_name, storage).user_attrs
    if "settings" not in attrs or "proxy" not in attrs:
        raise NasNeckError(
            f"study {study_name!r} in {storage} holds no search settings: create it with "
            f"`nas-neck search --study {study_name} --storage {storage} ...` first"
        )
    settings = SearchSettings(**attrs["settings"])
    study = open_study(study_name, storage, settings.objectives, settings.sampler, seed)
    tracker = Tracker(
        tracking_uri or settings.tracking_uri, study_name, artifacts or settings.artifacts
    )
    session = Session(settings, study, tracker, attrs["mlflow_parent_run_id"])
    return session, ProxyConfig(**attrs["proxy"])


def _progress(study: optuna.Study) -> int:
    """Trials that count (candidates, promotions, confirmations): did a trial add anything?"""
    return sum(counted(t) for t in study.get_trials(deepcopy=False))


def trial_function(objective: Objective, worker: str | None = None) -> TrialFunc:
    """`objective` for `study.optimize`: its trial beats while it runs (so any process can tell
    when it died, see `fail_stale_trials`) and records the process that ran it (user attr
    `worker`, when given)."""

    def run(trial: optuna.Trial) -> tuple[float, float]:
        if worker is not None:
            trial.set_user_attr("worker", worker)
        with Heartbeat() as heartbeat:
            heartbeat.add(trial)
            return objective(trial)

    return run


def process_name() -> str:
    """`host:pid` of this process, as the `worker` user attr records it."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _enqueue_baselines(study: optuna.Study, names: list[str]) -> None:
    """Queue each baseline once per study: resuming queues again only one that was interrupted
    (failed without a reason), not one that finished, runs, or waits."""
    have = {
        t.user_attrs.get("baseline")
        for t in study.get_trials(deepcopy=False)
        if counted(t) or t.state in (TrialState.RUNNING, TrialState.WAITING)
    }
    for name in names:
        if name not in have:
            study.enqueue_trial({}, user_attrs={"baseline": name})
