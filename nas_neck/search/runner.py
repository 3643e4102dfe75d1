"""Run a search locally: open or resume the study, enqueue baselines, optimize until N trials
count, then tag the Pareto front in MLflow.
"""

from __future__ import annotations

import logging
from pathlib import Path

import optuna
from pydantic import BaseModel, ConfigDict, Field

from nas_neck.dsl import SearchSpace, load_space
from nas_neck.errors import NasNeckError
from nas_neck.pareto import front_trials, log_to_mlflow, write_report
from nas_neck.search.objective import BASELINES_DIR, Hooks, Objective
from nas_neck.search.study import (
    DEFAULT_STORAGE,
    Objectives,
    counted,
    finished_count,
    open_study,
)
from nas_neck.search.tracking import DEFAULT_TRACKING_URI, Tracker

log = logging.getLogger(__name__)

DEFAULT_SPACE = BASELINES_DIR / "pafpn-family.yaml"


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
            raise NasNeckError(f"--baselines: unknown baseline {name!r}; expected some of {', '.join(known)}")


def enqueue_baselines(study: optuna.Study, names: list[str]) -> None:
    """Queue each baseline once per study (resuming does not queue them again)."""
    have = {t.user_attrs.get("baseline") for t in study.get_trials(deepcopy=False)}
    for name in names:
        if name not in have:
            study.enqueue_trial({}, user_attrs={"baseline": name})


def parent_params(settings: SearchSettings, proxy_config: BaseModel) -> dict[str, object]:
    p = proxy_config.model_dump(mode="json")
    train = p.pop("train")
    return {
        "space": str(settings.space), "trials": settings.trials, "sampler": settings.sampler,
        "seed": settings.seed, "objectives": ",".join(settings.objectives.names),
        "max_latency_ms": settings.max_latency_ms, "baselines": ",".join(settings.baselines),
        **{f"proxy.{k}": v for k, v in p.items()}, **{f"train.{k}": v for k, v in train.items()},
    }


def run_search(settings: SearchSettings, proxy, hooks: Hooks | None = None,
               on_trial_end=None) -> optuna.Study:
    """Optimize until `settings.trials` trials count (complete, or failed with a reason)."""
    space = SearchSpace.load(settings.space)
    check_baselines(settings.baselines)
    study = open_study(settings.study_name, settings.storage, settings.objectives, settings.sampler, settings.seed)
    study.set_user_attr("space", str(settings.space))
    tracker = Tracker(settings.tracking_uri, study.study_name)
    parent = tracker.parent_run(parent_params(settings, proxy.config))
    study.set_user_attr("mlflow_parent_run_id", parent)
    tracker.log_text(parent, Path(settings.space).read_text(), f"space/{Path(settings.space).name}")
    enqueue_baselines(study, settings.baselines)
    objective = Objective(space, proxy, tracker, parent, settings.objectives, settings.max_latency_ms,
                          settings.out_dir, hooks or Hooks())
    attempts = 0
    try:
        while finished_count(study) < settings.trials and attempts < 3 * settings.trials:
            attempts += 1
            study.optimize(objective, n_trials=1, catch=(Exception,),
                           callbacks=[on_trial_end] if on_trial_end else None)
    except KeyboardInterrupt:
        tracker.end(parent, "KILLED")
        raise
    finish(study, tracker, parent, settings.out_dir, settings.max_latency_ms)
    if finished_count(study) >= settings.trials:
        tracker.end(parent)
    return study


def finish(study: optuna.Study, tracker: Tracker, parent: str, out_dir: Path,
           max_latency_ms: float | None = None) -> None:
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
