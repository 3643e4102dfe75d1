"""Terminal progress of a search: candidates done / N with ETA (and how many promotions and
confirmation runs ran besides), and the current trial's epochs (when trials run in this
process)."""

from __future__ import annotations

from typing import Any

import optuna
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from nas_neck.dsl import Architecture
from nas_neck.fidelity import CONFIRM, PROMOTES, ROLE
from nas_neck.search.objective import Hooks
from nas_neck.search.study import counted, finished_count


class SearchProgress:
    """Context manager owning a rich Progress; hands out `hooks` and `on_trial_end` callbacks.

    Without `epochs` (trials run elsewhere, e.g. as Ray tasks) only the trials bar is shown.
    """

    def __init__(self, console: Console, trials: int | None, epochs: int | None = None) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
        )
        self._trials = self._progress.add_task("candidates", total=trials)
        self._epochs = (
            None if epochs is None else self._progress.add_task("  waiting", total=epochs)
        )
        self.hooks = Hooks(
            search_start=self._search_start, trial_start=self._trial_start, epoch=self._epoch
        )

    def __enter__(self) -> SearchProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def _search_start(self, finished: int) -> None:
        self._progress.update(self._trials, completed=finished)

    def _trial_start(self, number: int, arch: Architecture) -> None:
        if self._epochs is None:
            return
        self._progress.update(
            self._epochs, completed=0, description=f"  trial {number}: {arch.name} {arch.hash}"
        )

    def _epoch(self, epoch: int, total: int, loss: float) -> None:
        if self._epochs is None:
            return
        desc = self._progress.tasks[self._epochs].description.split("  loss")[0]
        self._progress.update(
            self._epochs, completed=epoch, total=total, description=f"{desc}  loss {loss:.3f}"
        )

    def on_trial_end(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.count(study)

    def count(self, study: optuna.Study) -> None:
        """Show the study's finished candidates (in every process) as done, and the other trials
        (promotions, confirmation runs) beside."""
        trials = study.get_trials(deepcopy=False)
        promoted = sum(PROMOTES in t.user_attrs and counted(t) for t in trials)
        confirms = sum(t.user_attrs.get(ROLE) == CONFIRM and counted(t) for t in trials)
        extra = [f"{promoted} promoted"] * bool(promoted) + [f"{confirms} confirm runs"] * bool(
            confirms
        )
        self._progress.update(
            self._trials,
            completed=finished_count(study),
            description="candidates" + (f" ({', '.join(extra)})" if extra else ""),
        )
