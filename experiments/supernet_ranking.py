"""Study 12: does the supernet rank necks as stand-alone training does, and what does a subnet cost?

Trains the weight-sharing supernet of a family (`nas_neck.supernet.train`, resumable: a rerun
continues the checkpoint under experiments/out/supernet-<family>), then scores with inherited,
BatchNorm-recalibrated weights every neck of `experiments/out/zero_cost_maps.json` that the family
holds exactly (`nas_neck.dsl.membership.holds`; those necks were trained stand-alone at the quick
budget, 3 epochs at 256 px on the default plates), and reports Kendall tau between the two mAPs,
plus the seconds per subnet evaluation and per supernet epoch.

    .venv/bin/python experiments/supernet_ranking.py --family pafpn-family --epochs 12
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from _common import OUT, plt, write_result
from scipy.stats import kendalltau, spearmanr

from nas_neck.config import ProxyConfig
from nas_neck.dsl import Architecture, SearchSpace, load_space
from nas_neck.dsl.membership import holds
from nas_neck.proxy import ProxyTask
from nas_neck.supernet.evaluate import SubnetEvaluator
from nas_neck.supernet.train import train_supernet

_TIMINGS = ("extract_s", "recalibrate_s", "predict_s", "coco_s", "eval_s")


def _held(space: SearchSpace) -> list[tuple[str, Architecture, float]]:
    """(hash, architecture, stand-alone mAP) of the recorded necks `space` holds."""
    data = json.loads((OUT / "zero_cost_maps.json").read_text())
    out = []
    for digest, row in data["architectures"].items():
        arch = SearchSpace.from_dict(row["arch"], source=f"neck {digest}").sample()
        if row.get("map") is not None and holds(space, arch):
            out.append((digest, arch, float(row["map"])))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--family", default="pafpn-family")
    p.add_argument("--epochs", type=int, default=12, help="supernet training epochs")
    p.add_argument("--sampler", default="uniform", choices=("uniform", "fair"))
    p.add_argument("--sandwich", action="store_true")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    space = load_space(args.family)
    necks = _held(space)
    print(f"{len(necks)} recorded necks are held by {space.name}")
    proxy = ProxyTask(ProxyConfig())
    tag = f"{space.name}-{args.sampler}{'-sandwich' if args.sandwich else ''}-e{args.epochs}"
    t0 = time.perf_counter()
    run = train_supernet(
        space,
        proxy=proxy,
        epochs=args.epochs,
        out=OUT / f"supernet-{tag}",
        sampler=args.sampler,
        sandwich=args.sandwich,
    )
    train_s = time.perf_counter() - t0
    evaluator = SubnetEvaluator.from_proxy(run.model, proxy)
    rows = []
    for digest, arch, standalone in necks:
        m = evaluator.evaluate(arch)
        rows.append({"hash": digest, "summary": arch.short(), "standalone_map": standalone, **m})
        print(f"{digest} standalone {standalone:.4f} inherited {m['map']:.4f} {m['eval_s']:.2f} s")
    a = [r["standalone_map"] for r in rows]
    b = [r["map"] for r in rows]
    tau, tau_p = kendalltau(a, b)
    rho, _ = spearmanr(a, b)
    timing = {k: statistics.mean(r[k] for r in rows) for k in _TIMINGS}
    result = {
        "family": space.name,
        "necks": len(rows),
        "supernet": {
            "epochs": args.epochs,
            "sampler": args.sampler,
            "sandwich": args.sandwich,
            "steps": run.steps,
            "precision": run.precision,
            "epoch_loss": run.losses,
            # the training this process did (0 when the checkpoint was complete already)
            "train_s_this_run": train_s,
        },
        "kendall_tau": tau,
        "kendall_p": tau_p,
        "spearman": rho,
        "seconds_per_subnet": timing,
        "threads": args.threads,
        "rows": rows,
    }
    print(
        f"Kendall tau {tau:.3f} (p {tau_p:.2g}), Spearman {rho:.3f} over {len(rows)} necks; "
        f"{timing['eval_s']:.2f} s a subnet ("
        + ", ".join(f"{k[:-2]} {v:.2f}" for k, v in timing.items() if k != "eval_s")
        + f"); load {os.getloadavg()[0]:.2f}"
    )
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(a, b, s=14)
    ax.set_xlabel("stand-alone mAP (3 epochs)")
    ax.set_ylabel(f"inherited-weight mAP (supernet, {args.epochs} epochs)")
    ax.set_title(f"{space.name}: Kendall tau {tau:.2f} over {len(rows)} necks")
    write_result(OUT / f"supernet_ranking-{tag}.json", result, fig)


if __name__ == "__main__":
    main()
