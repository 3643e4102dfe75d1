"""`nas-neck confirm`: retrain the top of a study's front and its baselines with several seeds."""

from __future__ import annotations

from typing import Annotated

import typer

from nas_neck.cli import checks
from nas_neck.cli import options as opt
from nas_neck.cli.console import console, friendly
from nas_neck.search.defaults import DEFAULT_STORAGE
from nas_neck.search.settings import SearchSettings

_S = SearchSettings()


@friendly
def confirm(
    study: str = typer.Option(..., "--study", help="Study made by `nas-neck search`."),
    storage: opt.Storage = DEFAULT_STORAGE,
    top: Annotated[int, checks.at_least(0)] = typer.Option(
        3,
        "--top",
        help="How many candidates of the final front to confirm (the baselines come on top; "
        "0: the baselines only).",
    ),
    epochs: Annotated[int, checks.like(SearchSettings, "confirm_epochs")] = typer.Option(
        _S.confirm_epochs, help="Epochs of each confirmation run (from scratch)."
    ),
    seeds: Annotated[int, checks.like(SearchSettings, "confirm_seeds")] = typer.Option(
        _S.confirm_seeds, help="Training seeds per architecture."
    ),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow tracking URI, if not the study's own."
    ),
    artifacts: opt.Artifacts = None,
) -> None:
    """Retrain the top K of a study's final front and its baselines from scratch, longer and with
    several seeds; report mean ± sd and draw the confirmed front (a rerun resumes)."""
    from nas_neck.cli.pareto import confirmed_table, front_table
    from nas_neck.cli.search import print_where_to_look
    from nas_neck.dsl import SearchSpace
    from nas_neck.proxy import ProxyTask
    from nas_neck.search.objective import Objective
    from nas_neck.search.progress import SearchProgress
    from nas_neck.search.session import join_study, trial_function
    from nas_neck.search.study import load_existing_study
    from nas_neck.search.tracking import check_reachable

    stored = load_existing_study(study, storage).user_attrs.get("settings", {})
    uri = tracking_uri or stored.get("tracking_uri")
    if uri:
        check_reachable(uri)
    session, proxy_config = join_study(study, storage, tracking_uri, artifacts=artifacts)
    settings = session.settings
    proxy = ProxyTask(proxy_config)
    try:
        with SearchProgress(console, None, epochs) as progress:
            objective = Objective.for_search(
                settings,
                SearchSpace.load(settings.space),
                proxy,
                session.tracker,
                session.parent,
                progress.hooks,
            )
            with session.interruptible():
                run = trial_function(objective)
                session.confirm(
                    lambda: session.drain(run, progress.on_trial_end), top, epochs, seeds
                )
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: finished runs are saved; rerun to resume.")
        raise typer.Exit(130) from None
    report = session.finish(ended=True)
    console.print(confirmed_table(session.study))
    console.print(front_table(session.study))
    if report is not None:
        console.print(
            f"wrote {report.png}\n      {report.html}\n      {report.csv}", highlight=False
        )
    print_where_to_look(study, storage, session.tracker.uri)
