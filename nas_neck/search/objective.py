"""One trial of the search: sample, dedupe, measure, (maybe) train, evaluate, record.

The same objective serves the local loop, worker processes and Ray Tune: it needs only an Optuna
trial, a `ProxyTask` and a `Tracker`. A trial with the user attr `baseline` evaluates that shipped
fixed architecture instead of sampling one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from nas_neck.dsl import Architecture, OptunaSampler, SearchSpace, load_architecture
from nas_neck.errors import (
    OUT_OF_SPACE,
    CheckpointError,
    WriteError,
    check_room,
    describe_os_error,
    os_error_of,
)
from nas_neck.fidelity import (
    CONFIRM_OF,
    EPOCHS,
    PROMOTES,
    RESUMES,
    ROLE,
    RUNG,
    SEED,
    fidelity_of,
)
from nas_neck.metrics import cost_attr
from nas_neck.search.settings import SearchSettings
from nas_neck.search.study import Objectives, fail_stale_trials
from nas_neck.search.tracking import Tracker

if TYPE_CHECKING:
    from nas_neck.proxy import Outcome, ProxyTask

log = logging.getLogger(__name__)

_DUPLICATE_POLL_S = 2.0
_HASHLESS_WAIT_S = 60.0  # how long a lower-numbered trial that has not sampled yet is waited for
_NOT_INHERITED = (
    "baseline",
    "mlflow_run_id",
    "arch",
    "summary",
    "arch_hash",
    "heartbeat",
    "worker",
    "retry_of",
    EPOCHS,
    RUNG,
    PROMOTES,
    RESUMES,
    ROLE,
    CONFIRM_OF,
    SEED,
)
_FIDELITY_TAGS = (EPOCHS, RUNG, PROMOTES, RESUMES, ROLE, CONFIRM_OF, SEED)
_NOT_PARAMS = ("checkpoint",)  # a path, not a setting


@dataclass
class Hooks:
    """Callbacks for a progress display (all optional)."""

    search_start: Callable[[int], None] = lambda finished: None
    trial_start: Callable[[int, Architecture], None] = lambda n, arch: None
    epoch: Callable[[int, int, float], None] = lambda epoch, total, loss: None


@dataclass
class Objective:
    """Callable objective for `study.optimize`; returns (accuracy, cost)."""

    space: SearchSpace
    proxy: ProxyTask
    tracker: Tracker
    parent_run_id: str
    objectives: Objectives = field(default_factory=Objectives)
    max_latency_ms: float | None = None
    out_dir: Path = Path("runs")
    hooks: Hooks = field(default_factory=Hooks)
    epochs: int | None = None  # a fresh candidate's epochs (the first rung's); None: the proxy's

    @classmethod
    def for_search(
        cls,
        settings: SearchSettings,
        space: SearchSpace,
        proxy: ProxyTask,
        tracker: Tracker,
        parent_run_id: str,
        hooks: Hooks | None = None,
    ) -> Objective:
        """The objective every launcher (local, worker, Ray trial) runs for a search's settings."""
        return cls(
            space,
            proxy,
            tracker,
            parent_run_id,
            settings.objectives,
            settings.max_latency_ms,
            settings.out_dir,
            hooks or Hooks(),
            settings.rungs[0] if settings.rungs else None,
        )

    def __call__(self, trial: optuna.Trial) -> tuple[float, float]:
        arch = trial_architecture(self.space, trial)
        digest = arch.hash
        attrs = trial.user_attrs
        if EPOCHS not in attrs:  # a fresh candidate (promotions and confirmations are queued so)
            trial.set_user_attr(EPOCHS, self.epochs or self.proxy.config.train.epochs)
            if self.epochs is not None:
                trial.set_user_attr(RUNG, 0)
        trial.set_user_attr("arch_hash", digest)
        trial.set_user_attr("arch", arch.to_dict())
        trial.set_user_attr("summary", arch.short())
        self.hooks.trial_start(trial.number, arch)
        run_id = self.tracker.trial_run(
            self.parent_run_id,
            trial.number,
            tags={
                "arch_hash": digest,
                "baseline": trial.user_attrs.get("baseline", ""),
                **{k: trial.user_attrs[k] for k in _FIDELITY_TAGS if k in trial.user_attrs},
            },
        )
        trial.set_user_attr("mlflow_run_id", run_id)
        self.tracker.set_tags(
            run_id, {"optuna.trial_number": trial.number, "optuna.study": trial.study.study_name}
        )
        self.tracker.log_params(run_id, {"arch_hash": digest, **_flatten(arch)})
        self.tracker.log_text(run_id, arch.to_yaml(), "architecture.yaml")
        try:
            values = self._evaluate(trial, arch, digest, run_id)
        except BaseException as e:
            reason = _reason(e)
            interrupted = not isinstance(e, Exception)
            # Recording the failure must not hide it (a full disk may hold the stores too).
            with contextlib.suppress(Exception):
                if not interrupted:
                    trial.set_user_attr("fail_reason", reason)
                self.tracker.set_tags(run_id, {"fail_reason": reason})
                self.tracker.end(run_id, "KILLED" if interrupted else "FAILED")
            log.warning("trial %d failed: %s", trial.number, reason)
            raise
        self.tracker.end(run_id)
        return values

    # ---- steps -------------------------------------------------------------------------------
    def _evaluate(
        self, trial: optuna.Trial, arch: Architecture, digest: str, run_id: str
    ) -> tuple[float, float]:
        original = self._find_original(trial, digest)
        if original is not None:
            return self._reuse(trial, original, run_id)
        source = _source_trial(trial)
        if source is None:
            cost = self.proxy.cost(arch)
        else:  # a promotion or a confirmation: the same neck, measured once already
            cost = {k: v for k, v in source.user_attrs.items() if _is_cost(k)}
        self._record(trial, run_id, cost)
        if "latency_busy" in cost:  # timed on a busy machine (`nas_neck.measure.machine_load`)
            self.tracker.set_tags(run_id, {"latency_busy": str(bool(cost["latency_busy"])).lower()})
        cost_value = cost[cost_attr(self.objectives.cost)]
        if self.max_latency_ms is not None:
            excess = cost["latency_ms"] - self.max_latency_ms
            trial.set_constraint("latency", excess)
            if excess > 0:
                trial.set_user_attr("infeasible", True)
                self.tracker.set_tags(run_id, {"infeasible": "true"})
                log.info(
                    "trial %d: %.2f ms is over the %.2f ms budget; not trained",
                    trial.number,
                    cost["latency_ms"],
                    self.max_latency_ms,
                )
                return 0.0, cost_value
        path = self.out_dir / trial.study.study_name / f"trial-{trial.number:04d}.pt"
        # Nothing is trained that could not be saved: room for the checkpoint and its copy in
        # MLflow's artifacts (on the same disk where they are local), before training.
        check_room(
            path, 2 * self.proxy.checkpoint_bytes(arch), f"trial {trial.number}'s checkpoint"
        )
        outcome = self._train(trial, arch, source)
        values = {**outcome.metrics, **outcome.timings, "precision": outcome.precision}
        self._record(trial, run_id, values)
        self.tracker.log_series(run_id, "train_loss", outcome.losses)
        trial.set_user_attr("losses", outcome.losses)
        ckpt = self.proxy.save(outcome, path)
        trial.set_user_attr("checkpoint", str(ckpt.resolve()))
        self._log_checkpoint(run_id, ckpt)
        return outcome.metrics[self.objectives.accuracy], cost_value

    def _log_checkpoint(self, run_id: str, ckpt: Path) -> None:
        """Copy the checkpoint to the run's MLflow artifacts; a full disk there is a `WriteError`
        naming the artifacts' location."""
        try:
            self.tracker.log_artifact(run_id, ckpt, "checkpoint")
        except Exception as e:
            error = os_error_of(e)
            if error is None or error.errno not in OUT_OF_SPACE:
                raise
            where = self.tracker.client.get_run(run_id).info.artifact_uri
            raise WriteError(
                f"{where}: cannot copy the checkpoint to MLflow's artifacts: "
                f"{describe_os_error(error)}; free some space there"
            ) from None

    def _train(
        self, trial: optuna.Trial, arch: Architecture, source: optuna.trial.FrozenTrial | None
    ) -> Outcome:
        """Train as the trial says: a fresh candidate for its epochs; a promotion continues the
        checkpoint of the rung below; a confirmation run trains from scratch with its seed."""
        attrs = trial.user_attrs
        epochs = int(attrs[EPOCHS])

        def on_epoch(e: int, n: int, loss: float) -> None:
            self.hooks.epoch(e, n, loss)

        if source is not None and PROMOTES in attrs:
            done = int(source.user_attrs[EPOCHS])
            checkpoint = source.user_attrs.get("checkpoint")
            if not checkpoint:
                raise CheckpointError(f"trial {source.number} left no checkpoint to continue")
            return self.proxy.run(
                arch,
                on_epoch,
                epochs=epochs - done,
                resume=Path(checkpoint),
                start_epoch=done,
            )
        return self.proxy.run(arch, on_epoch, epochs=epochs, seed=attrs.get(SEED))

    def _record(self, trial: optuna.Trial, run_id: str, values: dict[str, Any]) -> None:
        """Values as trial user attrs, and in MLflow: numbers as metrics, names (precision,
        latency target and scope) as params, so a study mixing settings shows it."""
        for k, v in values.items():
            trial.set_user_attr(k, v)
        self.tracker.log_metrics(run_id, _numbers(values))
        self.tracker.log_params(run_id, _names(values))

    def _find_original(self, trial: optuna.Trial, digest: str) -> optuna.trial.FrozenTrial | None:
        """An earlier trial of the same architecture: a finished one, or one still running
        elsewhere (waited for, so no architecture is trained twice).

        Lower-numbered running trials are waited for, including, briefly, one that has not set its
        `arch_hash` yet (it may be the same architecture); one whose process died is failed as
        stale meanwhile, which ends the wait.
        """
        start = time.monotonic()
        while True:
            trials = trial.study.get_trials(deepcopy=False)
            mine = self._fidelity_key(trial.user_attrs)
            same = [
                t
                for t in trials
                if t.number != trial.number
                and t.user_attrs.get("arch_hash") == digest
                and "duplicate_of" not in t.user_attrs
                and self._fidelity_key(t.user_attrs) == mine
            ]
            done = [t for t in same if t.state == TrialState.COMPLETE]
            if done:
                return min(done, key=lambda t: t.number)
            same_numbers = {t.number for t in same}
            hashless = time.monotonic() - start < _HASHLESS_WAIT_S
            ahead = [
                t
                for t in trials
                if t.state == TrialState.RUNNING
                and t.number < trial.number
                and (t.number in same_numbers or (hashless and "arch_hash" not in t.user_attrs))
            ]
            if not ahead:
                return None
            time.sleep(_DUPLICATE_POLL_S)
            fail_stale_trials(trial.study, self.tracker.end_stale)

    def _fidelity_key(self, attrs: dict[str, Any]) -> tuple[object, ...]:
        """What must match besides the architecture for one result to stand for another."""
        f = fidelity_of(attrs, self.proxy.config.train.epochs)
        return f.confirmed, f.epochs, attrs.get(SEED)

    def _reuse(
        self, trial: optuna.Trial, original: optuna.trial.FrozenTrial, run_id: str
    ) -> tuple[float, float]:
        keep = {k: v for k, v in original.user_attrs.items() if k not in _NOT_INHERITED}
        for k, v in keep.items():
            trial.set_user_attr(k, v)
        trial.set_user_attr("duplicate_of", original.number)
        for key, value in (original.constraints or {}).items():
            trial.set_constraint(key, value)
        self.tracker.set_tags(run_id, {"duplicate_of": original.number})
        self.tracker.log_metrics(run_id, _numbers(keep))
        self.tracker.log_params(run_id, _names(keep))
        log.info(
            "trial %d repeats trial %d's architecture; reusing its result",
            trial.number,
            original.number,
        )
        return tuple(original.values)  # type: ignore[return-value]


