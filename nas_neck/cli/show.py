"""`nas-neck show`: an architecture (nodes, params, FLOPs), a space (its parameters or samples),
or one trial of a study; with --latency, predicted (`nas_neck.screen.LatencyTable`) beside
measured (`ProxyTask.cost`) latency."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from nas_neck.cli import checks
from nas_neck.cli import options as opt
from nas_neck.cli.console import console, friendly
from nas_neck.config import DEFAULT_BACKBONE, DEFAULT_BACKBONE_CHANNELS, ProxyConfig
from nas_neck.errors import NasNeckError
from nas_neck.metrics import ACCURACY_METRICS, COST_COLUMNS, finite
from nas_neck.search.defaults import DEFAULT_STORAGE

if TYPE_CHECKING:  # the DSL, torch and optuna load in the command, not for --help
    from nas_neck.dsl import Architecture


@friendly
def show(
    space: str | None = typer.Argument(
        None, help="A search space or architecture: a YAML file or a shipped name (e.g. fpn)."
    ),
    input_size: Annotated[int, opt.INPUT_SIZE] = typer.Option(
        ProxyConfig().input_size,
        help=f"Square input size for FLOPs and --latency, {opt.INPUT_SIZE.expected}; the "
        "default is the search's.",
    ),
    backbone: Annotated[str, checks.BACKBONE] = typer.Option(
        DEFAULT_BACKBONE, help="timm backbone giving the input channels."
    ),
    sample: Annotated[int, checks.at_least(0)] = typer.Option(
        0, help="Sample this many architectures from the space."
    ),
    seed: Annotated[int, checks.SEED] = typer.Option(
        0, help="Seed of the first sample (sample i uses seed + i)."
    ),
    study: str | None = typer.Option(None, help="Show a trial of this study instead of a file."),
    trial: Annotated[int | None, checks.at_least(0)] = typer.Option(
        None, help="Trial number (with --study)."
    ),
    storage: opt.Storage = DEFAULT_STORAGE,
    plot: Path | None = typer.Option(None, help="Write the architecture diagram (PNG) here."),
    latency: bool = typer.Option(
        False,
        "--latency",
        help="Predicted (latency table) and measured batch-1 latency of the architecture or of "
        "the --sample K samples, at --input-size (the table is built once per machine and "
        "settings, in the cache folder).",
    ),
    as_json: bool = typer.Option(
        False, "--json", help="With --latency: one JSON object per architecture and line."
    ),
    data: opt.Data = None,
    val_data: opt.ValData = None,
    images: opt.Images = None,
    backbone_weights: opt.BackboneWeights = "auto",
    threads: opt.Threads = None,
    latency_target: opt.LatencyTarget = opt.PROXY.latency_target,
    latency_scope: opt.LatencyScope = opt.PROXY.latency_scope,
    cache_dir: opt.CacheDir = None,
) -> None:
    """Show an architecture (nodes, params, FLOPs) or a space (its parameters, or --sample K);
    with --study/--trial, a searched trial's architecture; with --latency, predicted beside
    measured latency."""
    from nas_neck.dsl import load_space

    if as_json and not latency:
        raise NasNeckError("--json goes with --latency")
    if latency:
        if study is not None or space is None:
            raise NasNeckError("--latency needs a space or architecture (not --study)")
        settings = opt.proxy_config(
            data=data,
            val_data=val_data,
            images=images,
            input_size=input_size,
            backbone=backbone,
            backbone_weights=backbone_weights,
            epochs=None,
            batch_size=None,
            seed=0,
            threads=threads,
            cache_dir=cache_dir,
            precision="fp32",
            latency_target=latency_target,
            latency_scope=latency_scope,
        )
        _show_latency(space, sample, seed, settings, as_json)
        return
    if study is not None:
        if trial is None:
            raise NasNeckError("--study needs --trial N")
        _show_trial(study, storage, trial, plot)
        return
    if space is None:
        raise NasNeckError(
            "give a space or architecture (a file or a shipped name), or --study NAME --trial N"
        )
    loaded = load_space(space)
    channels = _backbone_channels(backbone, loaded.inputs)
    if loaded.is_fixed and not sample:
        arch = loaded.sample()
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
        table = Table(title=f"{loaded.name}: {len(loaded.parameters())} searchable parameters")
        table.add_column("parameter")
        table.add_column("domain")
        for p in loaded.parameters():
            table.add_row(p.name, p.domain.describe())
        console.print(table)
        console.print("Use [bold]--sample K[/] to draw K architectures.")
        return
    table = Table(title=f"{sample} samples of {loaded.name} (seeds {seed}..{seed + sample - 1})")
    for col in ("seed", "hash", "params (M)", f"GFLOPs @{input_size}", "architecture"):
        table.add_column(col, justify="right" if col[0] in "pG" else "left")
    for i in range(sample):
        arch = loaded.random(seed + i)
        params, flops = _cost(arch, channels, input_size)
        table.add_row(
            str(seed + i), arch.hash, f"{params / 1e6:.3f}", f"{flops / 1e9:.3f}", arch.short()
        )
    console.print(table)


def _show_latency(space: str, sample: int, seed: int, settings: Any, as_json: bool) -> None:
    """Predicted and measured latency of `space` (a fixed architecture) or of `sample` samples."""
    from nas_neck.dsl import load_space
    from nas_neck.proxy import ProxyTask
    from nas_neck.screen import LatencyTable

    loaded = load_space(space)
    if not loaded.is_fixed and not sample:
        raise NasNeckError(f"{space} is a search space: give --sample K with --latency")
    archs = [(None, loaded.sample())] if not sample else []
    archs += [(seed + i, loaded.random(seed + i)) for i in range(sample)]
    if as_json:  # stdout holds only the JSON lines: warnings (a busy machine) go to stderr
        logging.getLogger("nas_neck").setLevel(logging.WARNING)
        from rich.logging import RichHandler

        from nas_neck.cli.usage import stderr

        for handler in logging.getLogger().handlers:
            if isinstance(handler, RichHandler):
                handler.console = stderr
    proxy = ProxyTask(settings)
    table = LatencyTable(proxy)
    status = "latency table: timing the steps it lacks (once per machine)"
    with contextlib.nullcontext() if as_json else console.status(status):
        predicted = table.predict_many([a for _, a in archs])
    c = proxy.config
    unit = (
        f"ms @{c.input_size}, {c.latency_target}, {c.latency_threads} thread(s), {c.latency_scope}"
    )
    view = Table(title=f"{loaded.name}: predicted vs measured latency ({unit})")
    for col in ("seed", "hash", "predicted", "measured", "error", "architecture"):
        view.add_column(
            col, justify="right" if col in ("predicted", "measured", "error") else "left"
        )
    for (sample_seed, arch), ms in zip(archs, predicted, strict=True):
        measured = proxy.cost(arch)["latency_ms"]
        error = 100 * (ms / measured - 1)
        row = {
            "seed": sample_seed,
            "hash": arch.hash,
            "name": arch.name,
            "predicted_ms": ms,
            "measured_ms": measured,
            "error_pct": error,
            "input_size": c.input_size,
            "target": c.latency_target,
            "threads": c.latency_threads,
            "scope": c.latency_scope,
        }
        if as_json:
            console.print(json.dumps(row), markup=False, highlight=False, soft_wrap=True)
            continue
        view.add_row(
            "" if sample_seed is None else str(sample_seed),
            arch.hash,
            f"{ms:.3f}",
            f"{measured:.3f}",
            f"{error:+.1f} %",
            arch.short(),
        )
    if not as_json:
        console.print(view)
        console.print(f"latency table: {table.path}")


def _backbone_channels(name: str, levels: tuple[int, ...]) -> list[int]:
    """Channels of a timm backbone's maps at `levels` (random weights: only shapes are needed);
    the default backbone's are known without building it (`DEFAULT_BACKBONE_CHANNELS`)."""
    import logging

    if name == DEFAULT_BACKBONE and set(levels) <= set(DEFAULT_BACKBONE_CHANNELS):
        return [DEFAULT_BACKBONE_CHANNELS[lv] for lv in sorted(levels)]
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


