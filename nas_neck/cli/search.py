"""`nas-neck search`: the multi-objective search, in this process or as Ray Tune trials."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from nas_neck.cli import checks
from nas_neck.cli import options as opt
from nas_neck.cli.console import console, friendly
from nas_neck.config import ProxyConfig
from nas_neck.errors import NasNeckError
from nas_neck.metrics import ACCURACY_METRICS, COST_METRICS
from nas_neck.search.defaults import SAMPLERS
from nas_neck.search.settings import SearchSettings, baseline_names

if TYPE_CHECKING:  # optuna, mlflow and torch load when the search runs, not for --help
    import optuna

_S = SearchSettings()  # the defaults of every search option
BACKENDS = ("local", "ray")
_RAY_ONLY = ("ray_address", "cpus_per_trial", "gpus_per_trial", "max_concurrent")
UNLIMITED = 1_000_000  # --trials with --budget-minutes and no --trials: the budget decides


def _objectives(option: str, value: str) -> None:
    from nas_neck.search.study import Objectives

    Objectives.parse(value)  # its error names --objectives


def _rungs(option: str, value: str | None) -> None:
    from nas_neck.search.rungs import Rungs

    if value is not None:
        Rungs.parse(value)  # its error names --rungs


def _baselines(option: str, value: str) -> None:
    known = baseline_names()
    for name in (b.strip() for b in value.split(",")):
        if name and name not in known:
            raise checks.OptionError(
                option, f"some of {', '.join(known)} (comma-separated; '' for none)", name
            )


@friendly
def search(
    ctx: typer.Context,
    space: str = typer.Option(
        str(_S.space),
        help="Search space: a YAML file or a shipped name (nas-neck spaces lists them).",
    ),
    trials: Annotated[int, checks.like(SearchSettings, "trials")] = typer.Option(
        _S.trials,
        help="Candidates to finish (baselines included; promotions and confirmation runs come on "
        "top); rerunning resumes. With --budget-minutes the default is no limit.",
    ),
    objectives: Annotated[str, checks.Rule(_objectives)] = typer.Option(
        f"{_S.accuracy},{_S.cost}",
        help=f"ACCURACY,COST: {'|'.join(ACCURACY_METRICS)} and {'|'.join(COST_METRICS)}.",
    ),
    max_latency_ms: Annotated[float | None, checks.POSITIVE] = typer.Option(
        None, help="Latency budget of the neck: slower candidates are infeasible, never trained."
    ),
    sampler: Annotated[str, checks.OneOf(SAMPLERS)] = typer.Option(
        _S.sampler, help=" | ".join(SAMPLERS) + "."
    ),
    study: str | None = typer.Option(None, help="Study name (default: the space's name)."),
    storage: opt.Storage = _S.storage,
    tracking_uri: opt.TrackingUri = _S.tracking_uri,
    artifacts: opt.Artifacts = None,
    baselines: Annotated[str, checks.Rule(_baselines)] = typer.Option(
        ",".join(_S.baselines),
        help="Shipped fixed architectures evaluated with the same budget ('' for none).",
    ),
    rungs: Annotated[str | None, checks.Rule(_rungs)] = typer.Option(
        None,
        help="Multi-fidelity search: epochs of each rung, e.g. 1,3,9; candidates train the first "
        "rung's epochs and the best 1/eta of a rung (by Pareto rank) continue to the next.",
    ),
    eta: Annotated[int, checks.like(SearchSettings, "eta")] = typer.Option(
        _S.eta, help="With --rungs: reduction factor (the best 1/eta of a rung are promoted)."
    ),
    budget_minutes: Annotated[float | None, checks.POSITIVE] = typer.Option(
        None,
        help="Wall-clock budget of the search (confirmation not included): work that would not "
        "fit is not started; the search then reports.",
    ),
    confirm: Annotated[int, checks.like(SearchSettings, "confirm")] = typer.Option(
        _S.confirm,
        help="At the end, retrain the top K of the front and the baselines from scratch "
        "(--confirm-epochs, --confirm-seeds) and report mean ± sd; 0: no confirmation.",
    ),
    confirm_epochs: Annotated[int, checks.like(SearchSettings, "confirm_epochs")] = typer.Option(
        _S.confirm_epochs, help="With --confirm: epochs of each confirmation run."
    ),
    confirm_seeds: Annotated[int, checks.like(SearchSettings, "confirm_seeds")] = typer.Option(
        _S.confirm_seeds, help="With --confirm: training seeds per architecture."
    ),
    screen: Annotated[int, checks.like(SearchSettings, "screen")] = typer.Option(
        _S.screen,
        help="Screening: the sampler proposes N candidates for each one trained, and the best by "
        "--screen-signal is trained (1: no screening).",
    ),
    screen_signal: str = typer.Option(
        _S.screen_signal,
        help="With --screen: a zero-cost proxy (e.g. zico, synflow, params) or surrogate (fit on "
        "the study's finished trials; #params until 8 exist); docs/screening.md lists them.",
    ),
    out: Path = typer.Option(_S.out_dir, help="Folder for checkpoints and plots."),
    data: opt.Data = None,
    val_data: opt.ValData = None,
    images: opt.Images = None,
    input_size: opt.InputSize = opt.PROXY.input_size,
    backbone: opt.Backbone = opt.PROXY.backbone,
    backbone_weights: opt.BackboneWeights = opt.PROXY.backbone_weights,
    epochs: opt.Epochs = None,
    batch_size: opt.BatchSize = None,
    seed: opt.Seed = opt.PROXY.train.seed,
    threads: opt.Threads = None,
    cache_dir: opt.CacheDir = None,
    precision: opt.Precision = opt.PROXY.train.precision,
    latency_target: opt.LatencyTarget = opt.PROXY.latency_target,
    latency_scope: opt.LatencyScope = opt.PROXY.latency_scope,
    backend: Annotated[str, checks.OneOf(BACKENDS)] = typer.Option(
        "local", help="local (this process) or ray (Ray Tune trials on a Ray cluster)."
    ),
    ray_address: str | None = typer.Option(
        None, help="Ray cluster to join (auto | HOST:PORT); default: start a local Ray instance."
    ),
    cpus_per_trial: Annotated[int, checks.at_least(1)] = typer.Option(
        1, help="With --backend ray: CPUs (and torch threads) per trial."
    ),
    gpus_per_trial: Annotated[float, checks.NON_NEGATIVE] = typer.Option(
        0.0, help="With --backend ray: GPUs per trial (fractions share a GPU)."
    ),
    max_concurrent: Annotated[int | None, checks.at_least(1)] = typer.Option(
        None, help="With --backend ray: trials at once (default: what the cluster fits)."
    ),
) -> None:
    """Multi-objective neck search (accuracy vs cost) with Optuna, tracked in MLflow; locally or on Ray."""
    from nas_neck.cli.pareto import confirmed_table, front_table
    from nas_neck.dsl import load_space
    from nas_neck.proxy import ProxyTask
    from nas_neck.search.probe import check_ray_address
    from nas_neck.search.progress import SearchProgress
    from nas_neck.search.rungs import Rungs
    from nas_neck.search.runner import run_search
    from nas_neck.search.study import make_storage
    from nas_neck.search.tracking import check_reachable

    given = [n for n in _RAY_ONLY if not _default(ctx, n)]
    if backend != "ray" and given:
        names = ", ".join("--" + n.replace("_", "-") for n in given)
        raise NasNeckError(f"{names} only matter with --backend ray")
    if screen > 1:
        from nas_neck.screen import signals

        if screen_signal not in signals():
            raise checks.OptionError(
                "--screen-signal", f"one of {', '.join(signals())}", screen_signal
            )
    if rungs and epochs is not None:
        raise NasNeckError(
            "--epochs and --rungs: with --rungs a candidate trains the first rung's epochs"
        )
    if budget_minutes is not None and _default(ctx, "trials"):
        trials = UNLIMITED
    acc, _, cost = objectives.partition(",")
    settings = SearchSettings(
        space=space,
        study=study,
        storage=storage,
        tracking_uri=tracking_uri,
        artifacts=artifacts,
        trials=trials,
        accuracy=acc.strip(),
        cost=cost.strip(),
        max_latency_ms=max_latency_ms,
        sampler=sampler,
        seed=seed,
        baselines=[b.strip() for b in baselines.split(",") if b.strip()],
        out_dir=out,
        rungs=list(Rungs.parse(rungs, eta).epochs) if rungs else None,
        eta=eta,
        budget_minutes=budget_minutes,
        confirm=confirm,
        confirm_epochs=confirm_epochs,
        confirm_seeds=confirm_seeds,
        screen=screen,
        screen_signal=screen_signal,
    )
    load_space(space)
    config = opt.proxy_from(ctx.params)
    # Before the (slow) data set-up: servers that do not answer would stall for minutes.
    check_reachable(tracking_uri)
    make_storage(storage)  # a missing driver or a dead database server: one line, now
    if backend == "ray":
        check_ray_address(ray_address)
    try:
        if backend == "ray":
            study_ = _ray_search(
                settings, config, ray_address, cpus_per_trial, gpus_per_trial, max_concurrent
            )
        else:
            proxy = ProxyTask(config)
            total = None if settings.trials == UNLIMITED else settings.trials
            first = settings.rungs[0] if settings.rungs else config.train.epochs
            with SearchProgress(console, total, first) as progress:
                study_ = run_search(settings, proxy, progress.hooks, progress.on_trial_end)
    except KeyboardInterrupt:  # the progress display has stopped (its `with` ended)
        console.print(
            "[yellow]interrupted[/]: finished trials are saved; rerun the same command to resume."
        )
        raise typer.Exit(130) from None
    console.print(front_table(study_))
    if confirm:
        console.print(confirmed_table(study_))
    print_where_to_look(study_.study_name, storage, tracking_uri)


def print_where_to_look(study: str, storage: str, tracking_uri: str) -> None:
    """Where to look after a search: the study's MLflow runs page (and, for a local store, the
    `mlflow ui` command that serves it) and the optuna-dashboard command for its storage."""
    from rich.markup import escape

    from nas_neck.search.study import dashboard_command
    from nas_neck.search.tracking import study_page, ui_command

    lines = [f"study [bold]{escape(study)}[/] in {escape(storage)}"]
    page, serve = study_page(tracking_uri, study), ui_command(tracking_uri)
    if serve is not None:
        lines.append(f"MLflow:  {escape(serve)}")
        if page is not None:
            lines.append(f"         then open {escape(page)}")
    elif page is not None:
        lines.append(f"MLflow:  {escape(page)}")
    lines.append(f"Optuna:  {escape(dashboard_command(storage))}")
    console.print("\n".join(lines), highlight=False, soft_wrap=True)


def _default(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was left at its default."""
    return getattr(ctx.get_parameter_source(name), "name", "") == "DEFAULT"


def _ray_search(
    settings: SearchSettings,
    proxy_config: ProxyConfig,
    ray_address: str | None,
    cpus_per_trial: int,
    gpus_per_trial: float,
    max_concurrent: int | None,
) -> optuna.Study:
    """`--backend ray`: the search as Ray Tune trials, with a progress bar (Ctrl-C propagates:
    the study keeps every finished trial; rerunning resumes)."""
    from nas_neck.search.progress import SearchProgress
    from nas_neck.search.ray_backend import run_ray_search

    logging.getLogger("ray.tune").setLevel(logging.WARNING)  # the progress bar says enough
    where = f"the Ray cluster at {ray_address}" if ray_address else "a local Ray instance"
    console.print(
        f"running trials on {where}: {cpus_per_trial} CPU(s), {gpus_per_trial:g} GPU(s) each"
    )
    total = None if settings.trials == UNLIMITED else settings.trials
    with SearchProgress(console, total) as progress:
        return run_ray_search(
            settings,
            proxy_config,
            ray_address,
            cpus_per_trial,
            gpus_per_trial,
            max_concurrent,
            on_trial_end=progress.count,
        )
