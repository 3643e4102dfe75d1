"""`nas-neck data ...`: draw synthetic plates, check COCO datasets, convert AGAR."""

from __future__ import annotations

import time
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from nas_neck.cli import checks
from nas_neck.cli.console import console, friendly
from nas_neck.cli.usage import Group
from nas_neck.config import SynthConfig
from nas_neck.errors import DataError

if TYPE_CHECKING:
    from nas_neck.data.coco import CheckReport

_SYNTH = SynthConfig()  # the defaults of `data synth` (nas_neck.data imports torch: not here)

app = typer.Typer(
    help="Datasets: draw synthetic colony plates, check COCO files, convert AGAR.",
    cls=Group,
    no_args_is_help=True,
    add_completion=False,
)

_ANNOTATION_NAMES = ("annotations.json", "train.json", "val.json")
VAL_FRACTION = checks.Range(low=0, high=1, high_open=True, integer=False)  # convert_agar's [0, 1)
SIZE = checks.like(SynthConfig, "size")  # up to 4096 px: memory (`nas_neck.config`)
STYLES = typing.get_args(SynthConfig.model_fields["style"].annotation)


def _folder(option: str, value: Path) -> None:
    checks.existing(option, value, "folder")


@app.command()
@friendly
def synth(
    out: Path = typer.Option(
        Path("data/synthetic-colonies"), help="Output folder (reused if already drawn)."
    ),
    train: Annotated[int, checks.like(SynthConfig, "train")] = typer.Option(
        _SYNTH.train, help="Training plates."
    ),
    val: Annotated[int, checks.like(SynthConfig, "val")] = typer.Option(
        _SYNTH.val, help="Validation plates."
    ),
    size: Annotated[int, SIZE] = typer.Option(
        _SYNTH.size, help=f"Image side in pixels, {SIZE.expected} (colony sizes scale with it)."
    ),
    seed: Annotated[int, checks.SEED] = typer.Option(
        _SYNTH.seed, help="Seed: same seed, same bytes."
    ),
    style: Annotated[str, checks.OneOf(STYLES)] = typer.Option(
        "default",
        help="photo: camera-like plates (translucent agar on a dark or textured bench, 1-5 mm "
        "colonies, marker writing, lid reflections, JPEG and sensor noise), --size wide and 3/4 "
        "of that high; default: the built-in plates.",
    ),
) -> None:
    """Draw synthetic petri-dish photos with COCO box annotations."""
    from nas_neck.data.synth import generate_synthetic

    start = time.perf_counter()
    paths = generate_synthetic(out, train, val, size, seed, style=style)
    console.print(
        f"{train} + {val} plates at {size} px in [bold]{paths.root}[/] ({time.perf_counter() - start:.1f} s)\n"
        f"  train: {paths.train_ann}\n  val:   {paths.val_ann}\n  images: {paths.image_dir}",
        highlight=False,
    )


@app.command()
@friendly
def check(
    path: Path = typer.Argument(
        ..., help="A COCO annotation file, or a folder with annotations/train/val.json."
    ),
    images: Annotated[Path | None, checks.Rule(_folder)] = typer.Option(
        None, help="Image folder (default: next to the annotations, or images/)."
    ),
) -> None:
    """Validate COCO annotations and decode every image; exit code 1 if anything is an error."""
    from nas_neck.data.coco import check_coco

    failed = False
    for ann_file in _annotation_files(path):
        report = check_coco(ann_file, images)
        status = "[green]ok[/]" if report.ok else f"[red]{len(report.errors)} error(s)[/]"
        console.print(
            f"[bold]{report.ann_file}[/]: {report.n_images} images, {report.n_annotations} annotations, "
            f"{len(report.categories)} categories: {status}, {len(report.warnings)} warning(s)",
            highlight=False,
        )
        if report.issues:
            console.print(_issue_table(report))
        failed |= not report.ok
    if failed:
        raise typer.Exit(1)


@app.command("convert-agar")
@friendly
def convert_agar_cmd(
    src: Path = typer.Argument(..., help="AGAR folder: <id>.jpg next to <id>.json."),
    out: Path = typer.Argument(..., help="Output folder for train.json, val.json and images/."),
    val_fraction: Annotated[float, VAL_FRACTION] = typer.Option(
        0.2, help="Share of photos in the validation split."
    ),
    seed: Annotated[int, checks.SEED] = typer.Option(0, help="Seed of the split."),
    copy: bool = typer.Option(False, help="Copy the images instead of symlinking them."),
) -> None:
    """Convert the AGAR dataset (one JSON per photo) to COCO with a seeded train/val split."""
    from nas_neck.data.agar import convert_agar

    result = convert_agar(src, out, val_fraction=val_fraction, seed=seed, copy=copy)
    console.print(
        f"{result.n_train} train + {result.n_val} val photos, {len(result.categories)} classes "
        f"({', '.join(result.categories)})\n  train: {result.train_ann}\n  val:   {result.val_ann}",
        highlight=False,
    )
    for reason, n in sorted(result.skipped.items()):
        console.print(f"[yellow]skipped {n} photo(s): {reason.replace('_', ' ')}[/]")


def _annotation_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    found = [path / name for name in _ANNOTATION_NAMES if (path / name).is_file()]
    if not found:
        raise DataError(f"{path}: no {', '.join(_ANNOTATION_NAMES)} in this folder")
    return found


def _issue_table(report: CheckReport) -> Table:
    table = Table()
    for column in ("severity", "issue", "count", "first occurrence"):
        table.add_column(column, justify="right" if column == "count" else "left")
    for (severity, code), n in sorted(report.counts().items()):
        colour = "red" if severity == "error" else "yellow"
        first = next(i.message for i in report.issues if i.code == code)
        table.add_row(f"[{colour}]{severity}[/]", code, str(n), first)
    return table
