"""The `nas-neck` command line: data, show, train, search, worker, pareto, export."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from nas_neck import cli_options as opt
from nas_neck.console import console, friendly, setup_logging
from nas_neck.data.cli import app as data_app
from nas_neck.dsl import Architecture, load_architecture, load_space
from nas_neck.errors import NasNeckError

app = typer.Typer(
    name="nas-neck",
    help="Search detection-neck architectures (FPN / PAN / BiFPN / NAS-FPN) for small, dense objects.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


app.add_typer(data_app, name="data", help="Synthetic plates, dataset checks, AGAR conversion.")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    """nas-neck command line."""
    setup_logging(verbose)


@app.command()
@friendly
def show(
    path: Path | None = typer.Argument(None, help="A search space or architecture YAML file."),
    input_size: int = typer.Option(512, help="Square input size for FLOPs."),
    backbone: str = typer.Option(
        "tf_efficientnet_lite0", help="timm backbone giving the input channels."
    ),
    sample: int = typer.Option(0, help="Sample this many architectures from the space."),
    seed: int = typer.Option(0, help="Seed of the first sample (sample i uses seed + i)."),
    study: str | None = typer.Option(None, help="Show a trial of this study instead of a file."),
    trial: int | None = typer.Option(None, help="Trial number (with --study)."),
    storage: str = typer.Option("sqlite:///nas.db", help="Optuna storage URL, or journal:PATH."),
    plot: Path | None = typer.Option(None, help="Write the architecture diagram (PNG) here."),
) -> None:
    """Show an architecture (nodes, params, FLOPs) or a space (its parameters, or --sample K);
    with --study/--trial, a searched trial's architecture."""
    if study is not None:
        if trial is None:
            raise NasNeckError("--study needs --trial N")
        from nas_neck.cli_pareto import show_trial

        show_trial(study, storage, trial, plot)
        return
    if path is None:
        raise NasNeckError("give a space or architecture file, or --study NAME --trial N")
    space = load_space(path)
    channels = _backbone_channels(backbone, space.inputs)
    if space.is_fixed and not sample:
        arch = space.sample()
        console.print(_node_table(arch))
        params, flops = _cost(arch, channels, input_size)
        if plot is not None:
            from nas_neck.archplot import plot_architecture

            console.print(f"diagram: {plot_architecture(arch, plot)}")
        console.print(
            f"hash [bold]{arch.hash}[/]  params {params / 1e6:.3f} M  "
            f"FLOPs {flops / 1e9:.3f} G at {input_size}x{input_size} (2 FLOPs per multiply-add)  "
            f"backbone {backbone} channels {channels}"
        )
        return
    if not sample:
        table = Table(title=f"{space.name}: {len(space.parameters())} searchable parameters")
        table.add_column("parameter")
        table.add_column("domain")
        for p in space.parameters():
            table.add_row(p.name, p.domain.describe())
        console.print(table)
        console.print("Use [bold]--sample K[/] to draw K architectures.")
        return
    table = Table(title=f"{sample} samples of {space.name} (seeds {seed}..{seed + sample - 1})")
    for col in ("seed", "hash", "params (M)", f"GFLOPs @{input_size}", "architecture"):
        table.add_column(col, justify="right" if col[0] in "pG" else "left")
    for i in range(sample):
        arch = space.random(seed + i)
        params, flops = _cost(arch, channels, input_size)
        table.add_row(
            str(seed + i), arch.hash, f"{params / 1e6:.3f}", f"{flops / 1e9:.3f}", arch.short()
        )
    console.print(table)


def _backbone_channels(name: str, levels: tuple[int, ...]) -> list[int]:
    """Channels of a timm backbone's maps at `levels` (random weights: only shapes are needed)."""
    import logging

    from nas_neck.backbone import FrozenBackbone

    quiet = logging.getLogger("nas_neck.backbone")
    level, quiet.level = quiet.level, logging.ERROR
    try:
        return FrozenBackbone(name, levels=levels, weights="random").channels
    finally:
        quiet.setLevel(level)


def _node_table(arch: Architecture) -> Table:
    pruned = {n.name for n in arch.pruned().nodes}
    title = f"{arch.name}: inputs {'/'.join(f'P{x}' for x in arch.inputs)}"
    if arch.extra_levels:
        title += (
            f" + extra {'/'.join(f'P{x}' for x in arch.extra_levels)} ({arch.extra_downsample})"
        )
    if arch.repeat > 1:
        title += f", cell x{arch.repeat}"
    table = Table(title=title)
    for col in ("node", "level", "inputs", "fuse", "block", "depth", "width", "output"):
        table.add_column(col)
    for n in arch.nodes:
        ins = []
        for r in n.inputs:
            d = arch.level_of(r) - n.level
            ins.append(r + ("↑" * d if d > 0 else "↓" * -d))
        name = n.name if n.name in pruned else f"[dim]{n.name} (unused)[/]"
        table.add_row(
            name,
            f"P{n.level}",
            ", ".join(ins),
            n.fuse,
            n.block,
            str(n.depth),
            str(n.width),
            "yes" if n.output else "",
        )
    return table


def _cost(arch: Architecture, channels: list[int], size: int) -> tuple[int, int]:
    from nas_neck.measure import count_flops, count_params, feature_inputs
    from nas_neck.neck import GraphNeck

    neck = GraphNeck(arch, channels)
    inputs = feature_inputs(channels, [2**lvl for lvl in arch.inputs], size)
    return count_params(neck), count_flops(neck, (inputs,))


@app.command("train")
@friendly
def train_cmd(
    arch: Path = typer.Option(..., help="Architecture YAML (e.g. search_spaces/pafpn.yaml)."),
    out: Path = typer.Option(
        Path("runs/train"), help="Output folder: checkpoint.pt and metrics.json."
    ),
    data: opt.Data = None,
    val_data: opt.ValData = None,
    images: opt.Images = None,
    input_size: opt.InputSize = 256,
    backbone: opt.Backbone = "tf_efficientnet_lite0",
    backbone_weights: opt.BackboneWeights = "auto",
    epochs: opt.Epochs = None,
    batch_size: opt.BatchSize = None,
    seed: opt.Seed = 0,
    threads: opt.Threads = None,
    cache_dir: opt.CacheDir = None,
) -> None:
    """Train one architecture with the proxy recipe; print metrics and latency."""
    import json

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from nas_neck.proxy import ProxyTask

    architecture = load_architecture(arch)
    config = opt.proxy_config(
        data,
        val_data,
        images,
        input_size,
        backbone,
        backbone_weights,
        epochs,
        batch_size,
        seed,
        threads,
        cache_dir,
    )
    proxy = ProxyTask(config)
    proxy.caches(architecture.inputs)
    cost = proxy.cost(architecture)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"training {architecture.name}", total=config.train.epochs)
        outcome = proxy.run(
            architecture,
            on_epoch=lambda e, n, loss: progress.update(
                task, completed=e, description=f"training {architecture.name}  loss {loss:.3f}"
            ),
        )
    out.mkdir(parents=True, exist_ok=True)
    ckpt = proxy.save(outcome, out / "checkpoint.pt")
    result = {
        "arch": architecture.name,
        "hash": architecture.hash,
        **outcome.metrics,
        **cost,
        **outcome.timings,
        "losses": outcome.losses,
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    table = Table(title=f"{architecture.name} [{architecture.hash}] on {proxy.val_ann}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in ("map", "ap50", "ap75", "ap_small", "ap_medium", "ap_large", "count_mae"):
        table.add_row(k, f"{outcome.metrics[k]:.4f}")
    table.add_row(
        "neck latency (ms)", f"{cost['latency_ms']:.2f} @ {cost['latency_threads']} threads"
    )
    table.add_row("neck+head latency (ms)", f"{cost['latency_head_ms']:.2f}")
    table.add_row("neck GFLOPs (2/MAC)", f"{cost['gflops']:.3f}")
    table.add_row("neck params (M)", f"{cost['mparams']:.3f}")
    table.add_row(
        "train / eval (s)", f"{outcome.timings['train_s']:.1f} / {outcome.timings['eval_s']:.1f}"
    )
    console.print(table)
    console.print(f"checkpoint: {ckpt}\nmetrics:    {out / 'metrics.json'}")


@app.command()
@friendly
def search(
    space: Path = typer.Option(Path("search_spaces/pafpn-family.yaml"), help="Search space YAML."),
    trials: int = typer.Option(8, help="Trials to finish (baselines included); rerunning resumes."),
    objectives: str = typer.Option(
        "map,latency", help="ACCURACY,COST: map|ap50|ap75|ap_small|... and latency|flops|params."
    ),
    max_latency_ms: float | None = typer.Option(
        None, help="Latency budget of the neck: slower candidates are infeasible, never trained."
    ),
    sampler: str = typer.Option("tpe", help="tpe | nsga2 | random | gp."),
    study: str | None = typer.Option(None, help="Study name (default: the space's name)."),
    storage: str = typer.Option(
        "sqlite:///nas.db", help="Optuna storage URL, or journal:PATH for many workers."
    ),
    tracking_uri: str = typer.Option(
        "sqlite:///mlflow.db", help="MLflow tracking URI (a server URL on a cluster)."
    ),
    baselines: str = typer.Option(
        "fpn,pafpn,bifpn", help="Classic necks evaluated with the same budget ('' for none)."
    ),
    out: Path = typer.Option(Path("runs"), help="Folder for checkpoints and plots."),
    data: opt.Data = None,
    val_data: opt.ValData = None,
    images: opt.Images = None,
    input_size: opt.InputSize = 256,
    backbone: opt.Backbone = "tf_efficientnet_lite0",
    backbone_weights: opt.BackboneWeights = "auto",
    epochs: opt.Epochs = None,
    batch_size: opt.BatchSize = None,
    seed: opt.Seed = 0,
    threads: opt.Threads = None,
    cache_dir: opt.CacheDir = None,
    backend: str = typer.Option(
        "local", help="local (this process) or ray (Ray Tune trials on a Ray cluster)."
    ),
    ray_address: str | None = typer.Option(
        None, help="Ray cluster to join (auto | HOST:PORT); default: start a local Ray instance."
    ),
    cpus_per_trial: int = typer.Option(
        1, help="With --backend ray: CPUs (and torch threads) per trial."
    ),
    gpus_per_trial: float = typer.Option(
        0.0, help="With --backend ray: GPUs per trial (fractions share a GPU)."
    ),
    max_concurrent: int | None = typer.Option(
        None, help="With --backend ray: trials at once (default: what the cluster fits)."
    ),
) -> None:
    """Multi-objective neck search (accuracy vs cost) with Optuna, tracked in MLflow; locally or on Ray."""
    from nas_neck.proxy import ProxyTask
    from nas_neck.search.progress import SearchProgress
    from nas_neck.search.runner import SearchSettings, run_search

    acc, _, cost = objectives.partition(",")
    settings = SearchSettings(
        space=space,
        study=study,
        storage=storage,
        tracking_uri=tracking_uri,
        trials=trials,
        accuracy=acc.strip(),
        cost=cost.strip(),
        max_latency_ms=max_latency_ms,
        sampler=sampler,
        seed=seed,
        baselines=[b.strip() for b in baselines.split(",") if b.strip()],
        out_dir=out,
    )
    _ = settings.objectives  # validates --objectives before the (slow) data set-up
    load_space(space)
    config = opt.proxy_config(
        data,
        val_data,
        images,
        input_size,
        backbone,
        backbone_weights,
        epochs,
        batch_size,
        seed,
        threads,
        cache_dir,
    )
    if backend not in ("local", "ray"):
        raise NasNeckError(f"--backend: expected local or ray, got {backend!r}")
    if backend == "ray":
        from nas_neck.cli_distributed import ray_search

        study_ = ray_search(
            settings, config, ray_address, cpus_per_trial, gpus_per_trial, max_concurrent
        )
    else:
        proxy = ProxyTask(config)
        with SearchProgress(console, settings.trials, config.train.epochs) as progress:
            try:
                study_ = run_search(settings, proxy, progress.hooks, progress.on_trial_end)
            except KeyboardInterrupt:
                progress.stop()
                console.print(
                    "[yellow]interrupted[/]: finished trials are saved; rerun the same command to resume."
                )
                raise typer.Exit(130) from None
    from nas_neck.search.report import front_table

    console.print(front_table(study_, settings.objectives))
    console.print(
        f"study [bold]{study_.study_name}[/] in {storage}; MLflow: mlflow ui --backend-store-uri {tracking_uri}"
    )


from nas_neck.cli_pareto import pareto  # noqa: E402

app.command()(pareto)


from nas_neck.cli_export import export  # noqa: E402

app.command()(export)


from nas_neck.cli_distributed import worker  # noqa: E402

app.command()(worker)
