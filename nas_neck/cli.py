"""The `nas-neck` command line: data, show, train, search, worker, pareto, export."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from nas_neck.console import console, friendly, setup_logging
from nas_neck.dsl import Architecture, load_space

app = typer.Typer(
    name="nas-neck",
    help="Search detection-neck architectures (FPN / PAN / BiFPN / NAS-FPN) for small, dense objects.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    """nas-neck command line."""
    setup_logging(verbose)


@app.command()
@friendly
def show(
    path: Path = typer.Argument(..., help="A search space or architecture YAML file."),
    input_size: int = typer.Option(512, help="Square input size for FLOPs."),
    backbone: str = typer.Option("tf_efficientnet_lite0", help="timm backbone giving the input channels."),
    sample: int = typer.Option(0, help="Sample this many architectures from the space."),
    seed: int = typer.Option(0, help="Seed of the first sample (sample i uses seed + i)."),
) -> None:
    """Show an architecture (nodes, params, FLOPs) or a space (its parameters, or --sample K)."""
    space = load_space(path)
    channels = _backbone_channels(backbone, space.inputs)
    if space.is_fixed and not sample:
        arch = space.sample()
        console.print(_node_table(arch))
        params, flops = _cost(arch, channels, input_size)
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
        table.add_row(str(seed + i), arch.hash, f"{params / 1e6:.3f}", f"{flops / 1e9:.3f}", arch.short())
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
        title += f" + extra {'/'.join(f'P{x}' for x in arch.extra_levels)} ({arch.extra_downsample})"
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
        table.add_row(name, f"P{n.level}", ", ".join(ins), n.fuse, n.block, str(n.depth),
                      str(n.width), "yes" if n.output else "")
    return table


def _cost(arch: Architecture, channels: list[int], size: int) -> tuple[int, int]:
    from nas_neck.measure import count_flops, count_params, feature_inputs
    from nas_neck.neck import GraphNeck

    neck = GraphNeck(arch, channels)
    inputs = feature_inputs(channels, [2**lvl for lvl in arch.inputs], size)
    return count_params(neck), count_flops(neck, (inputs,))
