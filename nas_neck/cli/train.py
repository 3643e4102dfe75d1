"""`nas-neck train`: one architecture trained with the proxy recipe, its metrics and costs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from nas_neck.cli import options as opt
from nas_neck.cli.console import console, friendly


@friendly
def train(
    ctx: typer.Context,
    arch: str = typer.Option(
        ...,
        help="Architecture: a YAML file or a shipped name (e.g. pafpn; nas-neck spaces lists them).",
    ),
    out: Path = typer.Option(
        Path("runs/train"), help="Output folder: checkpoint.pt and metrics.json."
    ),
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
) -> None:
    """Train one architecture with the proxy recipe; print metrics and latency."""
    import json

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from nas_neck.dsl import load_architecture
    from nas_neck.errors import check_room
    from nas_neck.proxy import ProxyTask

    architecture = load_architecture(arch)
    config = opt.proxy_from(ctx.params)
    proxy = ProxyTask(config)
    # Nothing is trained that could not be saved (a full disk: one line saying what to free).
    check_room(out / "checkpoint.pt", proxy.checkpoint_bytes(architecture), "the checkpoint")
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
    timed = f"{cost['latency_scope']} latency, {cost['latency_target']} (ms)"
    table.add_row(timed, f"{cost['latency_ms']:.2f} @ {cost['latency_threads']} threads")
    table.add_row(
        "  p10-p90 in this process (ms)",
        f"{cost['latency_p10_ms']:.2f}-{cost['latency_p90_ms']:.2f}",
    )
    table.add_row("  ratio to the fpn reference", f"{cost['latency_ratio']:.3f}")
    table.add_row("neck+head latency (ms)", f"{cost['latency_head_ms']:.2f}")
    table.add_row("precision", outcome.precision or "fp32")
    table.add_row("neck GFLOPs (2/MAC)", f"{cost['gflops']:.3f}")
    table.add_row("neck params (M)", f"{cost['mparams']:.3f}")
    table.add_row(
        "train / eval (s)", f"{outcome.timings['train_s']:.1f} / {outcome.timings['eval_s']:.1f}"
    )
    console.print(table)
    console.print(f"checkpoint: {ckpt}\nmetrics:    {out / 'metrics.json'}")
