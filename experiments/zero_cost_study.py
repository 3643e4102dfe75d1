"""Zero-cost proxies against quick-budget mAP (issue 16, study 2).

Trains `--size` architectures (the shipped classics, then seeded samples cycling through the
three searchable families, the same seeds `proxy_fidelity.py` draws) with the default quick
budget (3 epochs at 256 px, the default `TrainConfig`), computes every zero-cost proxy of
`nas_neck.screen.zero_cost` for each on the same cached features, and reports each proxy's
Kendall tau and Spearman rho against mAP, per family and overall, beside #params (the baseline to
beat), and the surrogate's tau by cross-validation.

Training results go to `--maps` as soon as each exists (and reuse the 3-epoch results of
`proxy_fidelity.json` for the same architectures), so an interrupted run resumes where it stopped;
`--phase analyse` computes proxies and statistics on what is trained so far, in another process,
without touching the training file. `--phase ingest --from-studies DB...` adds the candidates other
experiments trained at the same quick budget (e.g. the plain searches of study 7: 3 epochs at
256 px on the default plates; family = the study's space), so their training is not paid twice.

    python experiments/zero_cost_study.py [--size 65] [--threads 1] [--phase all|train|analyse]
    python experiments/zero_cost_study.py --phase ingest --from-studies out/multifidelity/plain-s?.db
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
from scipy.stats import kendalltau, spearmanr

from nas_neck.config import ProxyConfig, TrainConfig
from nas_neck.dsl import Architecture, load_architecture, load_space

CLASSICS = ["fpn", "pafpn", "bifpn", "nasfpn", "light"]
FAMILIES = ["pafpn-family", "bifpn-family", "nasfpn-free"]
BASELINE = "params"


def architectures(n: int) -> list[tuple[str, Architecture]]:
    """(family, architecture): the classics, then seeded samples cycling through the families
    (seed 1000 + k from family k mod 3, as `proxy_fidelity.py` draws them), no duplicates."""
    archs = [("classic", load_architecture(c)) for c in CLASSICS][:n]
    seen = {a.hash for _, a in archs}
    k = 0
    while len(archs) < n:
        family = FAMILIES[k % len(FAMILIES)]
        arch = load_space(family).random(1000 + k)
        if arch.hash not in seen:
            archs.append((family, arch))
            seen.add(arch.hash)
        k += 1
    return archs


def _read(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


def _write_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def train_phase(args: argparse.Namespace) -> None:
    """Train what is missing, writing each mAP as soon as it exists."""
    from nas_neck.proxy import ProxyTask

    maps = _read(args.maps).get("architectures", {})
    reused = {
        r["hash"]: r
        for r in _read(OUT / "proxy_fidelity.json").get("architectures", [])
        if "3" in r.get("map", {})
    }
    config = ProxyConfig(train=TrainConfig())
    proxy = ProxyTask(config)
    start = time.perf_counter()
    for i, (family, arch) in enumerate(architectures(args.size)):
        if arch.hash in maps:
            continue
        row: dict[str, Any] = {"name": arch.name, "family": family, "summary": arch.short()}
        if arch.hash in reused:
            row |= {"map": reused[arch.hash]["map"]["3"], "train_s": None, "from": "proxy_fidelity"}
        else:
            outcome = proxy.run(arch)
            row |= {"map": outcome.metrics["map"], "train_s": outcome.timings["train_s"]}
        row["arch"] = arch.to_dict()
        maps[arch.hash] = row
        _write_atomic(
            args.maps,
            {
                "budget": {"epochs": config.train.epochs, "input_size": config.input_size},
                "threads": args.threads,
                "architectures": maps,
            },
        )
        print(
            f"[{i + 1}/{args.size}] {family:>13} {arch.hash} mAP {row['map']:.4f} "
            f"({row['train_s'] or 0:.0f} s, {(time.perf_counter() - start) / 60:.1f} min, "
            f"load {os.getloadavg()[0]:.2f})",
            flush=True,
        )


def ingest_phase(args: argparse.Namespace) -> None:
    """Add the quick-budget candidates of finished studies (SQLite files) to the training file."""
    import optuna

    from nas_neck.fidelity import is_candidate

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = _read(args.maps)
    maps = data.setdefault("architectures", {})
    budget = {"epochs": TrainConfig().epochs, "input_size": ProxyConfig().input_size}
    added = 0
    for db in args.from_studies:
        storage = f"sqlite:///{db.resolve()}"
        for summary in optuna.get_all_study_summaries(storage):
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            space = study.user_attrs.get("space")
            if (study.user_attrs.get("proxy") or {}).get("input_size") != budget["input_size"]:
                continue
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
                a = t.user_attrs
                if (
                    not is_candidate(a)
                    or a.get("epochs") != budget["epochs"]
                    or "duplicate_of" in a
                    or "arch" not in a
                    or not np.isfinite(a.get("map", np.nan))
                    or a["arch_hash"] in maps
                ):
                    continue
                maps[a["arch_hash"]] = {
                    "name": a["arch"].get("name", a["arch_hash"]),
                    "family": space,
                    "summary": a.get("summary"),
                    "map": a["map"],
                    "train_s": a.get("train_s"),
                    "from": f"{db.name}:{summary.study_name}#{t.number}",
                    "arch": a["arch"],
                }
                added += 1
    data.setdefault("budget", budget)
    _write_atomic(args.maps, data)
    print(
        f"ingested {added} architectures from {len(args.from_studies)} studies ({len(maps)} in all)"
    )


def _ranks(x: list[float], y: list[float]) -> dict[str, float | None]:
    if len(x) < 3 or len(set(x)) < 2:
        return {"kendall_tau": None, "spearman_rho": None, "n": len(x)}
    return {
        "kendall_tau": float(kendalltau(x, y).statistic),
        "spearman_rho": float(spearmanr(x, y).statistic),
        "n": len(x),
    }


def analyse_phase(args: argparse.Namespace) -> None:
    """Proxies of every trained architecture (cached by hash and proxy settings), then ranks."""
    from nas_neck.proxy import ProxyTask
    from nas_neck.screen.surrogate import cross_validated_tau
    from nas_neck.screen.zero_cost import PROXIES, ZeroCost

    maps = _read(args.maps).get("architectures", {})
    if len(maps) < 3:
        raise SystemExit(f"{args.maps}: {len(maps)} trained architectures, need at least 3")
    previous = _read(args.out)
    cached = {r["hash"]: r for r in previous.get("architectures", [])}
    proxy = ProxyTask(ProxyConfig(train=TrainConfig()))
    scorer = ZeroCost(proxy, seed=args.seed)
    rows = []
    for h, m in maps.items():
        old = cached.get(h, {})
        if old.get("settings") == scorer.settings and set(old.get("proxies", {})) == set(PROXIES):
            rows.append(old | {"map": m["map"]})
            continue
        arch = _arch_of(m["arch"], h)
        timed = scorer.timed(arch)
        proxies = {p: v for p, (v, _) in timed.items()}
        rows.append(
            {"hash": h, "name": m["name"], "family": m["family"], "map": m["map"]}
            | {"proxies": proxies, "seconds": {p: s for p, (_, s) in timed.items()}}
            | {"settings": scorer.settings}
        )
        print(
            f"proxies {h} ({m['family']}): " + " ".join(f"{p} {v:.3g}" for p, v in proxies.items())
        )
    groups = {"overall": rows} | {
        f: [r for r in rows if r["family"] == f] for f in [*FAMILIES, "classic"]
    }
    stats = {
        g: {p: _ranks([r["proxies"][p] for r in rs], [r["map"] for r in rs]) for p in PROXIES}
        for g, rs in groups.items()
        if rs
    }
    surrogate = {
        g: cross_validated_tau(
            [_arch_of(maps[r["hash"]]["arch"], r["hash"]) for r in rs],
            [r["proxies"] for r in rs],
            [r["map"] for r in rs],
            folds=args.folds,
            seed=args.seed,
        )
        for g, rs in groups.items()
        if len(rs) >= 2 * args.folds
    }
    all_seconds = {p: [r["seconds"][p] for r in rows] for p in PROXIES}
    result = {
        "study": "zero-cost proxies vs quick-budget mAP",
        "command": f"python experiments/zero_cost_study.py --size {args.size} --threads {args.threads}",
        "budget": {"epochs": TrainConfig().epochs, "input_size": ProxyConfig().input_size},
        "n_trained": len(rows),
        "n_planned": args.size,
        "baseline": BASELINE,
        "target_tau": 0.5,
        "rank_correlation": stats,
        "surrogate_cv": surrogate,
        "proxy_seconds": {
            p: {"mean": float(np.mean(s)), "max": float(np.max(s))}
            for p, s in all_seconds.items()
            if s
        },
        "proxy_threads": torch.get_num_threads(),
        "architectures": rows,
        "load_avg": list(os.getloadavg()),
    }
    write_result(args.out, result, _plot(rows, stats))
    _print_table(stats, surrogate, result["proxy_seconds"])


def _arch_of(data: dict[str, Any], source: str) -> Architecture:
    """The architecture a row of the training file stores."""
    from nas_neck.dsl import SearchSpace

    return SearchSpace.from_dict(data, source=source).sample()


def _print_table(stats: dict, surrogate: dict, seconds: dict) -> None:
    groups = list(stats)
    print(f"{'proxy':>10} " + " ".join(f"{g[:13]:>17}" for g in groups) + "   s/cand (max)")
    for p in stats["overall"]:
        cells = []
        for g in groups:
            s = stats[g][p]
            tau, rho = s["kendall_tau"], s["spearman_rho"]
            cells.append(f"{tau:+.2f}/{rho:+.2f} n{s['n']:<3}" if tau is not None else " " * 17)
        sec = seconds.get(p, {})
        print(f"{p:>10} " + " ".join(f"{c:>17}" for c in cells) + f"   {sec.get('max', 0):.2f}")
    cells = []
    for g in groups:
        s = surrogate.get(g)
        cells.append(f"{s['kendall_tau']:+.2f}/{s['spearman_rho']:+.2f} n{s['n']:<3}" if s else "")
    print(f"{'surrogate':>10} " + " ".join(f"{c:>17}" for c in cells) + "   (k-fold CV)")
    print("cells: Kendall tau / Spearman rho against quick-budget mAP, n architectures")


def _plot(rows: list[dict], stats: dict) -> plt.Figure:
    proxies = list(stats["overall"])
    cols = 4
    n_rows = -(-len(proxies) // cols)
    fig, axes = plt.subplots(n_rows, cols, figsize=(4 * cols, 3.4 * n_rows), squeeze=False)
    colors = {"pafpn-family": "C0", "bifpn-family": "C1", "nasfpn-free": "C2", "classic": "k"}
    for ax, p in zip(axes.flat, proxies, strict=False):
        for family, c in colors.items():
            rs = [r for r in rows if r["family"] == family]
            ax.scatter(
                [r["proxies"][p] for r in rs], [r["map"] for r in rs], s=12, c=c, label=family
            )
        s = stats["overall"][p]
        tau = s["kendall_tau"]
        ax.set(xlabel=p, ylabel="mAP (3 epochs)", title=f"{p}: tau {tau:+.2f}" if tau else p)
        if p in ("params", "flops", "synflow", "snip", "grad_norm"):
            ax.set_xscale("symlog")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=7)
    for ax in list(axes.flat)[len(proxies) :]:
        ax.axis("off")
    return fig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=65, help="architectures (5 classics + samples)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for training and proxies")
    p.add_argument("--phase", choices=["all", "train", "analyse", "ingest"], default="all")
    p.add_argument("--from-studies", type=Path, nargs="*", default=[], help="SQLite studies")
    p.add_argument("--seed", type=int, default=0, help="seed of the proxies' batches and weights")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds of the surrogate")
    p.add_argument("--maps", type=Path, default=OUT / "zero_cost_maps.json")
    p.add_argument("--out", type=Path, default=OUT / "zero_cost_study.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.phase == "ingest":
        ingest_phase(args)
    if args.phase in ("all", "train"):
        train_phase(args)
    if args.phase in ("all", "analyse"):
        analyse_phase(args)


if __name__ == "__main__":
    main()
