"""`nas-neck worker` (join a stored study from any machine) and the Ray Tune backend of
`nas-neck search --backend ray`; `worker` is registered on the app in `nas_neck.cli`."""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, NoReturn

import optuna
import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from nas_neck.console import console, friendly

if TYPE_CHECKING:
    from nas_neck.proxy import ProxyConfig
    from nas_neck.search.runner import SearchSettings


@friendly
def worker(
    study: str = typer.Option(..., help="Study to join, as `nas-neck search --study` named it."),
    storage: str = typer.Option(
        ..., help="Its storage: journal:PATH on a shared disk, or postgresql://..."
    ),
    trials: int | None = typer.Option(
        None, help="Trials to finish in total, across all workers (default: the study's --trials)."
    ),
    tracking_uri: str | None = typer.Option(
        None,
        help="MLflow tracking URI, if this machine reaches the server by another address (default: the study's).",
    ),
) -> None:
    """Run trials of a search started by `nas-neck search`, until N are finished or running across
    all workers; start any number, on any machines that share the storage and paths."""
    from nas_neck.search.study import finished_count
    from nas_neck.search.worker import run_worker

    signal.signal(signal.SIGTERM, _interrupt)  # a batch scheduler's SIGTERM ends the trial cleanly
    ran: list[int] = []

    def on_trial_end(study_: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        ran.append(trial.number)
        console.print(_trial_line(trial, study_.metric_names or []), highlight=False)

    try:
        study_ = run_worker(study, storage, trials, tracking_uri, on_trial_end=on_trial_end)
    except KeyboardInterrupt:
        console.print(
            "[yellow]interrupted[/]: this worker's unfinished trial does not count; the others go on."
        )
        raise typer.Exit(130) from None
    target = trials if trials is not None else study_.user_attrs["settings"]["trials"]
    console.print(
        f"worker ran {len(ran)} trial(s); study [bold]{study}[/] has {finished_count(study_)} of {target} finished"
    )


def ray_search(
    settings: SearchSettings,
    proxy_config: ProxyConfig,
    ray_address: str | None,
    cpus_per_trial: int,
    gpus_per_trial: float,
    max_concurrent: int | None,
) -> optuna.Study:
    """`nas-neck search --backend ray`: the search as Ray Tune trials, with a progress bar;
    exits 130 on Ctrl-C (the study keeps every finished trial; rerunning resumes)."""
    from nas_neck.search.ray_backend import run_ray_search
    from nas_neck.search.study import finished_count

    logging.getLogger("ray.tune").setLevel(logging.WARNING)  # the progress bar says enough
    where = f"the Ray cluster at {ray_address}" if ray_address else "a local Ray instance"
    console.print(
        f"running trials on {where}: {cpus_per_trial} CPU(s), {gpus_per_trial:g} GPU(s) each"
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("trials", total=settings.trials)
        try:
            return run_ray_search(
                settings,
                proxy_config,
                ray_address,
                cpus_per_trial,
                gpus_per_trial,
                max_concurrent,
                on_trial_end=lambda study: progress.update(task, completed=finished_count(study)),
            )
        except KeyboardInterrupt:
            progress.stop()
            console.print(
                "[yellow]interrupted[/]: finished trials are saved; rerun the same command to resume."
            )
            raise typer.Exit(130) from None


def _trial_line(trial: optuna.trial.FrozenTrial, names: list[str]) -> str:
    a = trial.user_attrs
    head = f"trial {trial.number} [bold]{trial.state.name}[/]"
    if trial.state != optuna.trial.TrialState.COMPLETE:
        return f"{head}: {escape(str(a.get('fail_reason', 'interrupted')))}"
    values = "  ".join(f"{n} {v:.4g}" for n, v in zip(names, trial.values or [], strict=False))
    note = f" (duplicate of {a['duplicate_of']})" if "duplicate_of" in a else ""
    return f"{head}  {values}  {a.get('arch_hash', '')} {escape(str(a.get('summary', '')))}{note}"


def _interrupt(signum: int, frame: object) -> NoReturn:
    raise KeyboardInterrupt