def trial_architecture(space: SearchSpace, trial: optuna.Trial) -> Architecture:
    """The trial's architecture: its baseline's (user attr `baseline`, a shipped fixed space),
    else sampled from `space` through the trial (a trial that already holds the parameters gets
    them back)."""
    source = _source_trial(trial)
    if source is not None:
        return SearchSpace.from_dict(
            source.user_attrs["arch"], source=f"trial {source.number}"
        ).sample()
    baseline = trial.user_attrs.get("baseline")
    if baseline:
        return load_architecture(baseline)
    return space.sample(OptunaSampler(trial))


def _source_trial(trial: optuna.Trial) -> optuna.trial.FrozenTrial | None:
    """The trial a promotion continues or a confirmation retrains (None for a fresh one)."""
    number = trial.user_attrs.get(RESUMES, trial.user_attrs.get(CONFIRM_OF))
    if number is None:
        return None
    return trial.study.get_trials(deepcopy=False)[int(number)]


def _is_cost(key: str) -> bool:
    """A user attr `ProxyTask.cost` wrote (what a promotion or confirmation copies)."""
    return key.startswith("latency_") or key in ("gflops", "mparams")


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """The numeric values, as MLflow metrics (flags as 0/1; the tracker drops non-finite ones)."""
    return {k: float(v) for k, v in values.items() if isinstance(v, int | float)}


def _names(values: dict[str, Any]) -> dict[str, str]:
    """The string values, as MLflow params (the architecture's own are logged apart)."""
    return {k: v for k, v in values.items() if isinstance(v, str) and k not in _NOT_PARAMS}


def _flatten(arch: Architecture) -> dict[str, Any]:
    """Architecture as flat MLflow params (`N3.fuse`, `width`, ...)."""
    flat: dict[str, Any] = {
        "arch.name": arch.name,
        "arch.width": arch.width,
        "arch.repeat": arch.repeat,
        "arch.inputs": ",".join(f"P{x}" for x in arch.inputs),
        "arch.outputs": ",".join(f"P{x}" for x in arch.out_levels),
    }
    for n in arch.pruned().nodes:
        flat[f"arch.{n.name}"] = (
            f"P{n.level}<-{'+'.join(n.inputs)} {n.fuse} {n.block}x{n.depth} w{n.width}"
        )
    return flat


def _reason(e: BaseException) -> str:
    """A short, useful failure reason (out of memory and divergence named as such)."""
    import torch

    if isinstance(e, KeyboardInterrupt):
        return "interrupted"
    if isinstance(e, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(e).lower():
        return f"out of memory: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}"
    from nas_neck.detect.trainer import TrainingDiverged

    if isinstance(e, TrainingDiverged):
        return f"diverged: {e}"
    return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
