"""`nas-neck predict`: count colonies on photos with a trained or exported detector."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from nas_neck.cli import checks
from nas_neck.cli import options as opt
from nas_neck.cli.console import console, friendly
from nas_neck.config import MAX_TILE, MIN_TILE, NESTED_OVERLAP, TrainConfig
from nas_neck.errors import NasNeckError
from nas_neck.search.defaults import DEFAULT_STORAGE

OVERLAP = checks.Range(low=0, high=0.9, integer=False)
FRACTION = checks.Range(low=0, high=1, integer=False)
TILE = checks.Range(low=MIN_TILE, high=MAX_TILE)  # photo pixels; why these bounds: nas_neck.config
RUNTIMES = ("auto", "onnx", "torch")
DEFAULT_OVERLAP = 0.2
_SHOWN_ROWS = 20
_SHRINK_HINT = 4  # photo side / input side above which `predict` suggests --tile


def _existing_file(option: str, value: Path) -> None:
    checks.existing(option, value, "file")


def _existing_folder(option: str, value: Path) -> None:
    checks.existing(option, value, "folder")


@friendly
def predict(
    source: Path = typer.Argument(..., help="A photo, a folder of photos, or a COCO json file."),
    out: Path = typer.Option(
        Path("predictions"),
        help="Output folder: annotated PNGs, counts.csv, detections.json (files replaced).",
    ),
    checkpoint: Annotated[Path | None, checks.Rule(_existing_file)] = typer.Option(
        None, help="A training checkpoint (`nas-neck train` writes checkpoint.pt)."
    ),
    study: str | None = typer.Option(
        None, help="Predict with a trial of this study (pick it with --trial or --knee)."
    ),
    storage: opt.Storage = DEFAULT_STORAGE,
    trial: Annotated[int | None, checks.at_least(0)] = typer.Option(
        None, help="The trial number of --study."
    ),
    knee: bool = typer.Option(False, "--knee", help="The knee of --study's mAP-vs-latency front."),
    export: Annotated[Path | None, checks.Rule(_existing_folder)] = typer.Option(
        None,
        "--export",
        help="An export folder (`nas-neck export --detector` makes a deployable one).",
    ),
    runtime: Annotated[str, checks.OneOf(RUNTIMES)] = typer.Option(
        "auto",
        help="With --export: onnx (detector.onnx in onnxruntime), torch (detector.py), or auto "
        "(onnx when there).",
    ),
    score_thresh: Annotated[float, FRACTION] = typer.Option(
        TrainConfig().count_thresh,
        help="Score a detection needs to be drawn and counted (detections.json keeps all "
        "down to 0.05 for evaluation).",
    ),
    input_size: Annotated[int | None, opt.INPUT_SIZE] = typer.Option(
        None,
        help="Letterbox side the network sees (default: the model's training size); with "
        "--tile each tile is scaled to it.",
    ),
    class_agnostic: bool = typer.Option(
        False,
        "--class-agnostic",
        help="One class, 'colony', for counting and evaluation, whatever the model's classes.",
    ),
    gt: Annotated[Path | None, checks.Rule(_existing_file)] = typer.Option(
        None,
        help="COCO ground truth (matched by file_name): prints mAP, AP50, AP_small, count MAE.",
    ),
    tile: Annotated[int | None, TILE] = typer.Option(
        None,
        help=f"Sliced inference: tiles of this many photo pixels (e.g. 1024), {TILE.expected}.",
    ),
    overlap: Annotated[float, OVERLAP] = typer.Option(
        DEFAULT_OVERLAP, help="With --tile: overlap between tiles, a fraction of the tile."
    ),
    nested_overlap: Annotated[float, FRACTION] = typer.Option(
        NESTED_OVERLAP,
        help="Drop a box when this much of its inscribed disc lies inside a higher-scoring "
        "box's (a colony found again as a part of itself); 0 keeps every box.",
    ),
    dish_crop: bool = typer.Option(
        False, "--dish-crop", help="Find the dish and crop to it so the plate fills the input."
    ),
    batch_size: Annotated[int, checks.at_least(1)] = typer.Option(
        8, help="Tiles run together (memory grows with it, not with the photo)."
    ),
    backbone_weights: opt.BackboneWeights = opt.PROXY.backbone_weights,
) -> None:
    """Detect and count colonies on photos; write pictures, counts.csv and detections.json."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from nas_neck.predict import PredictOptions, collect_inputs, load_model, predict_photos

    if tile is None and overlap != DEFAULT_OVERLAP:
        raise NasNeckError("--overlap only matters with --tile SIZE")
    if export is None and runtime != "auto":
        raise NasNeckError("--runtime only matters with --export FOLDER")
    ckpt = _checkpoint(checkpoint, study, storage, trial, knee, export)
    items, _ = collect_inputs(source)
    model = load_model(ckpt, export, backbone_weights=backbone_weights, runtime=runtime)
    size = input_size or model.input_size
    how = f"tiles of {tile} px, overlap {overlap:g}" if tile else "whole photos"
    console.print(
        f"predicting {len(items)} photo(s) with {escape(model.origin)} ({model.runtime}, "
        f"{model.device.type}) at {size} px, {how}{', dish crop' if dish_crop else ''}",
        highlight=False,
    )
    options = PredictOptions(
        score_thresh=score_thresh,
        input_size=input_size,
        agnostic=class_agnostic,
        tile=tile,
        overlap=overlap,
        nested_overlap=nested_overlap,
        dish_crop=dish_crop,
        batch_size=batch_size,
    )
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
    )
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=True) as progress:
        task = progress.add_task("predicting", total=len(items))

        def on_photo(n: int, total: int, name: str) -> None:
            progress.update(task, completed=n, description=escape(name))

        report = predict_photos(items, model, options, out, gt=gt, on_photo=on_photo)
    console.print(_counts_table(report))
    if report.metrics is not None:
        console.print(_metrics_table(report, gt))
    per = report.seconds / max(1, len(items))
    console.print(
        f"wrote {len(report.files)} files to [bold]{escape(str(out))}[/] "
        f"({report.seconds:.1f} s, {per:.2f} s per photo): counts.csv, detections.json"
        + (", one PNG per photo" if report.files[:-2] else ""),
        highlight=False,
    )
    if tile is None and (hint := _tile_hint(report, size)):
        console.print(hint, highlight=False)
    if report.failures:
        first_path, first_reason = report.failures[0]
        more = f" (and {len(report.failures) - 1} more)" if len(report.failures) > 1 else ""
        raise NasNeckError(
            f"{len(report.failures)} of {len(items)} photo(s) could not be read, the others were "
            f"written: {first_reason}{more}"
        )


