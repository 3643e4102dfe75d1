"""`nas-neck export`: the chosen neck of a search, or a hand-trained one, as a standalone module."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from nas_neck.cli import checks
from nas_neck.cli import options as opt
from nas_neck.cli.console import console, friendly
from nas_neck.config import DEFAULT_BACKBONE, TrainConfig
from nas_neck.errors import NasNeckError
from nas_neck.search.defaults import DEFAULT_STORAGE


@friendly
def export(
    out: Path = typer.Option(..., help="Output folder (created; files in it are replaced)."),
    study: str | None = typer.Option(
        None, help="Study to export a trial of (pick it with --trial, --knee or --max-latency-ms)."
    ),
    storage: opt.Storage = DEFAULT_STORAGE,
    trial: Annotated[int | None, checks.at_least(0)] = typer.Option(
        None, help="Export this trial number of --study."
    ),
    knee: bool = typer.Option(
        False, "--knee", help="Export the knee of the study's mAP-vs-latency front."
    ),
    max_latency_ms: Annotated[float | None, checks.POSITIVE] = typer.Option(
        None, help="Export the most accurate trial of --study whose neck latency is at most this."
    ),
    checkpoint: Path | None = typer.Option(
        None, help="Checkpoint of a hand-trained neck (`nas-neck train` writes checkpoint.pt)."
    ),
    arch: str | None = typer.Option(
        None,
        help="Architecture of --checkpoint (a YAML file or a shipped name); checked against the one it holds.",
    ),
    fuse: bool = typer.Option(
        False, "--fuse", help="Fold BatchNorm into the convs and re-parameterize RepConv blocks."
    ),
    onnx: bool = typer.Option(
        False,
        "--onnx",
        help="Also write neck.onnx (dynamic batch and sides), checked in onnxruntime.",
    ),
    torchscript: bool = typer.Option(
        False, "--torchscript", help="Also write a traced neck.torchscript.pt."
    ),
    detector: bool = typer.Option(
        False,
        "--detector",
        help="Also write the whole detector (backbone + neck + head): detector.onnx and "
        "detector.py (runs without nas_neck), checked in onnxruntime; `nas-neck predict "
        "--export OUT` runs it.",
    ),
    retrain_epochs: Annotated[int | None, checks.like(TrainConfig, "epochs")] = typer.Option(
        None,
        help="Retrain the chosen architecture from scratch for this many epochs (the checkpoint's "
        "recipe, backbone and input size) and export that; pass the search's --data.",
    ),
    unfreeze_after: Annotated[int | None, checks.at_least(0)] = typer.Option(
        None,
        help="With --retrain-epochs: after this many epochs, fine-tune the backbone too, unfrozen "
        "stage by stage from the deepest at a 10x lower learning rate; exported as "
        "backbone.safetensors.",
    ),
    data: opt.Data = None,
    val_data: opt.ValData = None,
    images: opt.Images = None,
    backbone_weights: opt.BackboneWeights = opt.PROXY.backbone_weights,
    cache_dir: opt.CacheDir = None,
) -> None:
    """Export a neck as standalone PyTorch source, weights, genotype and README (and ONNX)."""
    from nas_neck.detect.trainer import load_checkpoint
    from nas_neck.dsl import load_architecture
    from nas_neck.export import export_neck

    training = {
        "--data": data,
        "--val-data": val_data,
        "--images": images,
        "--cache-dir": cache_dir,
    }
    if backbone_weights != opt.PROXY.backbone_weights and not detector:
        training["--backbone-weights"] = backbone_weights  # else the detector's backbone
    if unfreeze_after is not None:
        training["--unfreeze-after"] = str(unfreeze_after)
    if retrain_epochs is None and any(training.values()):
        names = ", ".join(k for k, v in training.items() if v)
        raise NasNeckError(f"{names} only matter with --retrain-epochs")
    if retrain_epochs is not None:
        opt.check_data_paths(data, val_data, images)
        if unfreeze_after is not None and unfreeze_after >= retrain_epochs:
            raise checks.OptionError(
                "--unfreeze-after",
                f"an integer below --retrain-epochs ({retrain_epochs}), leaving epochs to tune "
                "the backbone in",
                unfreeze_after,
            )
    if study is None and (trial is not None or knee or max_latency_ms is not None):
        raise NasNeckError(
            "--trial, --knee and --max-latency-ms pick a trial of --study; pass --study too"
        )
    if study is not None:
        if checkpoint is not None or arch is not None:
            raise NasNeckError(
                "pass either --study (with --trial, --knee or --max-latency-ms) or --checkpoint, not both"
            )
        chosen = choose_trial(study, storage, trial, knee, max_latency_ms)
        checkpoint = trial_checkpoint(chosen)
        attrs, origin = chosen.user_attrs, f"trial {chosen.number} of study {study}"
    elif checkpoint is not None:
        attrs, origin = _sibling_metrics(checkpoint), f"checkpoint {checkpoint}"
    else:
        raise NasNeckError(
            "nothing to export: pass --study NAME with --trial N, --knee or --max-latency-ms X, "
            "or --checkpoint FILE (with --arch FILE)"
        )
    if not Path(checkpoint).is_file():
        raise NasNeckError(f"{checkpoint}: no such checkpoint file")
    model, trained_arch, meta = load_checkpoint(checkpoint)
    if arch is not None and (given := load_architecture(arch)).hash != trained_arch.hash:
        raise NasNeckError(
            f"{arch} is architecture {given.hash}, but {checkpoint} holds {trained_arch.hash} "
            f"({trained_arch.name}); pass the matching --arch or leave it out"
        )
    backbone_state = None
    if retrain_epochs is not None:
        sources = {"data": data, "val_data": val_data, "images": images}
        model, meta, backbone_state = _retrain(
            trained_arch,
            meta,
            retrain_epochs,
            unfreeze_after,
            sources,
            backbone_weights,
            cache_dir,
            out,
        )
        origin += f", retrained for {retrain_epochs} epochs"
        if unfreeze_after is not None:
            origin += f" (backbone tuned after epoch {unfreeze_after})"
    info = _search_info(attrs, meta, origin)
    what = escape(f"{trained_arch.name} [{trained_arch.hash}]")
    whole = None
    if detector:
        from nas_neck.backbone import FrozenBackbone

        whole = FrozenBackbone(
            info.backbone or DEFAULT_BACKBONE, trained_arch.inputs, backbone_weights
        )
        if backbone_state is not None:
            whole.body.load_state_dict(backbone_state)
    with console.status(f"exporting {what} to {escape(str(out))}"):
        report = export_neck(
            model.neck,
            out,
            info=info,
            head=model.head,
            categories=meta.get("category_names"),
            backbone_state=backbone_state,
            fuse=fuse,
            onnx=onnx,
            torchscript=torchscript,
            check_size=info.input_size or 384,
            detector_backbone=whole,
        )
    console.print(_report_table(report))
    console.print(
        f"[green]exported[/] {what} from {escape(origin)} to [bold]{escape(str(out))}[/]; "
        f"see {escape(str(out / 'README.md'))}"
    )


def _retrain(
    arch: Any,
    meta: dict[str, Any],
    epochs: int,
    unfreeze_after: int | None,
    sources: dict[str, Path | None],
    backbone_weights: str,
    cache_dir: Path | None,
    out: Path,
) -> tuple[Any, dict[str, Any], dict[str, Any] | None]:
    """Train `arch` from scratch with the checkpoint's recipe for `epochs` (tuning the backbone
    after `unfreeze_after` of them); saves `out/checkpoint.pt` and returns the model (on the
    CPU), its checkpoint meta and the tuned backbone's weights (None when it stayed frozen)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from nas_neck.config import DEFAULT_BACKBONE, ProxyConfig, TrainConfig
    from nas_neck.detect.trainer import load_checkpoint
    from nas_neck.export.finetune import finetune
    from nas_neck.proxy import ProxyTask

    config = ProxyConfig(
        **sources,
        input_size=meta.get("input_size", 384),
        backbone=meta.get("backbone", DEFAULT_BACKBONE),
        backbone_weights=backbone_weights,
        cache_root=cache_dir,
        train=TrainConfig(**{**meta.get("config", {}), "epochs": epochs}),
    )
    proxy = ProxyTask(config)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
    )
    name = escape(arch.name)
    with Progress(*columns, TimeElapsedColumn(), console=console) as progress:
        task = progress.add_task(f"retraining {name}", total=epochs)

        def on_epoch(epoch: int, _total: int, loss: float) -> None:
            tuned = unfreeze_after is not None and epoch > unfreeze_after
            what = f"retraining {name}{' + backbone' if tuned else ''}  loss {loss:.3f}"
            progress.update(task, completed=epoch, description=what)

        backbone_state = None
        if unfreeze_after is None:
            outcome = proxy.run(arch, on_epoch=on_epoch)
        else:
            outcome, backbone_state = finetune(proxy, arch, unfreeze_after, on_epoch=on_epoch)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = proxy.save(outcome, out / "checkpoint.pt")
    console.print(f"retrained: mAP {outcome.metrics['map']:.4f}, checkpoint {escape(str(ckpt))}")
    model, _, new_meta = load_checkpoint(ckpt)
    return model, new_meta, backbone_state


