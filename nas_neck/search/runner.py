"""Run a search locally: open or resume the study, enqueue baselines, optimize until N trials
count, then tag the Pareto front in MLflow.

`prepare_study` is shared with the other launchers (worker processes, Ray Tune): it also stores in
the study what they need to join it (settings and proxy config, with absolute paths).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import TrialState
from pydantic import BaseModel, ConfigDict, Field

from nas_neck.dsl import SearchSpace, load_space
from nas_neck.errors import NasNeckError
from nas_neck.pareto import front_trials, log_to_mlflow, write_report
from nas_neck.search.objective import BASELINES_DIR, Hooks, Objective
from nas_neck.search.study import (
    DEFAULT_STORAGE,
    Objectives,
    beating,
    claimed_count,
    counted,
    fail_stale_trials,
    finished_count,
    is_journal,
    open_study,
)
from nas_neck.search.tracking import DEFAULT_TRACKING_URI, Tracker

if TYPE_CHECKING:
    from nas_neck.proxy import ProxyConfig

log = logging.getLogger(__name__)

DEFAULT_SPACE = BASELINES_DIR / "pafpn-family.yaml"
_WAIT_POLL_S = 2.0  # while the last trials run in other processes


class SearchSettings(BaseModel):
    """Everything `nas-neck search` takes (the proxy's settings live in `nas_neck.proxy`)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    space: Path = DEFAULT_SPACE
    study: str | None = None
    storage: str = DEFAULT_STORAGE
    tracking_uri: str = DEFAULT_TRACKING_URI
    trials: int = Field(8, ge=1)
    accuracy: str = "map"
    cost: str = "latency"
    max_latency_ms: float | None = None
    sampler: str = "tpe"
    seed: int = 0
    baselines: list[str] = ["fpn", "pafpn", "bifpn"]
    out_dir: Path = Path("runs")

    @property
    def objectives(self) -> Objectives:
        return Objectives.parse(f"{self.accuracy},{self.cost}")

    @property
    def study_name(self) -> str:
        return self.study or load_space(self.space).name


def check_baselines(names: list[str]) -> None:
    known = sorted(p.stem for p in BASELINES_DIR.glob("*.yaml") if load_space(p).is_fixed)
    for name in names:
        if name not in known:
            raise NasNeckError(
                f"--baselines: unknown baseline {name!r}; expected some of {', '.join(known)}"
            )


def enqueue_baselines(study: optuna.Study, names: list[str]) -> None:
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


def parent_params(settings: SearchSettings, proxy_config: BaseModel) -> dict[str, object]:
    p = proxy_config.model_dump(mode="json")
    train = p.pop("train")
    return {
        "space": str(settings.space),
        "trials": settings.trials,
        "sampler": settings.sampler,
        "seed": settings.seed,
        "objectives": ",".join(settings.objectives.names),
        "max_latency_ms": settings.max_latency_ms,
        "baselines": ",".join(settings.baselines),
        **{f"proxy.{k}": v for k, v in p.items()},
        **{f"train.{k}": v for k, v in train.items()},
    }


def absolute(
    settings: SearchSettings, proxy_config: ProxyConfig
) -> tuple[SearchSettings, ProxyConfig]:
    """Copies with every local path absolute (space, outputs, SQLite/journal files, data, cache;
    the built-in synthetic data resolved to its folder), as other processes need them."""
    from nas_neck.data.cache import default_cache_root
    from nas_neck.data.synth import ensure_default_dataset

    def path(p: Path | None) -> Path | None:
        return None if p is None else Path(p).expanduser().resolve()

    data = proxy_config.data if proxy_config.data is not None else ensure_default_dataset().root
    proxy_config = proxy_config.model_copy(
        update={
            "data": path(data),
            "val_data": path(proxy_config.val_data),
            "images": path(proxy_config.images),
            "cache_root": path(proxy_config.cache_root or default_cache_root()),
        }
    )
    settings = settings.model_copy(
        update={
            "space": path(settings.space),
            "out_dir": path(settings.out_dir),
            "study": settings.study_name,
            "storage": _absolute_url(settings.storage),
            "tracking_uri": _absolute_url(settings.tracking_uri),
        }
    )
    return settings, proxy_config


def _absolute_url(url: str) -> str:
    """`sqlite:///rel.db` and `journal:rel` made absolute; other URLs unchanged."""
    if (
        url.startswith("sqlite:///")
        and not url.startswith("sqlite:////")
        and url != "sqlite:///:memory:"
    ):
        return f"sqlite:///{Path(url.removeprefix('sqlite:///')).resolve()}"
    if is_journal(url):
        return f"journal:{Path(url.removeprefix('journal:')).resolve()}"
    return url


def prepare_study(
    settings: SearchSettings, proxy_config: ProxyConfig
) -> tuple[optuna.Study, Tracker, str]:
    """Open or resume the study and its MLflow parent run, queue the baselines, and store what a
    worker needs to join (user attrs `settings`, `proxy`); returns (study, tracker, parent run id)."""
    check_baselines(settings.baselines)
    study = open_study(
        settings.study_name, settings.storage, settings.objectives, settings.sampler, settings.seed
    )
    study.set_user_attr("space", str(settings.space))
    shared_settings, shared_proxy = absolute(settings, proxy_config)
    study.set_user_attr("settings", shared_settings.model_dump(mode="json"))
    study.set_user_attr("proxy", shared_proxy.model_dump(mode="json"))
    tracker = Tracker(settings.tracking_uri, study.study_name)
    parent = tracker.parent_run(parent_params(settings, proxy_config))
    study.set_user_attr("mlflow_parent_run_id", parent)
    tracker.log_text(parent, Path(settings.space).read_text(), f"space/{Path(settings.space).name}")
    enqueue_baselines(study, settings.baselines)
    return study, tracker, parent


def run_search(
    settings: SearchSettings, proxy, hooks: Hooks | None = None, on_trial_end=None
) -> optuna.Study:
    """Optimize until `settings.trials` trials count (complete, or failed with a reason).

    Other processes (`nas-neck worker`) may work on the same study: their running trials count
    toward N, and the search waits for them before writing the report.
    """
    space = SearchSpace.load(settings.space)
    study, tracker, parent = prepare_study(settings, proxy.config)
    native = not is_journal(settings.storage)
    objective = Objective.for_search(settings, space, proxy, tracker, parent, hooks, native)
    func = objective if native else beating(objective)
    objective.hooks.search_start(finished_count(study))  # a resumed study starts where it stopped
    attempts = 0
    try:
        while finished_count(study) < settings.trials and attempts < 3 * settings.trials:
            fail_stale_trials(study, native)
            if claimed_count(study) >= settings.trials:  # the last ones run elsewhere
                time.sleep(_WAIT_POLL_S)
                continue
            attempts += 1
            study.optimize(
                func,
                n_trials=1,
                catch=(Exception,),
                callbacks=[on_trial_end] if on_trial_end else None,
            )
    except KeyboardInterrupt:
        tracker.end(parent, "KILLED")
        raise
    finish(study, tracker, parent, settings.out_dir, settings.max_latency_ms)
    if finished_count(study) >= settings.trials:
        tracker.end(parent)
    return study


def finish(
    study: optuna.Study,
    tracker: Tracker,
    parent: str,
    out_dir: Path,
    max_latency_ms: float | None = None,
) -> None:
    """Tag front trials in MLflow, record the front on the parent run, write and log the plots."""
    tracker.log_metrics(parent, {"trials_finished": finished_count(study)})
    try:
        front = {t.number for t in front_trials(study)}
        report = write_report(study, out_dir / study.study_name, max_latency_ms=max_latency_ms)
    except NasNeckError as e:  # e.g. every trial failed: no front to tag or plot
        log.warning("no Pareto front: %s", e)
        return
    for t in study.get_trials(deepcopy=False):
        run = t.user_attrs.get("mlflow_run_id")
        if run and counted(t):
            tracker.set_tags(run, {"pareto": str(t.number in front).lower()})
    tracker.set_tags(parent, {"pareto_trials": ",".join(map(str, sorted(front)))})
    tracker.log_metrics(parent, {"front_size": len(front)})
    log_to_mlflow(study, report, tracker.uri)
    log.info("Pareto plots: %s, %s", report["png"], report["html"])