def _tile_hint(report: Any, size: int) -> str | None:
    """A note when whole photos were shrunk so far that small colonies vanish (letterboxed to
    256 px, a 3000 px photo's 1 mm colonies are 2-3 px: AP_small 0.001, study 8)."""
    sides = [max(r["width"], r["height"]) for r in report.rows if "width" in r]
    big = sum(side > _SHRINK_HINT * size for side in sides)
    if not big:
        return None
    return (
        f"note: {big} of {len(sides)} photo(s) are over {_SHRINK_HINT}x the {size} px input, so "
        f"small colonies shrink to a few pixels and are missed; try --tile {_SHRINK_HINT * size}"
    )


def _checkpoint(
    checkpoint: Path | None,
    study: str | None,
    storage: str,
    trial: int | None,
    knee: bool,
    export: Path | None,
) -> Path | None:
    """The checkpoint of --checkpoint or of the --study trial; None for --export."""
    if study is None and (trial is not None or knee):
        raise NasNeckError("--trial and --knee pick a trial of --study; pass --study too")
    given = [
        n for n, v in (("--checkpoint", checkpoint), ("--study", study), ("--export", export)) if v
    ]
    if len(given) != 1:
        what = f"not {' and '.join(given)}" if given else "none given"
        raise NasNeckError(
            "pass one model: --checkpoint FILE, --study NAME with --trial N or --knee, or "
            f"--export FOLDER ({what})"
        )
    if study is None:
        return checkpoint
    from nas_neck.cli.export import choose_trial, trial_checkpoint

    if trial is None and not knee:
        raise NasNeckError("with --study, pass --trial N or --knee")
    chosen = choose_trial(study, storage, trial, knee, None)
    path = trial_checkpoint(chosen)
    console.print(f"trial {chosen.number} of study {escape(study)}: {escape(str(path))}")
    return path


def _counts_table(report: Any) -> Table:
    table = Table(title="colonies counted")
    for column in ("photo", "total", *(report.names if len(report.names) > 1 else [])):
        table.add_column(column, justify="left" if column == "photo" else "right")
    for row in report.rows[:_SHOWN_ROWS]:
        name = escape(Path(row["image"]).name)
        if row["status"] == "unreadable":
            table.add_row(f"{name} [red](unreadable)[/]", "-")
            continue
        extra = [str(row[n]) for n in report.names] if len(report.names) > 1 else []
        note = " (no dish found)" if row["status"] == "ok, no dish" else ""
        table.add_row(name + note, str(row["total"]), *extra)
    if len(report.rows) > _SHOWN_ROWS:
        table.add_row(f"... {len(report.rows) - _SHOWN_ROWS} more in counts.csv", "")
    return table


def _metrics_table(report: Any, gt: Path | None) -> Table:
    m = report.metrics
    table = Table(title=f"against {escape(str(gt))} ({report.evaluated} photos)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in (("map", "mAP"), ("ap50", "AP50"), ("ap_small", "AP_small")):
        table.add_row(label, f"{m[key]:.4f}")
    table.add_row("count MAE", f"{m['count_mae']:.2f}")
    return table