def choose_trial(
    study: str, storage: str, trial: int | None, knee: bool, max_latency_ms: float | None
) -> Any:
    """The trial picked by exactly one of --trial, --knee and --max-latency-ms."""
    if sum([trial is not None, knee, max_latency_ms is not None]) != 1:
        raise NasNeckError(
            "with --study, pass exactly one of --trial N, --knee or --max-latency-ms X"
        )
    from nas_neck.search.study import load_existing_study

    loaded = load_existing_study(study, storage)
    if trial is not None:
        found = [t for t in loaded.get_trials(deepcopy=False) if t.number == trial]
        if not found:
            raise NasNeckError(
                f"study {study!r} has no trial {trial} (it has {len(loaded.trials)} trials, from 0)"
            )
        return found[0]
    from nas_neck.pareto import best_under, knee_trial

    if knee:
        return knee_trial(loaded, x="latency", y="map")
    chosen = best_under(loaded, max_latency_ms, y="map")
    if chosen is None:
        raise NasNeckError(
            f"no feasible complete trial of study {study!r} has a neck latency of at most "
            f"{max_latency_ms} ms; `nas-neck pareto --study {study}` shows the front"
        )
    return chosen


def trial_checkpoint(trial: Any) -> Path:
    attrs = trial.user_attrs
    if "checkpoint" in attrs:
        return Path(attrs["checkpoint"])
    if attrs.get("infeasible"):
        why = "it was over the latency budget, so it was never trained"
    elif "fail_reason" in attrs:
        why = f"it failed: {attrs['fail_reason']}"
    else:
        why = f"it is {trial.state.name.lower()}"
    raise NasNeckError(f"trial {trial.number} has no checkpoint: {why}")


def _sibling_metrics(checkpoint: Path) -> dict[str, Any]:
    """The metrics.json `nas-neck train` writes beside its checkpoint (latency, FLOPs), if any."""
    path = Path(checkpoint).with_name("metrics.json")
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}


def _search_info(attrs: dict[str, Any], meta: dict[str, Any], origin: str) -> Any:
    from nas_neck.export import SearchInfo

    numbers = {k: v for k, v in attrs.items() if isinstance(v, int | float)}
    metrics = {**numbers, **meta.get("metrics", {})}  # a retrained checkpoint's own scores win
    return SearchInfo(
        map=metrics.get("map"),
        ap50=metrics.get("ap50"),
        latency_ms=metrics.get("latency_ms"),
        latency_threads=metrics.get("latency_threads"),
        gflops=metrics.get("gflops"),
        mparams=metrics.get("mparams"),
        input_size=meta.get("input_size"),
        backbone=meta.get("backbone"),
        origin=origin,
    )


def _report_table(report: Any) -> Table:
    table = Table(title=f"export to {escape(str(report.out_dir))}")
    table.add_column("file")
    table.add_column("check")
    checks = {
        "neck.py": f"matches the trained neck, max |diff| {report.standalone_diff:.2e}",
        "neck.onnx": (
            f"{report.onnx_exporter} exporter; onnxruntime max |diff| "
            + ", ".join(f"{d:.2e}" for d in report.onnx_diffs.values())
            + " at two input sizes"
        ),
        "neck.torchscript.pt": (
            "max |diff| "
            + ", ".join(f"{d:.2e}" for d in report.torchscript_diffs.values())
            + " at two input sizes"
        ),
    }
    if report.fused_diff is not None:
        checks["neck.py"] += f"; fused vs unfused max |diff| {report.fused_diff:.2e}"
    if report.detector is not None:
        d = report.detector
        checks["detector.py"] = (
            "matches nas-neck's backbone + neck + head, max |diff| "
            + ", ".join(f"{v:.2e}" for v in d.torch_diffs.values())
            + f"; postprocess vs nas-neck decode {d.decode_diff:.1e}"
        )
        checks["detector.onnx"] = "onnxruntime max |diff| " + ", ".join(
            f"{v:.2e}" for v in d.onnx_diffs.values()
        )
    for path in report.files:
        table.add_row(path.name, checks.get(path.name, ""))
    return table