def _show_trial(study: str, storage: str, trial: int, plot_path: Path | None = None) -> None:
    """Print a trial's architecture and metrics, and draw the architecture to `plot_path` (PNG)."""
    from nas_neck.archplot import plot_architecture
    from nas_neck.dsl import SearchSpace
    from nas_neck.search.study import load_existing_study

    loaded = load_existing_study(study, storage)
    trials = loaded.get_trials(deepcopy=False)
    found = [t for t in trials if t.number == trial]
    if not found:
        raise NasNeckError(
            f"study {study!r} has no trial {trial}; its trials are 0..{len(trials) - 1}"
            if trials
            else f"study {study!r} has no trials"
        )
    t = found[0]
    if "arch" not in t.user_attrs:
        raise NasNeckError(
            f"trial {trial} of study {study!r} ({t.state.name.lower()}) records no architecture"
        )
    arch = SearchSpace.from_dict(t.user_attrs["arch"], source=f"{study}#{trial}").sample()
    a = t.user_attrs
    what = f"baseline {a['baseline']}" if a.get("baseline") else "searched"
    console.print(
        f"trial [bold]{trial}[/] of {study} ({t.state.name.lower()}, {what}"
        f"{', repeats trial ' + str(a['duplicate_of']) if 'duplicate_of' in a else ''})"
    )
    console.print(arch.summary(), markup=False, highlight=False)
    metrics = [
        f"{k} {v:.4f}"
        for k in (*ACCURACY_METRICS, "count_mae")
        if (v := finite(a.get(k))) is not None
    ]
    costs = [
        f"{label} {v:{fmt}}"
        for k, label, fmt in COST_COLUMNS
        if (v := finite(a.get(k))) is not None
    ]
    for line in (
        " · ".join(metrics),
        " · ".join(costs),
        a.get("fail_reason") and f"failed: {a['fail_reason']}",
        a.get("checkpoint") and f"checkpoint: {a['checkpoint']}",
    ):
        if line:
            console.print(line, markup=False, highlight=False)
    if plot_path is not None:
        console.print(f"wrote {plot_architecture(arch, plot_path)}")
