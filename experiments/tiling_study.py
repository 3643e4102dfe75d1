"""Whole-image letterbox vs sliced inference on large photo-style plates (issue 17), and what
dropping nested duplicates (`nas-neck predict --nested-overlap`) does to each.

One detector (PAFPN on the frozen backbone, one class "colony") is trained at `--input-size` on
photo-style plates (`nas-neck data synth --style photo`) of `--train-size` px, as whole plates
letterboxed to the input *and* as tiles of a third of the plate, so it has seen colonies at
both scales. It then predicts `--eval-plates` photo-style plates of `--eval-size` px (about a
phone photo, drawn with `--eval-seed`) five ways, all with the same weights:

- ``whole``: the photo letterboxed to the input size, as training and the search do;
- ``whole-dish``: cropped to the dish first (`--dish-crop`);
- ``whole-3x``: letterboxed to 3x the input size (about the pixels of the tiles);
- ``tiled``: tiles of a third of the plate (`--tile`), overlap 0.2, merged across tiles;
- ``tiled-dish``: the same inside the dish crop;

each twice: keeping nested boxes (``--nested-overlap 0``) and dropping them (`--nested-overlap`,
default the predict default). Reported per way: AP_small, mAP, AP50, count MAE (score >= 0.35)
and seconds per photo (prediction only, 2 threads, under whatever load the machine had:
`machine.load_avg_1m` and the load averages recorded beside each way). Data, checkpoint and
each way's result are kept in `experiments/out/tiling_study/`, so an interrupted run redoes only
what is missing; another `--eval-seed` writes `tiling_study-seed<N>.json` (a held-out check of
the nested-overlap default, which was chosen on seed 1's plates).

    python experiments/tiling_study.py [--train-plates 40] [--eval-plates 8] [--epochs 8]
        [--eval-seed 1] [--nested-overlap 0.3]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from _common import OUT, write_result
from PIL import Image

from nas_neck.config import NESTED_OVERLAP, ProxyConfig, TrainConfig
from nas_neck.data.synth import generate_synthetic
from nas_neck.dsl import load_architecture
from nas_neck.predict import PredictOptions, collect_inputs, from_checkpoint, predict_photos
from nas_neck.proxy import ProxyTask

WORK = OUT / "tiling_study"
WAYS = ("whole", "whole-dish", "whole-3x", "tiled", "tiled-dish")


def _tiles_dataset(plates: Path, out: Path, tile: int, n_val: int) -> Path:
    """A one-class COCO folder (train.json, val.json, images/) of the whole plates and their
    tiles (boxes clipped to a tile, kept when at least half of the colony is in it)."""
    if (out / "COMPLETE").is_file():
        return out
    data = json.loads((plates / "train.json").read_text())
    by_image: dict[int, list[list[float]]] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a["bbox"])
    (out / "images").mkdir(parents=True, exist_ok=True)
    splits: dict[str, dict[str, list]] = {
        s: {"images": [], "annotations": []} for s in ("train", "val")
    }
    for n, im in enumerate(data["images"]):
        split = "val" if n < n_val else "train"
        photo = Image.open(plates / "images" / im["file_name"]).convert("RGB")
        boxes = np.array(by_image.get(im["id"], []), np.float32).reshape(-1, 4)
        w, h = photo.size
        step = int(tile * 0.8)
        crops = [(0, 0, w, h)] + [
            (x, y, x + tile, y + tile)
            for y in sorted({*range(0, h - tile, step), h - tile})
            for x in sorted({*range(0, w - tile, step), w - tile})
        ]
        for k, (x0, y0, x1, y1) in enumerate(crops):
            name = f"{Path(im['file_name']).stem}_{k:02d}.jpg"
            photo.crop((x0, y0, x1, y1)).save(out / "images" / name, quality=95)
            image_id = len(splits["train"]["images"]) + len(splits["val"]["images"]) + 1
            splits[split]["images"].append(
                {"id": image_id, "file_name": name, "width": x1 - x0, "height": y1 - y0}
            )
            bx0 = np.clip(boxes[:, 0], x0, x1)
            by0 = np.clip(boxes[:, 1], y0, y1)
            bx1 = np.clip(boxes[:, 0] + boxes[:, 2], x0, x1)
            by1 = np.clip(boxes[:, 1] + boxes[:, 3], y0, y1)
            kept = (bx1 - bx0) * (by1 - by0) >= 0.5 * boxes[:, 2] * boxes[:, 3]
            for b in np.stack([bx0 - x0, by0 - y0, bx1 - bx0, by1 - by0], 1)[kept].tolist():
                splits[split]["annotations"].append(
                    {
                        "id": sum(len(s["annotations"]) for s in splits.values()) + 1,
                        "image_id": image_id,
                        "category_id": 1,
                        "bbox": b,
                        "area": b[2] * b[3],
                        "iscrowd": 0,
                    }
                )
    for split, content in splits.items():
        content["categories"] = [{"id": 1, "name": "colony"}]
        (out / f"{split}.json").write_text(json.dumps(content))
    (out / "COMPLETE").write_text("")
    return out


def _train(data: Path, args: argparse.Namespace) -> Path:
    ckpt = WORK / f"pafpn-{args.input_size}-e{args.epochs}.pt"
    if ckpt.is_file():
        return ckpt
    config = ProxyConfig(
        data=data,
        input_size=args.input_size,
        cache_root=WORK / "cache",
        train=TrainConfig(epochs=args.epochs),
    )
    proxy = ProxyTask(config)
    start = time.perf_counter()
    outcome = proxy.run(load_architecture("pafpn"))
    print(f"trained pafpn in {time.perf_counter() - start:.0f} s: val {outcome.metrics}")
    return proxy.save(outcome, ckpt)


def _way(name: str, nested: float, args: argparse.Namespace) -> PredictOptions:
    tile = args.eval_size // 3
    return PredictOptions(
        nested_overlap=nested,
        input_size=args.input_size * (3 if name == "whole-3x" else 1),
        agnostic=True,
        tile=tile if name.startswith("tiled") else None,
        overlap=0.2,
        dish_crop=name.endswith("dish"),
        pictures=False,
    )


def _plot(rows: dict[str, dict[str, dict[str, float]]]) -> plt.Figure:
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    x = np.arange(len(rows))
    for ax, (key, label) in zip(
        axes,
        (
            ("ap_small", "AP_small"),
            ("count_mae", "count MAE (colonies)"),
            ("s_per_image", "s / photo (shared machine: loads in the JSON)"),
        ),
        strict=True,
    ):
        for k, (nested, color) in enumerate((("kept", "#bbbbbb"), ("dropped", "#4477aa"))):
            values = [r[nested][key] for r in rows.values()]
            ax.bar(x + (k - 0.5) * 0.4, values, 0.4, color=color, label=f"nested {nested}")
        ax.set_xticks(x, list(rows), rotation=30)
        ax.set_title(label)
    axes[1].legend(fontsize=8)
    fig.suptitle("whole-image letterbox vs sliced inference, photo-style plates")
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-plates", type=int, default=40)
    p.add_argument("--eval-plates", type=int, default=8)
    p.add_argument("--train-size", type=int, default=1536)
    p.add_argument("--eval-size", type=int, default=3000)
    p.add_argument("--eval-seed", type=int, default=1)
    p.add_argument("--input-size", type=int, default=256)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--nested-overlap", type=float, default=NESTED_OVERLAP)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    WORK.mkdir(parents=True, exist_ok=True)
    held_out = "" if args.eval_seed == 1 else f"-seed{args.eval_seed}"

    start = time.perf_counter()
    plates = generate_synthetic(
        WORK / "train-plates", args.train_plates, 0, args.train_size, seed=0, style="photo"
    ).root
    data = _tiles_dataset(plates, WORK / f"train-tiles-{args.train_size}", args.train_size // 3, 12)
    evals = generate_synthetic(
        WORK / f"eval-plates{held_out}",
        args.eval_plates,
        0,
        args.eval_size,
        seed=args.eval_seed,
        style="photo",
    )
    print(f"data ready in {time.perf_counter() - start:.0f} s")
    ckpt = _train(data, args)
    model = from_checkpoint(ckpt)
    items, _ = collect_inputs(evals.train_ann)

    partial = WORK / "ways.json"
    runs: dict[str, Any] = json.loads(partial.read_text()) if partial.is_file() else {}
    key = f"{ckpt.name}|{args.eval_plates}|{args.eval_size}|seed {args.eval_seed}"
    done = runs.setdefault(key, {})
    rows: dict[str, dict[str, dict[str, float]]] = {}
    for name in WAYS:
        for nested, value in (("kept", 0.0), ("dropped", args.nested_overlap)):
            run = f"{name}|nested {value:g}"
            if run not in done:
                load = os.getloadavg()
                report = predict_photos(
                    items,
                    model,
                    _way(name, value, args),
                    WORK / f"predictions{held_out}" / f"{name}-nested-{value:g}",
                    gt=evals.train_ann,
                )
                done[run] = {
                    **{k: report.metrics[k] for k in ("ap_small", "map", "ap50", "count_mae")},
                    "s_per_image": report.seconds / len(items),
                    "load_avg_before": list(load),
                    "load_avg_after": list(os.getloadavg()),
                }
                partial.write_text(json.dumps(runs, indent=2))
                print(f"{run}: {done[run]}")
            rows.setdefault(name, {})[nested] = done[run]

    print(f"\nnested boxes kept / dropped (--nested-overlap {args.nested_overlap:g})")
    print(f"{'way':<12} {'AP_small':>13} {'mAP':>13} {'AP50':>13} {'count MAE':>13} {'s/photo':>8}")
    for n, r in rows.items():
        cells = [
            f"{r['kept'][k]:.3f}/{r['dropped'][k]:.3f}" for k in ("ap_small", "map", "ap50")
        ] + [f"{r['kept']['count_mae']:.2f}/{r['dropped']['count_mae']:.2f}"]
        print(
            f"{n:<12} "
            + " ".join(f"{c:>13}" for c in cells)
            + f" {r['dropped']['s_per_image']:8.2f}"
        )
    result = {
        "settings": vars(args) | {"tile": args.eval_size // 3, "overlap": 0.2, "arch": "pafpn"},
        "checkpoint": str(ckpt.relative_to(OUT.parent.parent)),
        "ways": rows,
        "note": "seconds per photo are prediction only, measured on a shared machine: see the "
        "load averages beside each way and machine.load_avg_1m",
    }
    write_result(OUT / f"tiling_study{held_out}.json", result, _plot(rows))


if __name__ == "__main__":
    main()
