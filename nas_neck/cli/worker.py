"""`nas-neck worker`: join a stored study from any machine and run its trials."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.markup import escape

from nas_neck.cli import checks
from nas_neck.cli import options as opt
from nas_neck.cli.console import console, friendly
from nas_neck.search.settings import SearchSettings

if TYPE_CHECKING:  # optuna loads when the worker runs, not for --help
    import optuna


@friendly
def worker(
    study: str = typer.Option(..., help="Study to join, as `nas-neck search --study` named it."),
    storage: Annotated[str, checks.STORAGE] = typer.Option(
        ..., help="Its storage: journal:PATH on a shared disk, or postgresql://..."
    ),
    trials: Annotated[int | None, checks.like(SearchSettings, "trials")] = typer.Option(
        None, help="Trials to finish in total, across all workers (default: the study's --trials)."
    ),
    tracking_uri: str | None = typer.Option(
        None,
        help="MLflow tracking URI, if this machine reaches the server by another address (default: the study's).",
    ),
    artifacts: opt.Artifacts = None,
) -> None:
    """Run trials of a search started by `nas-neck search`, until N are finished or running across
    all workers; start any number, on any machines that share the storage and paths."""
    from nas_neck.search.study import finished_count, load_existing_study
    from nas_neck.search.tracking import check_reachable
    from nas_neck.search.worker import run_worker

    # Before the data and backbone load: a server that does not answer would stall for minutes.
    stored = load_existing_study(study, storage).user_attrs.get("settings", {})
    uri = tracking_uri or stored.get("tracking_uri")
    if uri:
        check_reachable(uri)

    signal.signal(signal.SIGTERM, _interrupt)  # a batch scheduler's SIGTERM ends the trial cleanly
    ran: list[int] = []

    def on_trial_end(study_: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        ran.append(trial.number)
        console.print(_trial_line(trial, study_.metric_names or []), highlight=False)

    try:
        study_ = run_worker(
            study, storage, trials, tracking_uri, on_trial_end=on_trial_end, artifacts=artifacts
        )
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted[/]: this worker's unfinished trial does not count; the others go on."
        )
        raise typer.Exit(130) from None
    target = trials if trials is not None else study_.user_attrs["settings"]["trials"]
    console.print(
        f"worker ran {len(ran)} trial(s); study [bold]{study}[/] has {finished_count(study_)} of {target} finished"
    )


def _trial_line(trial: optuna.trial.FrozenTrial, names: list[str]) -> str:
    import optuna

    a = trial.user_attrs
    head = f"trial {trial.number} [bold]{trial.state.name}[/]"
    if trial.state != optuna.trial.TrialState.COMPLETE:
        return f"{head}: {escape(str(a.get('fail_reason', 'interrupted')))}"
    values = "  ".join(f"{n} {v:.4g}" for n, v in zip(names, trial.values or [], strict=False))
    note = f" (duplicate of {a['duplicate_of']})" if "duplicate_of" in a else ""
    if "promotes" in a:
        note += f" [rung {a['rung']}: {a['epochs']} epochs, continues trial {a['resumes']}]"
    elif a.get("role") == "confirm":
        note += f" [confirms trial {a['confirm_of']}: seed {a['seed']}, {a['epochs']} epochs]"
    return f"{head}  {values}  {a.get('arch_hash', '')} {escape(str(a.get('summary', '')))}{note}"


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt
