"""`nas-neck supernet train`: a weight-sharing supernet of a fixed-graph space (docs/supernet.md);
`nas-neck supernet eval`: random paths of a trained one scored with inherited weights."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from nas_neck.cli import checks
from nas_neck.cli import options as opt
from nas_neck.cli.console import console, friendly
from nas_neck.cli.usage import Group

app = typer.Typer(
    help="Weight-sharing supernet of a fixed-graph space: train it, score paths with inherited "
    "weights.",
    cls=Group,
    no_args_is_help=True,
    add_completion=False,
)

SAMPLERS = ("uniform", "fair")  # nas_neck.supernet.train.SAMPLERS, without importing torch here

Space = Annotated[
    str,
    typer.Option(
        help="Search space with fixed nodes and inputs: a YAML file or a shipped name "
        "(e.g. pafpn-family, bifpn-family; nas-neck spaces lists them)."
    ),
]


@app.command("train")
@friendly
def train(
    space: Space = "pafpn-family",
    epochs: Annotated[int, checks.at_least(1)] = typer.Option(
        20, help="Supernet training epochs in all (a resumed run trains the ones missing)."
    ),
    out: Path = typer.Option(
        Path("runs/supernet"), help="Output folder: supernet.pt (checkpoint) and losses.json."
    ),
    sampler: Annotated[str, checks.OneOf(SAMPLERS)] = typer.Option(
        "uniform",
        help="Path sampling: uniform (one random path per step) or fair (FairNAS: every "
        "choice once per k steps).",
    ),
    sandwich: bool = typer.Option(
        False,
        "--sandwich",
        help="Sandwich rule for widths: each step also trains the path at its largest and "
        "smallest widths.",
    ),
    resume: bool = typer.Option(
        True, "--resume/--no-resume", help="Continue the checkpoint in --out if there is one."
    ),
    tracking_uri: str | None = typer.Option(
        None, help="MLflow tracking URI: log the loss curve to a run there."
    ),
    data: opt.Data = None,
    val_data: opt.ValData = None,
    images: opt.Images = None,
    input_size: opt.InputSize = opt.PROXY.input_size,
    backbone: opt.Backbone = opt.PROXY.backbone,
    backbone_weights: opt.BackboneWeights = opt.PROXY.backbone_weights,
    batch_size: opt.BatchSize = None,
    seed: opt.Seed = opt.PROXY.train.seed,
    cache_dir: opt.CacheDir = None,
    precision: opt.Precision = opt.PROXY.train.precision,
) -> None:
    """Train the weight-sharing supernet of a space on the cached features, one path a step."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from nas_neck.dsl import load_space
    from nas_neck.supernet import check_space
    from nas_neck.supernet.train import train_supernet

    search_space = load_space(space)
    config = opt.proxy_config(
        data=data,
        val_data=val_data,
        images=images,
        input_size=input_size,
        backbone=backbone,
        backbone_weights=backbone_weights,
        epochs=None,
        batch_size=batch_size,
        seed=seed,
        threads=None,
        cache_dir=cache_dir,
        precision=precision,
        latency_target=opt.PROXY.latency_target,
        latency_scope=opt.PROXY.latency_scope,
    )
    check_space(search_space)  # before any data or backbone is loaded
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"supernet {search_space.name}", total=epochs)
        run = train_supernet(
            search_space,
            config,
            epochs=epochs,
            out=out,
            sampler=sampler,
            sandwich=sandwich,
            resume=resume,
            tracking_uri=tracking_uri,
            on_epoch=lambda e, n, loss: progress.update(
                task, completed=e, description=f"supernet {search_space.name}  loss {loss:.3f}"
            ),
        )
    table = Table(title=f"supernet of {search_space.name}")
    table.add_column("epoch", justify="right")
    table.add_column("loss", justify="right")
    for i, loss in enumerate(run.losses):
        table.add_row(str(i + 1), f"{loss:.4f}")
    console.print(table)
    console.print(
        f"{run.steps} steps in {run.precision}; checkpoint: {run.checkpoint}\n"
        f"loss curve: {out / 'losses.json'}"
    )


@app.command("eval")
@friendly
def evaluate(
    checkpoint: Path = typer.Option(
        Path("runs/supernet"), help="A supernet checkpoint (supernet.pt) or its folder."
    ),
    paths: Annotated[int, checks.at_least(1)] = typer.Option(
        10, help="Random paths of the space to score."
    ),
    calib_batches: Annotated[int, checks.at_least(1)] = typer.Option(
        2, help="Training batches (of 16) for BatchNorm recalibration."
    ),
    data: opt.Data = None,
    val_data: opt.ValData = None,
    images: opt.Images = None,
    input_size: opt.InputSize = opt.PROXY.input_size,
    backbone: opt.Backbone = opt.PROXY.backbone,
    backbone_weights: opt.BackboneWeights = opt.PROXY.backbone_weights,
    seed: opt.Seed = opt.PROXY.train.seed,
    cache_dir: opt.CacheDir = None,
) -> None:
    """Score random paths of a trained supernet: inherited weights, recalibrated BatchNorm."""
    from nas_neck.proxy import ProxyTask
    from nas_neck.supernet.evaluate import SubnetEvaluator
    from nas_neck.supernet.train import load_supernet

    model, meta = load_supernet(checkpoint)
    config = opt.proxy_config(
        data=data,
        val_data=val_data,
        images=images,
        input_size=input_size,
        backbone=backbone,
        backbone_weights=backbone_weights,
        epochs=None,
        batch_size=None,
        seed=seed,
        threads=None,
        cache_dir=cache_dir,
        precision="fp32",
        latency_target=opt.PROXY.latency_target,
        latency_scope=opt.PROXY.latency_scope,
    )
    proxy = ProxyTask(config)
    evaluator = SubnetEvaluator.from_proxy(model, proxy, calib_batches=calib_batches, seed=seed)
    table = Table(title=f"{paths} paths of {model.space.name} with inherited weights")
    for col in ("path", "hash", "map", "ap50", "eval (s)"):
        table.add_column(col, justify="right" if col != "path" else "left")
    for i in range(paths):
        arch = model.space.random(seed * 1_000_003 + 7919 * (i + 1))
        m = evaluator.evaluate(arch)
        table.add_row(
            arch.short(), arch.hash, f"{m['map']:.4f}", f"{m['ap50']:.4f}", f"{m['eval_s']:.2f}"
        )
    console.print(table)
