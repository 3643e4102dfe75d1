"""Where a search trial's time goes: training + evaluation vs everything else.

Runs a fresh search (real proxy, SQLite study, MLflow store) and splits each trained trial's wall
time into train, eval, measure (latency/FLOPs) and the rest (sampling, building, dedupe, tracking,
checkpointing). Target (issue 5): non-training overhead under 15% of trial time.

    python experiments/bench_search_overhead.py --trials 4 [--epochs E] [--input-size S]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from nas_neck.detect.trainer import TrainConfig
from nas_neck.proxy import ProxyConfig, ProxyTask
from nas_neck.search.runner import SearchSettings, run_search

ROOT = Path(__file__).parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--input-size", type=int, default=ProxyConfig().input_size)
    p.add_argument("--space", type=Path, default=ROOT / "search_spaces" / "pafpn-family.yaml")
    p.add_argument(
        "--out", type=Path, default=ROOT / "experiments" / "out" / "search_overhead.json"
    )
    args = p.parse_args()

    train = TrainConfig(**({"epochs": args.epochs} if args.epochs else {}))
    proxy = ProxyTask(ProxyConfig(input_size=args.input_size, train=train))
    proxy.caches((3, 4, 5))  # the one-time cache build is not a per-trial cost
    with tempfile.TemporaryDirectory() as tmp:
        settings = SearchSettings(
            space=args.space,
            study="overhead",
            storage=f"sqlite:///{tmp}/nas.db",
            tracking_uri=f"sqlite:///{tmp}/mlflow.db",
            trials=args.trials,
            baselines=[],
            sampler="random",
            out_dir=Path(tmp) / "runs",
        )
        start = time.perf_counter()
        study = run_search(settings, proxy)
        wall = time.perf_counter() - start
    rows = []
    for t in study.trials:
        a = t.user_attrs
        if "train_s" not in a:
            continue
        total = (t.datetime_complete - t.datetime_start).total_seconds()
        rest = total - a["train_s"] - a["eval_s"]
        rows.append(
            {
                "trial": t.number,
                "total_s": total,
                "train_s": a["train_s"],
                "eval_s": a["eval_s"],
                "measure_s": a["measure_s"],
                "other_s": rest - a["measure_s"],
                "overhead": rest / total,
            }
        )
    for r in rows:
        print(
            f"trial {r['trial']}: {r['total_s']:.1f} s = train {r['train_s']:.1f} + eval {r['eval_s']:.1f}"
            f" + measure {r['measure_s']:.1f} + other {r['other_s']:.1f}  -> overhead {100 * r['overhead']:.1f}%"
        )
    total = sum(r["total_s"] for r in rows)
    overhead = sum(r["total_s"] - r["train_s"] - r["eval_s"] for r in rows) / total
    print(
        f"overall non-training overhead: {100 * overhead:.1f}% of {total:.0f} s trial time "
        f"({len(rows)} trained trials; search wall time {wall:.0f} s); target < 15%"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "trials": rows,
                "overhead": overhead,
                "wall_s": wall,
                "input_size": args.input_size,
                "epochs": train.epochs,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
